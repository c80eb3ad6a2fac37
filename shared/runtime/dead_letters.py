"""Dead letters: events a function gave up on (unparseable, refused by a rule, or still failing
after retries), kept with the reason and the original bytes, listed and replayed after a fix.

On the embedded bus they are rows of `dead_letters`; on Kafka, messages on `<topic>.dlq` with the
standard dead-letter headers (events.topics) and the consumer that gave up on them.
"""

import json
from collections.abc import Sequence

import psycopg

from events import ALL_TOPICS, dlq_topic
from events.topics import (
    DLQ_OFFSET_HEADER,
    DLQ_PARTITION_HEADER,
    DLQ_REASON_HEADER,
    DLQ_TOPIC_HEADER,
    STRUCTURED_HEADERS,
    dlq_headers,
)
from shared.errors import Conflict, NotFound
from shared.runtime.consumer import Message

# Besides the standard dead-letter headers (events.topics): which function gave up on it.
DLQ_CONSUMER_HEADER = "dlq.consumer"


def readable(value: bytes | None):
    """A payload as JSON when it is JSON, else as text (dead letters are often neither valid events nor JSON)."""
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return (value or b"").decode(errors="replace")


def record_on_bus(conn: psycopg.Connection, consumer_name: str, dead: Sequence[tuple[Message, str]]) -> None:
    """Keep each dead message of an embedded-bus batch, in the batch's transaction."""
    for message, reason in dead:
        conn.execute(
            """INSERT INTO dead_letters (consumer, topic, message_key, payload, reason, outbox_id)
               VALUES (%s, %s, %s, %s, %s, %s)""",
            [consumer_name, message.topic, message.key.decode(), message.value, reason, message.outbox_id],
        )


def _event_headers(headers) -> list[tuple[str, bytes]]:
    """A message's headers without the dead-letter ones: what it was sent with. A message that
    had none (Tierflow's before it set content-type) is structured mode, and now says so."""
    kept = [(name, value) for name, value in headers if not name.startswith("dlq.")]
    return kept or STRUCTURED_HEADERS


def send_to_kafka(producer, consumer_name: str, dead: Sequence[tuple[Message, str]]) -> None:
    """Publish each dead message to `<topic>.dlq` and wait for the acknowledgements."""
    futures = [
        producer.send(
            dlq_topic(message.topic), key=message.key, value=message.value,
            # The message's own headers stay: a binary-mode event's attributes are there.
            headers=[*_event_headers(message.headers),
                     *dlq_headers(reason, topic=message.topic, partition=message.partition, offset=message.offset),
                     (DLQ_CONSUMER_HEADER, consumer_name.encode())],
        )
        for message, reason in dead
    ]
    producer.flush()
    for future in futures:
        future.get(timeout=30)


def decoded(record) -> dict:
    """A dead letter as `tierflow events dlq` shows it."""
    headers = {k: v.decode(errors="replace") for k, v in (record.headers or [])}
    return {
        "topic": headers.get(DLQ_TOPIC_HEADER, record.topic.removesuffix(".dlq")),
        "dlq": f"{record.topic}-{record.partition}-{record.offset}",
        "consumer": headers.get(DLQ_CONSUMER_HEADER),
        "origin": f"{headers.get(DLQ_TOPIC_HEADER)}-{headers.get(DLQ_PARTITION_HEADER)}-{headers.get(DLQ_OFFSET_HEADER)}",
        "reason": headers.get(DLQ_REASON_HEADER),
        "key": record.key.decode(errors="replace") if record.key else None,
        "value": readable(record.value),
    }


