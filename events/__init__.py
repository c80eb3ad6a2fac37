"""Tierflow's event contracts: the CloudEvents envelope and one frozen model per event type.

This package imports nothing else of Tierflow's (only the standard library and pydantic), so
every other package, and every producer, can depend on it.

    from events import SceneApproved, envelope_for, parse_event, topic_for

    event = SceneApproved(scene_id=12, approved_by="ana")
    message = envelope_for(event, source="urn:tierflow:cli")
    producer.send(topic_for(event.type), key=event.subject.encode(), value=message.to_json())

    envelope, event = parse_event(value)  # InvalidEvent (one line) for anything wrong

Producers in other languages validate against the JSON Schemas in `events/schemas/` (one per
type; samples in `events/samples/`). After changing a model, regenerate them with

    python -m events.schemas

Topic, key and dead-letter conventions: see `events.topics`.
"""

from events.codec import envelope_for, parse_event
from events.envelope import CloudEvent
from events.errors import InvalidEvent
from events.models import (
    EVENT_TYPES,
    DeliveryCompleted,
    DeliveryRejected,
    DeliveryRequested,
    Event,
    GenerationCompleted,
    GenerationFailed,
    GenerationProgress,
    GenerationRequested,
    Recipe,
    RejectionReason,
    SceneApproved,
    UpscaleCompleted,
    UpscaleFailed,
    UpscaleProgress,
    UpscaleRequested,
)
from events.schemas import json_schema, load_schema, schema_id, schema_path
from events.topics import ALL_TOPICS, dlq_topic, topic_for

__all__ = [
    "ALL_TOPICS",
    "EVENT_TYPES",
    "CloudEvent",
    "DeliveryCompleted",
    "DeliveryRejected",
    "DeliveryRequested",
    "Event",
    "GenerationCompleted",
    "GenerationFailed",
    "GenerationProgress",
    "GenerationRequested",
    "InvalidEvent",
    "Recipe",
    "RejectionReason",
    "SceneApproved",
    "UpscaleCompleted",
    "UpscaleFailed",
    "UpscaleProgress",
    "UpscaleRequested",
    "dlq_topic",
    "envelope_for",
    "json_schema",
    "load_schema",
    "parse_event",
    "schema_id",
    "schema_path",
    "topic_for",
]
