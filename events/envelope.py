"""The CloudEvents 1.0 envelope every Tierflow message travels in (structured JSON mode).

The whole message value is one JSON object: the CloudEvents attributes plus `data`, the event's
own fields. Extension attributes (e.g. `traceparent`) pass through when CloudEvents allows them.
"""

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# RFC 3339 with an explicit offset. Stricter than what pydantic parses on its own (a space instead
# of T, lower case, no seconds), so that the consumer and the published JSON Schema agree.
# Days that do not exist (February 30) are left to pydantic and to JSON Schema format checkers.
RFC3339_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
# A URI reference is printable ASCII without spaces (RFC 3986); a character class rather than
# \S because regex engines disagree on which control characters are white space.
URI_REFERENCE_PATTERN = r"^[!-~]+$"
EXTENSION_NAME_PATTERN = r"^[a-z0-9]{1,20}$"  # CloudEvents 1.0 attribute naming
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1  # the CloudEvents Integer type


def _rfc3339(value: Any) -> Any:
    # A datetime passes (events built in Python); a string must be RFC 3339; a number (which
    # pydantic would read as a Unix timestamp) is refused, as the JSON Schema refuses it.
    if isinstance(value, datetime):
        return value
    # fullmatch: with re.match, `$` would also match before a trailing newline.
    if not isinstance(value, str) or not re.fullmatch(RFC3339_PATTERN, value):
        shown = repr(value[:60]) if isinstance(value, str) else json.dumps(value, default=str)[:60]
        raise PydanticCustomError(
            "rfc3339", "must be an RFC 3339 time with an offset, like 2026-11-24T09:30:00Z, not {value}",
            {"value": shown},
        )
    return value


def _extension_problem(name: str, value: Any) -> str | None:
    if not isinstance(name, str) or not re.fullmatch(EXTENSION_NAME_PATTERN, name):
        return (
            f"unknown attribute {str(name)[:60]!r}: extension attribute names are 1 to 20 "
            "lowercase letters or digits"
        )
    if isinstance(value, bool) or isinstance(value, str):
        return None
    if isinstance(value, int) and INT32_MIN <= value <= INT32_MAX:
        return None
    return (
        f"extension attribute {name!r} must be a string, a boolean or a 32-bit integer, "
        f"not {json.dumps(value, default=str)[:60]}"
    )


class CloudEvent(BaseModel):
    """A CloudEvents 1.0 event in structured JSON mode, with `data` still a plain JSON object.

    `parse_event` validates `data` against the model named by `type`; this class checks only
    the envelope, so it can carry (and dead-letter) events of any type.
    """

    model_config = ConfigDict(
        frozen=True,
        extra="allow",
        json_schema_extra={
            "propertyNames": {"pattern": EXTENSION_NAME_PATTERN},
            "additionalProperties": {
                "description": "A CloudEvents extension attribute such as traceparent.",
                "anyOf": [
                    {"type": "string"},
                    {"type": "boolean"},
                    {"type": "integer", "minimum": INT32_MIN, "maximum": INT32_MAX},
                ],
            },
        },
    )

    specversion: Literal["1.0"] = Field(description="The CloudEvents version: always 1.0.")
    id: str = Field(
        min_length=1, max_length=200,
        description="Unique per source; a consumer applies each (source, id) once.",
    )
    source: str = Field(
        min_length=1, max_length=500, pattern=URI_REFERENCE_PATTERN,
        json_schema_extra={"format": "uri-reference"},
        description="Who produced the event, as a URI reference, e.g. urn:tierflow:cli.",
    )
    type: str = Field(min_length=1, max_length=200, description="The event type, e.g. scene.approved.")
    subject: str = Field(
        min_length=1, max_length=200,
        description="The id the event is about, as a string; also the Kafka message key.",
    )
    time: Annotated[
        AwareDatetime,
        BeforeValidator(_rfc3339),
        Field(json_schema_extra={"pattern": RFC3339_PATTERN}, description="When it happened (RFC 3339)."),
    ]
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = Field(
        default=None, min_length=1, max_length=500,
        description="The JSON Schema of this event, e.g. schemas/scene.approved.json.",
    )
    data: dict[str, Any] = Field(description="The event's fields.")

    @model_validator(mode="before")
    @classmethod
    def _check_extensions(cls, value: Any) -> Any:
        # Only extension attributes may be extra, and only with the value types CloudEvents
        # allows; anything else is a typo or a misuse we would otherwise carry along silently.
        if not isinstance(value, dict):
            return value
        cleaned = dict(value)
        for name, attribute in value.items():
            if name in cls.model_fields:
                continue
            if isinstance(attribute, float) and attribute.is_integer():
                # JSON Schema counts 7.0 as an integer, so the consumer does too.
                attribute = cleaned[name] = int(attribute)
            problem = _extension_problem(name, attribute)
            if problem:
                # Passed as context, not as the template: the text may contain braces.
                raise PydanticCustomError("extension_attribute", "{problem}", {"problem": problem})
        return cleaned

    @property
    def extensions(self) -> dict[str, str | int | bool]:
        """The extension attributes, e.g. {"traceparent": "00-…"}."""
        return dict(self.model_extra or {})

    def to_json(self) -> bytes:
        """The message value: compact UTF-8 JSON, `time` in RFC 3339, unset attributes left out."""
        body = {name: value for name, value in self.model_dump(mode="json").items() if value is not None}
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
