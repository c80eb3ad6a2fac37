"""The relay side of the outbox (the unit of work writes it): which unsent events to publish next,
marking them sent, and waking up when new ones are committed.

Both relays (to Kafka, to the embedded bus) publish through here: one relay at a time (an
advisory lock) publishes in outbox order, which keeps the events of one key in order.
"""

import psycopg

from shared.errors import InvalidInput

RELAY_LOCK_KEY = 5_921_347_003  # any fixed number
OUTBOX_CHANNEL = "tierflow_outbox"  # notified at every commit that wrote events (migration 0008)


def lock_unsent(conn: psycopg.Connection, limit: int, columns: str = "id") -> list[dict]:
    """In the caller's transaction: take the relay lock and return the oldest unsent rows
    (`columns` of them); [] when there are none or another relay holds the lock."""
    if not conn.execute("SELECT pg_try_advisory_xact_lock(%s) AS ok", [RELAY_LOCK_KEY]).fetchone()["ok"]:
        return []
    return conn.execute(
        f"SELECT {columns} FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s", [limit]).fetchall()


def mark_sent(conn: psycopg.Connection, ids: list[int]) -> None:
    """Record, in the caller's transaction, that these rows were published."""
    conn.execute("UPDATE outbox SET sent_at = now() WHERE id = ANY(%s)", [ids])


def listen_for_outbox(conn: psycopg.Connection) -> None:
    """Subscribe this (autocommit) connection to outbox notifications."""
    conn.execute(f"LISTEN {OUTBOX_CHANNEL}")


def wait_for_outbox(conn: psycopg.Connection, timeout: float) -> None:
    """Return as soon as events are committed to the outbox, or after `timeout` seconds."""
    for _ in conn.notifies(timeout=timeout, stop_after=1):
        pass


# What `prune` deletes, a batch at a time: sent events that nothing here still needs (a pending
# embedded-bus delivery, or a dead letter not yet replayed, reads its outbox row), and the
# record of applied events.
_PRUNE = {
    "outbox": """DELETE FROM outbox WHERE id IN (
                     SELECT o.id FROM outbox o
                     WHERE o.sent_at < now() - make_interval(secs => %(seconds)s)
                       AND NOT EXISTS (SELECT 1 FROM bus_deliveries d WHERE d.outbox_id = o.id)
                       AND NOT EXISTS (SELECT 1 FROM dead_letters l WHERE l.outbox_id = o.id AND l.replayed_at IS NULL)
                     ORDER BY o.id LIMIT %(batch)s)""",
    # A failure record outlives its event only when the event went away unapplied (a topic reset).
    "event_failures": """DELETE FROM event_failures WHERE ctid IN (
                             SELECT ctid FROM event_failures
                             WHERE first_failed_at < now() - make_interval(secs => %(seconds)s) LIMIT %(batch)s)""",
    "processed_events": """DELETE FROM processed_events WHERE ctid IN (
                               SELECT ctid FROM processed_events
                               WHERE processed_at < now() - make_interval(secs => %(seconds)s)
                               ORDER BY processed_at LIMIT %(batch)s)""",
    # What a webhook receiver acknowledged (undelivered rows stay: they are the retries).
    "webhook_deliveries": """DELETE FROM webhook_deliveries WHERE ctid IN (
                                 SELECT ctid FROM webhook_deliveries
                                 WHERE delivered_at < now() - make_interval(secs => %(seconds)s) LIMIT %(batch)s)""",
}


def check_retention(settings, older_than_days: float) -> None:
    """Refuse a retention under which an event could be applied twice: on Kafka, a consumer that
    reads a topic again (a reset, a new group) must still find every event it could read in
    processed_events, so rows live a day longer than the broker keeps events."""
    if older_than_days <= 0:
        raise InvalidInput(f"the retention must be more than 0 days, not {older_than_days:g}")
    if settings.embedded_bus:
        return
    from shared.runtime.kafka_bus import longest_retention_seconds

    kept = longest_retention_seconds(settings.kafka_bootstrap)
    if kept is None:
        raise InvalidInput("the Kafka topics keep events forever (retention.ms -1): an event read again could be "
                           "applied twice once its processed_events row is gone, so nothing is pruned")
    if older_than_days * 86400 < kept + 86400:
        raise InvalidInput(f"{older_than_days:g} days is shorter than the broker keeps events ({kept / 3600:g} h) "
                           f"plus a day: keep them at least {kept / 86400 + 1:g} days")


def prune(conn: psycopg.Connection, older_than_days: float, batch_size: int = 5000) -> dict[str, int]:
    """Delete what `_PRUNE` names, older than `older_than_days`, in batches of `batch_size`, each
    its own short transaction (a big delete would hold its locks and bloat the log); returns how
    many rows of each table went. Call `check_retention` first."""
    deleted = {}
    for table, statement in _PRUNE.items():
        deleted[table] = 0
        while True:
            with conn.transaction():
                count = conn.execute(statement, {"seconds": older_than_days * 86400, "batch": batch_size}).rowcount
            deleted[table] += count
            if count < batch_size:
                break
    return deleted
