"""Applying received events to a function, the same way on every runtime (Kafka, embedded bus, Lambda).

A batch is applied in the caller's transaction. The usual case costs two statements beyond the
handlers' own: one claims every event of the batch, and one savepoint holds them all. If any
handler fails there, that savepoint is rolled back and the batch is applied again one message per
savepoint, so one failure undoes that message only. A message is:
  - applied: parsed, claimed in `processed_events` (effectively-once) and handled;
  - a duplicate: claimed before (a redelivery), so nothing changes;
  - dead: unparseable, refused by a rule, or still failing after bounded retries with backoff.
The caller then commits, sends the dead letters where its runtime keeps them, and only after
that acknowledges the batch (commits offsets, deletes deliveries).
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import psycopg

from events import Event, InvalidEvent, parse_event
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


@dataclass(frozen=True)
class Message:
    """One event as received: the original bytes and where they came from."""

    topic: str
    value: bytes
    key: bytes | None = None
    partition: int | None = None  # Kafka and Lambda
    offset: int | None = None  # Kafka and Lambda
    outbox_id: int | None = None  # embedded bus

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


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries for transient failures: attempts in all, first pause, doubling."""

    attempts: int = 3
    backoff_seconds: float = 0.05


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
            cloud_event, event = parse_event(message.value)
            if cloud_event.type not in function.consumes:
                raise InvalidEvent(
                    f"{function.name} does not take {cloud_event.type} events "
                    f"(it takes {', '.join(function.consumes)})"
                )
        except InvalidEvent as exc:
            outcome.dead.append((message, str(exc)))
            continue
        parsed.append((message, cloud_event.id, event))
    uow = UnitOfWork(conn, source=f"urn:tierflow:{function.name}")
    # 2. claim and handle: all at once, or (after a failure, or when isolated) one by one
    if function.isolated or not _apply_together(conn, uow, ports, function, parsed, outcome):
        for message, event_id, event in parsed:
            _apply_one(conn, uow, ports, function, message, event_id, event, retry, outcome)
    return outcome


def _apply_together(conn, uow: UnitOfWork, ports: Ports, function: Function, parsed, outcome: Outcome) -> bool:
    """Claim and handle every parsed event in one savepoint; False (and nothing done) if any failed."""
    applied, duplicates = [], []
    try:
        # Pipeline mode: statements whose results a handler does not read (its UPDATEs and
        # INSERTs) go out without waiting for the server, so an event costs about one round trip.
        with conn.pipeline(), conn.transaction():
            claimed = uow.claim_all(function.name, [event_id for _, event_id, _ in parsed])
            for message, event_id, event in parsed:
                if event_id in claimed:
                    claimed.discard(event_id)  # a second copy later in this batch is a duplicate
                    function.handle(event, uow, ports)
                    applied.append(message)
                else:
                    duplicates.append(message)
    except psycopg.OperationalError:
        raise
    except Exception:  # noqa: BLE001 - rolled back; applying one by one finds and classifies it
        return False
    outcome.applied += applied
    outcome.duplicates += duplicates
    return True


def _apply_one(conn, uow: UnitOfWork, ports: Ports, function: Function, message: Message, event_id: str, event,
               retry: RetryPolicy, outcome: Outcome) -> None:
    """Claim and handle one event in its own savepoint, retrying what may be transient."""
    for attempt in range(1, retry.attempts + 1):
        try:
            with conn.transaction():
                if not uow.claim(function.name, event_id):
                    outcome.duplicates.append(message)
                    return
                function.handle(event, uow, ports)
            outcome.applied.append(message)
            return
        except psycopg.OperationalError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure is classified below
            if _permanent(exc):
                outcome.dead.append((message, f"refused: {exc}"))
                return
            if attempt == retry.attempts:
                outcome.dead.append((message, f"failed {attempt} times, last: {type(exc).__name__}: {exc}"))
                return
            time.sleep(retry.backoff_seconds * 2 ** (attempt - 1))
