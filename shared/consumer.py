"""Applying received events to a function, the same way on every runtime (Kafka, embedded bus, Lambda).

A batch is applied in the caller's transaction; each message in a savepoint of its own, so one
failure undoes that message only. A message is:
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
from shared.uow import UnitOfWork


@dataclass(frozen=True)
class Function:
    """An event handler as deployed: its consumer name, the event types it takes, its code."""

    name: str
    consumes: tuple[str, ...]
    handle: Callable[[Event, object], None]


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
    deps,
    function: Function,
    messages: Sequence[Message],
    retry: RetryPolicy = RetryPolicy(),
) -> Outcome:
    """Apply `messages` to `function` inside the caller's open transaction on `conn`.

    Raises only when the connection itself fails (psycopg.OperationalError): then nothing of
    the batch is committed and the caller retries the whole batch later.
    """
    outcome = Outcome()
    uow = UnitOfWork(conn, source=f"urn:tierflow:{function.name}")
    with deps.joined_uow(uow):
        for message in messages:
            # 1. parse at the edge: a bad payload is dead at once and never blocks the rest
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
            # 2. claim and handle, retrying what may be transient
            for attempt in range(1, retry.attempts + 1):
                try:
                    with conn.transaction():
                        if not uow.claim(function.name, cloud_event.id):
                            outcome.duplicates.append(message)
                            break
                        function.handle(event, deps)
                    outcome.applied.append(message)
                    break
                except psycopg.OperationalError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every failure is classified below
                    if _permanent(exc):
                        outcome.dead.append((message, f"refused: {exc}"))
                        break
                    if attempt == retry.attempts:
                        outcome.dead.append((message, f"failed {attempt} times, last: {type(exc).__name__}: {exc}"))
                        break
                    time.sleep(retry.backoff_seconds * 2 ** (attempt - 1))
    return outcome
