"""Kafka topics: one per event type, named exactly like the type (`scene.approved`).

Conventions every producer and consumer follows (the CloudEvents Kafka protocol binding):
- Tierflow produces the CloudEvent in structured JSON mode: the value is `CloudEvent.to_json()`
  and the `content-type` header says `application/cloudevents+json` (STRUCTURED_HEADERS);
- its consumers also read binary mode from other producers: the attributes in `ce_*` headers,
  `content-type` the data's, the value the data (`events.codec.parse_event`);
- the message key is the CloudEvents `subject` (the scene, source scene or delivery id as a
  string), so all events about one thing land on one partition, in order;
- a message that fails `parse_event` (or keeps failing after retries) is dead-lettered to
  `<topic>.dlq` with its key and value unchanged, so the original bytes can be inspected and
  replayed; the headers say why and where it came from: `dlq.reason` (the one-line error),
  `dlq.topic`, `dlq.partition`, `dlq.offset` (UTF-8 text); then its offset is committed, so one
  bad message never blocks a partition.
"""

from events.errors import InvalidEvent
from events.models import EVENT_TYPES

ALL_TOPICS: tuple[str, ...] = tuple(EVENT_TYPES)
DLQ_SUFFIX = ".dlq"
DLQ_REASON_HEADER = "dlq.reason"
DLQ_TOPIC_HEADER = "dlq.topic"
DLQ_PARTITION_HEADER = "dlq.partition"
DLQ_OFFSET_HEADER = "dlq.offset"
CONTENT_TYPE_HEADER = "content-type"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
STRUCTURED_HEADERS: list[tuple[str, bytes]] = [(CONTENT_TYPE_HEADER, STRUCTURED_CONTENT_TYPE.encode())]


def unknown_type_message(event_type: object) -> str:
    """'unknown event type 'x' (known: ...)', the same wherever a type is looked up."""
    return f"unknown event type {str(event_type)[:100]!r} (known: {', '.join(EVENT_TYPES)})"


def topic_for(event_type: str) -> str:
    """The topic events of `event_type` are published to; InvalidEvent for an unknown type."""
    if event_type not in EVENT_TYPES:
        raise InvalidEvent(unknown_type_message(event_type))
    return event_type


def dlq_topic(topic: str) -> str:
    """Where messages from `topic` that cannot be processed go: `<topic>.dlq`."""
    return f"{topic}{DLQ_SUFFIX}"


def dlq_headers(reason: str, *, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    """The headers of a dead letter, in the (name, bytes) form Kafka clients take."""
    return [
        (DLQ_REASON_HEADER, reason.encode()),
        (DLQ_TOPIC_HEADER, topic.encode()),
        (DLQ_PARTITION_HEADER, str(partition).encode()),
        (DLQ_OFFSET_HEADER, str(offset).encode()),
    ]
