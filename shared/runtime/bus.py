"""The embedded bus: the event runtime with no Kafka, built on the Postgres outbox.

The relay hands every unsent outbox event to each function subscribed to its type (one
`bus_deliveries` row per function) and marks it sent; a function applies its deliveries in
outbox order and deletes them in the same transaction as its effects. Everything lives in
Postgres, so a crash loses nothing: undeleted deliveries are simply applied on the next run,
and `processed_events` makes that effectively-once. One process at a time serves a function
(an advisory lock), which keeps events of one subject in order: a delivery deferred after a
transient failure (shared.runtime.consumer) holds back the later deliveries of its key, and only
those, until its retry time.
"""

from collections.abc import Callable, Sequence

import psycopg

from shared.runtime import metrics
from shared.runtime.consumer import Function, Message, Outcome, RetryPolicy, apply_batch, retry_policy
from shared.runtime.dead_letters import record_on_bus
from shared.runtime.outbox import listen_for_outbox, lock_unsent, mark_sent, wait_for_outbox
from shared.runtime.supervise import Supervised


def relay_to_bus(conn: psycopg.Connection, functions: Sequence[Function], limit: int = 1000) -> int:
    """Fan unsent outbox events out to the functions that take them; returns how many were relayed."""
    consumers = [f.name for f in functions for _ in f.consumes]
    topics = [t for f in functions for t in f.consumes]
    with conn.transaction():
        ids = [r["id"] for r in lock_unsent(conn, limit)]
        if not ids:
            return 0
        # prepare=False here and below: a plan prepared while the tables were nearly empty (an
        # idle bus) stays cached and turns these joins into scans that grow with any backlog.
        conn.execute(
            """INSERT INTO bus_deliveries (consumer, outbox_id)
               SELECT f.consumer, o.id
               FROM outbox o JOIN unnest(%s::text[], %s::text[]) AS f(consumer, topic) ON f.topic = o.topic
               WHERE o.id = ANY(%s)
               ON CONFLICT DO NOTHING""",
            [consumers, topics, ids],
            prepare=False,
        )
        mark_sent(conn, ids)
    return len(ids)


def consume_from_bus(
    conn: psycopg.Connection, deps, function: Function, limit: int = 500, retry: RetryPolicy | None = None
) -> Outcome:
    """Apply up to `limit` pending deliveries of `function`, oldest first, in one transaction.
    Deliveries deferred after a transient failure stay, for their retry time."""
    with conn.transaction():
        locked = conn.execute(
            "SELECT pg_try_advisory_xact_lock(hashtext('tierflow.bus.' || %s)) AS ok", [function.name]
        ).fetchone()["ok"]
        if not locked:
            return Outcome()  # another process serves this function
        # Not yet: a deferred delivery before its retry time, and any later one of the same key.
        rows = conn.execute(
            """SELECT d.outbox_id, o.topic, o.message_key, o.payload::text AS payload
               FROM bus_deliveries d JOIN outbox o ON o.id = d.outbox_id
               WHERE d.consumer = %(consumer)s AND NOT EXISTS (
                   SELECT 1 FROM event_failures f
                   JOIN bus_deliveries w ON w.consumer = f.consumer AND f.ref = 'outbox-' || w.outbox_id
                   JOIN outbox wo ON wo.id = w.outbox_id
                   WHERE f.consumer = %(consumer)s AND f.retry_at > now()
                     AND wo.message_key = o.message_key AND w.outbox_id <= d.outbox_id)
               ORDER BY d.outbox_id LIMIT %(limit)s""",
            {"consumer": function.name, "limit": limit},
            prepare=False,
        ).fetchall()
        if not rows:
            return Outcome()
        messages = [
            Message(r["topic"], r["payload"].encode(), r["message_key"].encode(), outbox_id=r["outbox_id"]) for r in rows
        ]
        outcome = apply_batch(conn, deps.ports, function, messages, retry or retry_policy(deps.settings))
        record_on_bus(conn, function.name, outcome.dead)
        later = {m.outbox_id for m in outcome.not_done}
        conn.execute(
            "DELETE FROM bus_deliveries WHERE consumer = %s AND outbox_id = ANY(%s)",
            [function.name, [r["outbox_id"] for r in rows if r["outbox_id"] not in later]],
        )
    return outcome


def run_bus(
    deps,
    subscribers: Sequence[Function],
    functions: Sequence[Function],
    *,
    should_stop: Callable[[], bool],
    idle_seconds: float = 1.0,
    on_outcome: Callable[[Function, Outcome], None] | None = None,
    supervision: Supervised | None = None,
) -> None:
    """Relay to every subscriber and apply events to `functions` until `should_stop()`.

    `subscribers` is every deployed function, not only those run here: an event relayed now
    is relayed once, so a function served by another process must get its delivery too.
    When idle it waits for the next outbox commit, at most `idle_seconds` (replayed dead
    letters, which write no outbox row, are found by that poll). It outlives database outages
    (`supervision`, shared.runtime.supervise); a bug in it is raised.
    """
    def loop() -> None:
        with deps.connect() as conn:
            listen_for_outbox(conn)
            hold_serving(conn, functions)  # again on each reconnect: the locks went with the old session
            while not should_stop():
                if not step(conn, deps, subscribers, functions, on_outcome):
                    wait_for_outbox(conn, idle_seconds)
                supervised.cycle()

    supervised = supervision or Supervised("embedded bus")
    supervised.run(loop, should_stop)


def _serving_key(function: Function) -> str:
    return f"tierflow.serving.{function.name}"


def hold_serving(conn: psycopg.Connection, functions: Sequence[Function]) -> None:
    """Say, for as long as this session lasts, that a runtime process serves `functions`: a shared
    lock per function, which the server drops when the process dies or its connection does."""
    for function in functions:
        conn.execute("SELECT pg_advisory_lock_shared(hashtext(%s))", [_serving_key(function)])


def unserved(conn: psycopg.Connection, functions: Sequence[Function]) -> list[Function]:
    """The functions no runtime process serves now (`hold_serving`)."""
    # In autocommit each SELECT is its own transaction: the lock it took is gone when it returns.
    return [f for f in functions if conn.execute(
        "SELECT pg_try_advisory_xact_lock(hashtext(%s)) AS free", [_serving_key(f)]).fetchone()["free"]]


def drain(deps, subscribers: Sequence[Function], functions: Sequence[Function], on_outcome=None) -> None:
    """Relay and apply until nothing is pending (events caused by events included)."""
    with deps.connect() as conn:
        while step(conn, deps, subscribers, functions, on_outcome):
            pass


def step(conn, deps, subscribers: Sequence[Function], functions: Sequence[Function], on_outcome=None) -> bool:
    """One round: relay, then one batch per function. True when anything was done."""
    busy = relay_to_bus(conn, subscribers) > 0
    for function in functions:
        outcome = consume_from_bus(conn, deps, function)
        metrics.record_outcome(function.name, outcome)  # committed
        did = bool(outcome.applied or outcome.duplicates or outcome.dead)  # a deferral waits for its time
        busy = busy or did
        if on_outcome and (did or outcome.deferred):
            on_outcome(function, outcome)
    return busy