def on_bus(deps, replay: bool) -> list[dict]:
    """The embedded bus's dead letters not replayed yet; with `replay`, delivered again to the
    function that gave up on each, and marked replayed."""
    with deps.uow() as uow:
        rows = uow.conn.execute(
            "SELECT id, consumer, topic, message_key, payload, reason, outbox_id, failed_at FROM dead_letters "
            "WHERE replayed_at IS NULL ORDER BY id FOR UPDATE").fetchall()
        if replay:
            for row in rows:
                # Deliver the original event again to the function that gave up on it.
                uow.conn.execute(
                    "INSERT INTO bus_deliveries (consumer, outbox_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    [row["consumer"], row["outbox_id"]])
            uow.conn.execute("UPDATE dead_letters SET replayed_at = now() WHERE id = ANY(%s)", [[r["id"] for r in rows]])
    return [_bus_json(r) for r in rows]


def _bus_json(r: dict) -> dict:
    return {"topic": r["topic"], "dlq": f"dead_letters/{r['id']}", "consumer": r["consumer"],
            "origin": f"outbox-{r['outbox_id']}", "reason": r["reason"], "key": r["message_key"],
            "value": readable(bytes(r["payload"])), "failed_at": r["failed_at"].isoformat()}


_BUS_COLUMNS = "id, consumer, topic, message_key, payload, reason, outbox_id, failed_at, replayed_at"


def pending_on_bus(conn: psycopg.Connection, *, consumer: str | None = None, after: int | None = None,
                   limit: int | None = None) -> list[dict]:
    """The embedded bus's dead letters not replayed yet, oldest first, as `tierflow events dlq
    --json` shows them plus their `id`; optionally of one consumer (function); with `after` (an id,
    the cursor of the previous page) those after it."""
    rows = conn.execute(
        f"""SELECT {_BUS_COLUMNS} FROM dead_letters
            WHERE replayed_at IS NULL AND (%(consumer)s::text IS NULL OR consumer = %(consumer)s::text)
              AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint)
            ORDER BY id LIMIT %(limit)s""", {"consumer": consumer, "after": after, "limit": limit}).fetchall()
    return [{"id": r["id"], **_bus_json(r)} for r in rows]


def replay_one_on_bus(deps, letter_id: int) -> dict:
    """`tierflow events dlq --replay` for one dead letter of the embedded bus: its event delivered
    again to the function that gave up on it, and the letter marked replayed; returns the letter
    (as `pending_on_bus` shows it). NotFound for an unknown id, Conflict for one replayed already."""
    with deps.uow() as uow:
        row = uow.conn.execute(f"SELECT {_BUS_COLUMNS} FROM dead_letters WHERE id = %s FOR UPDATE",
                               [letter_id]).fetchone()
        if row is None:
            raise NotFound(f"dead letter {letter_id} does not exist")
        if row["replayed_at"] is not None:
            raise Conflict(f"dead letter {letter_id} was replayed at {row['replayed_at'].isoformat()}; "
                           "a failure after that is a new dead letter")
        if row["outbox_id"] is None:  # kept for its bytes, its event is gone (an operator deleted it)
            raise Conflict(f"dead letter {letter_id} has no event in the outbox to deliver again; "
                           "publish it anew with tierflow events publish")
        uow.conn.execute("INSERT INTO bus_deliveries (consumer, outbox_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         [row["consumer"], row["outbox_id"]])
        uow.conn.execute("UPDATE dead_letters SET replayed_at = now() WHERE id = %s", [letter_id])
    return {"id": row["id"], **_bus_json(row)}


def on_kafka(deps, replay: bool) -> list[dict]:
    """The dead letters on every `<topic>.dlq` not replayed yet; with `replay`, published again to
    their topics."""
    from kafka import KafkaConsumer

    from shared.runtime.kafka_bus import make_producer

    # Listing and replay share one group: its committed offsets mark what was replayed.
    consumer = KafkaConsumer(
        *[dlq_topic(t) for t in ALL_TOPICS], bootstrap_servers=deps.settings.kafka_bootstrap,
        group_id="tierflow.dlq-replay", enable_auto_commit=False, auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    producer = make_producer(deps.settings.kafka_bootstrap) if replay else None
    try:
        records = list(consumer)
        if replay and records:
            for record in records:
                producer.send(record.topic.removesuffix(".dlq"), key=record.key, value=record.value,
                              headers=_event_headers(record.headers or ()))
            producer.flush()
            consumer.commit()
        return [decoded(r) for r in records]
    finally:
        consumer.close()
        if producer:
            producer.close()
