"""The relay side of the outbox (the unit of work writes it): which unsent events to publish next,
marking them sent, and waking up when new ones are committed.

Both relays (to Kafka, to the embedded bus) publish through here: one relay at a time (an
advisory lock) publishes in outbox order, which keeps the events of one key in order.
"""

import psycopg

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
