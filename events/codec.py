"""From a typed event to a CloudEvent and back: the edge where every message is checked.

`parse_event` is the one way a consumer turns message bytes into a typed event. Whatever is wrong,
it raises InvalidEvent with a one-line message, which the consumer puts on the dead letter.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

from events.envelope import CloudEvent
from events.errors import InvalidEvent, validated
from events.models import EVENT_TYPES, Event
from events.schemas import schema_id
from events.topics import (
    CONTENT_TYPE_HEADER,
    STRUCTURED_CONTENT_TYPE,
    unknown_type_message,
)


def envelope_for(
    event: Event, *, source: str, id: str | None = None, time: datetime | None = None,
    extensions: dict[str, str] | None = None,
) -> CloudEvent:
    """Wrap `event` in a CloudEvent from `source`; `id` defaults to a new UUID, `time` to now;
    `extensions` are extension attributes such as traceparent."""
    if not isinstance(event, Event):
        raise TypeError(f"envelope_for needs a Tierflow event, not {type(event).__name__}")
    attributes = {
        "specversion": "1.0",
        "id": str(uuid4()) if id is None else id,
        "source": source,
        "type": event.type,
        "subject": event.subject,
        "time": datetime.now(UTC) if time is None else time,
        "dataschema": schema_id(event.type),
        "data": event.model_dump(mode="json"),
        **(extensions or {}),
    }
    return validated(CloudEvent, attributes, what=f"invalid {event.type} event")


CE_HEADER_PREFIX = "ce_"


def _reject_constant(name: str) -> Any:
    raise InvalidEvent(f"not JSON: {name} is not a JSON value")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    # Parsers disagree on which of two equal keys wins; refusing both keeps everyone reading
    # the same event (and a second "subject" cannot smuggle in another partition key).
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        duplicate = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise InvalidEvent(f"not JSON: key {duplicate[:60]!r} appears twice in one object")
    return document


def _decode(raw: Any) -> Any:
    if raw is None:
        raise InvalidEvent("empty message: expected a CloudEvent as JSON, got no value")
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, (bytearray, memoryview)):
        raw = bytes(raw)
    if not isinstance(raw, (bytes, str)):
        raise InvalidEvent(f"expected a CloudEvent as JSON bytes, text or a dict, got {type(raw).__name__}")
    try:
        # CloudEvents JSON is UTF-8; json.loads alone would also guess UTF-16 and UTF-32.
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_object_without_duplicates)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc.msg} at character {exc.pos}") from exc
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"not JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except RecursionError as exc:
        raise InvalidEvent("not JSON: nested too deeply") from exc


def _kind(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


Headers = Sequence[tuple[str, bytes | None]]


def _from_headers(raw: Any, headers: Headers) -> Any:
    """The CloudEvent of a Kafka message as one document, by the CloudEvents Kafka binding: a
    structured-mode value as it is; a binary-mode event (a `ce_specversion` header) built from
    its `ce_*` headers, `content-type` as its datacontenttype and the value, strict JSON, as its
    data. A message with neither header is structured (what Tierflow produced before it set
    content-type).

    Not the `cloudevents` SDK's `from_binary`: it decodes the data with a lenient json.loads
    (duplicate keys, NaN) and adds the message key as an attribute; the data must go through
    the same strict decoder as a structured event.
    """
    named: dict[str, str] = {}
    for name, value in headers:
        name = name.lower()
        if name != CONTENT_TYPE_HEADER and not name.startswith(CE_HEADER_PREFIX):
            continue  # dlq.* and others are the transport's, not the event's
        if name in named:
            raise InvalidEvent(f"header {name[:60]!r} appears twice in one message")
        try:
            named[name] = (value or b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidEvent(f"header {name[:60]!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    content_type = named.pop(CONTENT_TYPE_HEADER, "")
    if content_type.startswith("application/cloudevents"):
        if content_type.split(";")[0].strip() != STRUCTURED_CONTENT_TYPE:
            raise InvalidEvent(f"content-type {content_type[:80]!r}: only single events in JSON "
                               f"({STRUCTURED_CONTENT_TYPE}) are read in structured mode")
        return raw
    if f"{CE_HEADER_PREFIX}specversion" not in named:
        return raw
    media_type = content_type.split(";")[0].strip()
    if media_type not in ("", "application/json"):
        raise InvalidEvent(f"binary-mode event with content-type {content_type[:80]!r}: its data must be "
                           "application/json")
    document = {name.removeprefix(CE_HEADER_PREFIX): value for name, value in named.items()}
    document["data"] = _decode(raw)
    return document


def parse_event(raw: bytes | str | dict, headers: Headers = ()) -> tuple[CloudEvent, Event]:
    """Check a message (with its Kafka headers, if any) and return its envelope and typed event;
    InvalidEvent for any problem."""
    # 1. JSON, and an object
    document = _decode(_from_headers(raw, headers))
    if not isinstance(document, dict):
        raise InvalidEvent(f"not a CloudEvent: expected a JSON object, got {_kind(document)}")

    # 2. the envelope; name the type in the message when it is one we know
    claimed = document.get("type")
    known = isinstance(claimed, str) and claimed in EVENT_TYPES
    what = f"invalid {claimed} event" if known else "invalid CloudEvent"
    envelope = validated(CloudEvent, document, what=what)

    # 3. the type, then its data
    model = EVENT_TYPES.get(envelope.type)
    if model is None:
        raise InvalidEvent(unknown_type_message(envelope.type))
    event = validated(model, envelope.data, what=what, at=("data",))

    # 4. the subject is the message key: it must name what the data is about
    if envelope.subject != event.subject:
        raise InvalidEvent(
            f"{what}: subject {envelope.subject!r} does not match data.{model.subject_field} {event.subject}"
        )
    return envelope, event
