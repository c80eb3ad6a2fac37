"""JSON Schemas of the Tierflow events, for producers written in other languages.

One file per event type, `events/schemas/<type>.json`: a JSON Schema (draft 2020-12) of the whole
CloudEvent of that type, envelope and `data`, generated from the pydantic models. Regenerate them
after changing a model, and commit the result:

    python -m events.schemas

What the schema cannot say, the consumer still checks: the `subject` equals the id it names,
and cross-field rules such as `segments_done <= segments_total`.
"""

import json
from pathlib import Path

from events.envelope import CloudEvent
from events.errors import InvalidEvent
from events.models import EVENT_TYPES
from events.topics import unknown_type_message

SCHEMA_DIR = Path(__file__).resolve().parent
BASE_URL = "https://tierflow.dev/events/"
DRAFT = "https://json-schema.org/draft/2020-12/schema"


def schema_path(event_type: str) -> str:
    """The schema's file name relative to the events package: `schemas/<type>.json`."""
    return f"schemas/{event_type}.json"


def schema_id(event_type: str) -> str:
    """The schema's `$id`, e.g. https://tierflow.dev/events/schemas/scene.approved.json."""
    return BASE_URL + schema_path(event_type)


def json_schema(event_type: str) -> dict:
    """The JSON Schema of a whole `event_type` CloudEvent: the envelope with `data` filled in."""
    model = EVENT_TYPES.get(event_type)
    if model is None:
        raise InvalidEvent(unknown_type_message(event_type))
    envelope = CloudEvent.model_json_schema()
    data = model.model_json_schema()
    # Sub-models (Recipe, RejectionReason) are referenced as #/$defs/...: from the root.
    definitions = data.pop("$defs", {})
    envelope["properties"]["type"] = {
        "const": event_type, "type": "string", "title": "Type", "description": "The event type.",
    }
    envelope["properties"]["data"] = data
    schema = {
        "$schema": DRAFT,
        "$id": schema_id(event_type),
        **envelope,
        "title": f"{event_type} CloudEvent",
        "description": (
            f"A {event_type} event: a CloudEvents 1.0 message in structured JSON mode, published "
            f"on the Kafka topic {event_type} with the message key equal to `subject`, which must "
            f"be data.{model.subject_field} as a string. {data.get('description', '')}"
        ).strip(),
    }
    if definitions:
        schema["$defs"] = definitions
    return schema


def render(event_type: str) -> str:
    """The schema file's exact text: sorted keys, two-space indent, trailing newline."""
    return json.dumps(json_schema(event_type), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write one schema file per event type and remove files of types that no longer exist."""
    written = []
    for event_type in EVENT_TYPES:
        path = directory / f"{event_type}.json"
        path.write_text(render(event_type), encoding="utf-8")
        written.append(path)
    for stale in set(directory.glob("*.json")) - set(written):
        stale.unlink()
    return written


def load_schema(event_type: str) -> dict:
    """The schema of `event_type` as shipped (the file, not a fresh rendering)."""
    if event_type not in EVENT_TYPES:
        raise InvalidEvent(unknown_type_message(event_type))
    return json.loads((SCHEMA_DIR / f"{event_type}.json").read_text(encoding="utf-8"))
