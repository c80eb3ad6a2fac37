"""Unit of work: one Postgres transaction holding a state change and the events it causes.

Events are not sent by handlers: `emit` writes them to the `outbox` table in the same
transaction, and a relay publishes them after commit. So either the change and its events
both happen, or neither does.
"""

import psycopg
from psycopg.types.json import Jsonb

from events import Event, envelope_for, topic_for, tracing


class UnitOfWork:
    """A transaction in progress: `conn` for reads and writes, `emit` for events."""

    def __init__(self, conn: psycopg.Connection, source: str):
        self.conn = conn
        self.source = source

    def emit(self, event: Event, event_id: str | None = None) -> str:
        """Record `event` in the outbox of this transaction; returns its CloudEvents id (a new
        one unless `event_id` is given: a writer that retries keeps its id to tell whether an
        earlier try was committed)."""
        # Its own span in the current trace (events.tracing), or in a trace of its own.
        topic = topic_for(event.type)
        traceparent = tracing.child(tracing.current(), name=f"send {event.type}", attributes={
            "messaging.system": "kafka", "messaging.destination.name": topic, "cloudevents.event_type": event.type,
            "cloudevents.event_subject": event.subject, "cloudevents.event_source": self.source})
        cloud_event = envelope_for(event, source=self.source, id=event_id, extensions={"traceparent": traceparent})
        self.conn.execute(
            "INSERT INTO outbox (event_id, topic, message_key, payload) VALUES (%s, %s, %s, %s)",
            [cloud_event.id, topic, cloud_event.subject,
             Jsonb(cloud_event.model_dump(mode="json", exclude_none=True))],
        )
        return cloud_event.id

    def claim(self, consumer: str, event_id: str) -> bool:
        """Record that `consumer` applies `event_id` in this transaction.

        False when it was applied before: the caller must then change nothing. A concurrent
        claim of the same event waits for this transaction and then gets False.
        """
        row = self.conn.execute(
            "INSERT INTO processed_events (consumer, event_id) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
            [consumer, event_id],
        ).fetchone()
        return row is not None

    def claim_all(self, consumer: str, event_ids: list[str]) -> set[str]:
        """`claim` for many events in one statement; returns the ids claimed now."""
        rows = self.conn.execute(
            "INSERT INTO processed_events (consumer, event_id) SELECT %s, unnest(%s::text[]) "
            "ON CONFLICT DO NOTHING RETURNING event_id",
            [consumer, event_ids],
        ).fetchall()
        return {row["event_id"] for row in rows}
