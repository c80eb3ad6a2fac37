"""W3C trace context on every event (the CloudEvents distributed tracing extension): one trace
follows a scene from its submission through generation, approval, upscale and delivery, across
the outbox, Kafka and the workers.

The current context is a `traceparent` in a context variable. A unit of work that starts work
(`Deps.uow` in shared.bootstrap: a command, an API request) starts a trace unless one is current; the consumer makes
the traceparent of the event it applies current while its handler runs; a worker makes its job's
current (the job row keeps the context it was queued in, and the scene keeps the one it was
submitted in, for its approval and upscales). Each emitted event gets a span id of its own in
the current trace.
"""

import contextvars
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

# version 00, 32 hex trace id, 16 hex parent (span) id, 2 hex flags; all-zero ids are invalid.
TRACEPARENT = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("tierflow_traceparent", default=None)


def valid(traceparent: object) -> bool:
    return isinstance(traceparent, str) and TRACEPARENT.fullmatch(traceparent) is not None


def current() -> str | None:
    return _current.get()


def child(parent: str | None = None) -> str:
    """A traceparent in `parent`'s trace (a new trace without a valid one) with a new span id."""
    match = TRACEPARENT.fullmatch(parent) if valid(parent) else None
    trace_id, flags = (match.group(1), match.group(3)) if match else (secrets.token_hex(16), "01")
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if valid(traceparent) else None


@contextmanager
def scope(traceparent: str | None) -> Iterator[str]:
    """Make `traceparent` current while the block runs (a new trace when it is missing or invalid)."""
    token = _current.set(traceparent if valid(traceparent) else child())
    try:
        yield _current.get()
    finally:
        _current.reset(token)


@contextmanager
def continued() -> Iterator[str]:
    """The current trace, or a new one while the block runs."""
    with scope(current()) as traceparent:
        yield traceparent
