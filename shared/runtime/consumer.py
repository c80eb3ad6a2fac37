"""Applying received events to a function, the same way on every runtime (Kafka, embedded bus, Lambda).

A batch is applied in the caller's transaction. The usual case costs two statements beyond the
handlers' own: one claims every event of the batch, and one savepoint holds them all. If any
handler fails there, that savepoint is rolled back and the batch is applied again one message per
savepoint, so one failure undoes that message only. A message is:
  - applied: parsed, claimed in `processed_events` (effectively-once) and handled;
  - a duplicate: claimed before (a redelivery), so nothing changes;
  - deferred: failed for a reason that may pass (an unreachable service, a deadlock) after a few
    quick tries in place; it is tried again after a pause that grows with each deferral, for up to
    `RetryPolicy.transient_seconds` since its first failure (recorded in `event_failures`, so a
    restart neither forgets nor starts over), and only then is it dead;
  - waiting: behind a deferred event of its lane (the same key on the embedded bus, the same
    partition on Kafka), so events about one thing stay in order; not tried;
  - dead: unparseable, refused by a rule, or failing for longer than the transient window.
The caller then commits, sends the dead letters where its runtime keeps them, arranges the retry
of what was deferred, and only after that acknowledges the rest (commits offsets, deletes deliveries).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg

from events import Event, InvalidEvent, parse_event, tracing
from shared.errors import ServiceUnavailable, TierflowError
from shared.runtime.ports import Ports
from shared.runtime.uow import UnitOfWork


@dataclass(frozen=True)
class Function:
    """An event handler as deployed: its consumer name, the event types it takes, its code."""

    name: str
    consumes: tuple[str, ...]
    handle: Callable[[Event, UnitOfWork, Ports], None]  # effects through the two it is given
    # Apply each event in its own savepoint, never a batch at once: for handlers with an effect
    # outside the database (dispatching GPU work), which re-applying a batch would repeat.
    isolated: bool = False
    # Handle the whole CloudEvent (id, source, time, extensions and data as received) instead of
    # its data's model: for handlers that pass events on (webhooks). It is validated all the same.
    takes_envelope: bool = False


@dataclass(frozen=True)
class Message:
    """One event as received: the original bytes and where they came from."""

    topic: str
    value: bytes
    key: bytes | None = None
    # Kafka and Lambda: (name, value) as the record carries them; a binary-mode CloudEvent's
    # attributes are there (events.codec.parse_event).
    headers: tuple[tuple[str, bytes | None], ...] = ()
    partition: int | None = None  # Kafka and Lambda
    offset: int | None = None  # Kafka and Lambda
    outbox_id: int | None = None  # embedded bus

    @property
    def lane(self) -> tuple:
        """What must stay in order: a Kafka partition; on the embedded bus, the key (the subject)."""
        return (self.topic, self.partition) if self.partition is not None else (self.key,)

    @property
    def ref(self) -> str:
        """"topic-partition-offset" (the id Lambda's partial batch response takes) or "outbox-ID"."""
        if self.partition is not None:
            return f"{self.topic}-{self.partition}-{self.offset}"
        return f"outbox-{self.outbox_id}"


@dataclass
class Outcome:
    applied: list[Message] = field(default_factory=list)
    duplicates: list[Message] = field(default_factory=list)
    dead: list[tuple[Message, str]] = field(default_factory=list)
    deferred: list[tuple[Message, str, float]] = field(default_factory=list)  # (message, why, seconds to its retry)
    waiting: list[Message] = field(default_factory=list)
    handler_seconds: list[float] = field(default_factory=list)  # each applied event's handler, for metrics

    @property
    def not_done(self) -> list[Message]:
        """Deferred and waiting: to be received again, in order."""
        return sorted([m for m, _, _ in self.deferred] + self.waiting, key=lambda m: (m.offset or 0, m.outbox_id or 0))


@dataclass(frozen=True)
class RetryPolicy:
    """Transient failures: `attempts` quick tries in place (pauses from `backoff_seconds`,
    doubling), then deferrals whose pauses double from 1 s up to `longest_pause`, until
    `transient_seconds` have passed since the first failure (0: dead at once)."""

    attempts: int = 3
    backoff_seconds: float = 0.05
    transient_seconds: float = 300.0
    longest_pause: float = 30.0


def retry_policy(settings) -> RetryPolicy:
    """The policy TIERFLOW_TRANSIENT_RETRY_SECONDS sets."""
    return RetryPolicy(transient_seconds=settings.transient_retry_seconds)


def _permanent(exc: Exception) -> bool:
    # A refusal by a rule (unknown scene, illegal transition, bad data) fails the same way
    # every time; an unreachable service may work on the next try.
    return isinstance(exc, InvalidEvent) or (
        isinstance(exc, TierflowError) and not isinstance(exc, ServiceUnavailable)
    )


def apply_batch(
    conn: psycopg.Connection,
    ports: Ports,
    function: Function,
    messages: Sequence[Message],
    retry: RetryPolicy = RetryPolicy(),
) -> Outcome:
    """Apply `messages` to `function` inside the caller's open transaction on `conn`.

    Raises only when the connection itself fails (psycopg.OperationalError): then nothing of
    the batch is committed and the caller retries the whole batch later.
    """
    outcome = Outcome()
    parsed = []
    # 1. parse at the edge: a bad payload is dead at once and never blocks the rest
    for message in messages:
        try:
            cloud_event, event = parse_event(message.value, message.headers)
            if cloud_event.type not in function.consumes:
                raise InvalidEvent(
                    f"{function.name} does not take {cloud_event.type} events "
                    f"(it takes {', '.join(function.consumes)})"
                )
        except InvalidEvent as exc:
            outcome.dead.append((message, str(exc)))
            continue
        parsed.append((message, cloud_event.id, cloud_event if function.takes_envelope else event,
                       cloud_event.extensions.get("traceparent")))
    uow = UnitOfWork(conn, source=f"urn:tierflow:{function.name}")
    # 2. claim and handle: all at once, or (after a failure, or when isolated) one by one
    if function.isolated or not _apply_together(conn, uow, ports, function, parsed, outcome):
        held_up = set()  # lanes with a deferred event: what follows in them waits
        for message, event_id, event, traceparent in parsed:
            if message.lane in held_up:
                outcome.waiting.append(message)
            else:
                with _span(function, event, event_id, traceparent):  # what it emits continues the event's trace
                    if not _apply_one(conn, uow, ports, function, message, event_id, event, retry, outcome):
                        held_up.add(message.lane)
    # 3. what had failed before and is done now is forgotten
    done = [m.ref for m in outcome.applied + outcome.duplicates]
    if done:
        conn.execute("DELETE FROM event_failures WHERE consumer = %s AND ref = ANY(%s)", [function.name, done])
    return outcome


def _span(function: Function, event, event_id: str, traceparent: str | None):
    """The trace context (when exporting, a consumer span) `function` applies an event in."""
    return tracing.scope(traceparent, name=f"{function.name} {event.type}", kind="CONSUMER", attributes={
        "messaging.system": "kafka", "messaging.operation.type": "process", "messaging.message.id": event_id,
        "cloudevents.event_type": event.type, "cloudevents.event_subject": event.subject,
        "faas.trigger": "pubsub", "tierflow.function": function.name})


def _apply_together(conn, uow: UnitOfWork, ports: Ports, function: Function, parsed, outcome: Outcome) -> bool:
    """Claim and handle every parsed event in one savepoint; False (and nothing done) if any failed."""
    applied, duplicates, seconds = [], [], []
    try:
        # Pipeline mode: statements whose results a handler does not read (its UPDATEs and
        # INSERTs) go out without waiting for the server, so an event costs about one round trip.
        with conn.pipeline(), conn.transaction():
            claimed = uow.claim_all(function.name, [event_id for _, event_id, _, _ in parsed])
            for message, event_id, event, traceparent in parsed:
                if event_id in claimed:
                    claimed.discard(event_id)  # a second copy later in this batch is a duplicate
                    started = time.perf_counter()
                    with _span(function, event, event_id, traceparent):  # what it emits continues the event's trace
                        function.handle(event, uow, ports)
                    seconds.append(time.perf_counter() - started)
                    applied.append(message)
                else:
                    duplicates.append(message)
    except psycopg.OperationalError:
        raise
    except Exception:  # noqa: BLE001 - rolled back; applying one by one finds and classifies it
        return False
    outcome.applied += applied
    outcome.duplicates += duplicates
    outcome.handler_seconds += seconds
    return True


def _apply_one(conn, uow: UnitOfWork, ports: Ports, function: Function, message: Message, event_id: str, event,
               retry: RetryPolicy, outcome: Outcome) -> bool:
    """Claim and handle one event in its own savepoint, retrying what may be transient; False
    when it was deferred."""
    for attempt in range(1, retry.attempts + 1):
        try:
            with conn.transaction():
                if not uow.claim(function.name, event_id):
                    outcome.duplicates.append(message)
                    return True
                started = time.perf_counter()
                function.handle(event, uow, ports)
            outcome.handler_seconds.append(time.perf_counter() - started)
            outcome.applied.append(message)
            return True
        except psycopg.OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            if _permanent(exc):
                _forget_failure(conn, function.name, message)
                outcome.dead.append((message, f"refused: {exc}"))
                return True
            if attempt == retry.attempts:
                return _defer(conn, function.name, message, f"{type(exc).__name__}: {exc}", retry, outcome)
            time.sleep(retry.backoff_seconds * 2 ** (attempt - 1))
    raise AssertionError("unreachable: the last attempt returns")


def _defer(conn, consumer: str, message: Message, error: str, retry: RetryPolicy, outcome: Outcome) -> bool:
    """Record a transient failure; the message is deferred, or dead once it has failed for longer
    than the policy allows. False when deferred."""
    row = conn.execute(
        """INSERT INTO event_failures AS f (consumer, ref, last_error, retry_at)
           VALUES (%(consumer)s, %(ref)s, %(error)s, now() + interval '1 second')
           ON CONFLICT (consumer, ref) DO UPDATE SET
               tries = f.tries + 1, last_error = EXCLUDED.last_error,
               retry_at = now() + make_interval(secs => LEAST(%(longest)s, 2 ^ f.tries))
           RETURNING tries, EXTRACT(EPOCH FROM now() - first_failed_at)::float8 AS failing_for,
                     EXTRACT(EPOCH FROM retry_at - now())::float8 AS pause""",
        {"consumer": consumer, "ref": message.ref, "error": error[:2000], "longest": float(retry.longest_pause)},
    ).fetchone()
    if row["failing_for"] >= retry.transient_seconds:
        _forget_failure(conn, consumer, message)
        tries = row["tries"] * retry.attempts
        outcome.dead.append((message, f"failed {tries} times over {row['failing_for']:.0f} s, last: {error}"))
        return True
    outcome.deferred.append((message, error, row["pause"]))
    return False


def _forget_failure(conn, consumer: str, message: Message) -> None:
    conn.execute("DELETE FROM event_failures WHERE consumer = %s AND ref = %s", [consumer, message.ref])
