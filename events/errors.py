"""The one error a bad event raises, and how validation problems become its one-line message.

A consumer dead-letters an invalid message with this message as the reason, so it must fit on one
line (a Kafka header, a log line) and name the exact attribute or field that is wrong.
"""

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
MAX_PROBLEMS = 5  # more than this and the rest are counted, not listed: the reason stays readable


class InvalidEvent(ValueError):
    """A message is not a valid Tierflow event (not JSON, bad envelope, unknown type, bad data).

    Not worth retrying: the same bytes fail the same way, so the consumer dead-letters them.
    `exit_code` matches the CLI's usage errors (`shared.errors.InvalidInput`).
    """

    exit_code = 2

    def __init__(self, message: str):
        # One line whatever went in: the message travels in Kafka headers and log lines.
        super().__init__(" ".join(message.split("\n")).replace("\r", " "))


def _path(loc: tuple[Any, ...]) -> str:
    """('data', 'reasons', 0, 'code') -> 'data.reasons[0].code'."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def describe(error: ValidationError, *, at: tuple[str, ...] = ()) -> str:
    """The problems pydantic found, as `path: problem; path: problem`, paths starting at `at`."""
    problems = []
    items = error.errors(include_url=False)
    for item in items[:MAX_PROBLEMS]:
        # A ValueError raised by one of our validators reads better without pydantic's prefix.
        text = str(item["ctx"]["error"]) if item["type"] == "value_error" else item["msg"]
        where = _path((*at, *item["loc"]))
        problems.append(f"{where}: {text}" if where else text)
    if len(items) > MAX_PROBLEMS:
        problems.append(f"and {len(items) - MAX_PROBLEMS} more problem(s)")
    return "; ".join(problems)


def validated(model: type[M], value: Any, *, what: str, at: tuple[str, ...] = ()) -> M:
    """`model` validated from `value`, or InvalidEvent saying `<what>: <problems>`."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidEvent(f"{what}: {describe(exc, at=at)}") from exc
