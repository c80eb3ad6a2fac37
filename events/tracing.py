"""W3C trace context on every event (the CloudEvents distributed tracing extension): one trace
follows a scene from its submission through generation, approval, upscale and delivery, across
the outbox, Kafka and the workers.

The current context is a `traceparent` in a context variable. A unit of work that starts work
(`Deps.uow` in shared.bootstrap: a command, an API request) starts a trace unless one is current; the consumer makes
the traceparent of the event it applies current while its handler runs; a worker makes its job's
current (the job row keeps the context it was queued in, and the scene keeps the one it was
submitted in, for its approval and upscales). Each emitted event gets a span id of its own in
the current trace.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, the process
exports OpenTelemetry spans over OTLP/HTTP (`start_export`, the `observability` extra): a span
per named scope (a command's unit of work, each event a consumer applies, each job a worker
renders) and a producer span per emitted event, whose id is the event's traceparent, so a
tracing backend draws the whole chain. Without it nothing is started and nothing is sent.
"""

import contextvars
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

# version 00, 32 hex trace id, 16 hex parent (span) id, 2 hex flags; all-zero ids are invalid.
TRACEPARENT = re.compile(r"00-(?!0{32})([0-9a-f]{32})-(?!0{16})([0-9a-f]{16})-([0-9a-f]{2})")

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar("tierflow_traceparent", default=None)


def valid(traceparent: object) -> bool:
    return isinstance(traceparent, str) and TRACEPARENT.fullmatch(traceparent) is not None


def current() -> str | None:
    return _current.get()


def child(parent: str | None = None, *, name: str | None = None, attributes: Mapping | None = None) -> str:
    """A traceparent in `parent`'s trace (a new trace without a valid one) with a new span id:
    when exporting, that of a producer span `name` (one that has ended: what it stands for, an
    event written to the outbox, is done)."""
    if _tracer is not None and name is not None:
        span = _start(name, parent, "PRODUCER", attributes)
        span.end()
        return _traceparent_of(span)
    match = TRACEPARENT.fullmatch(parent) if valid(parent) else None
    trace_id, flags = (match.group(1), match.group(3)) if match else (secrets.token_hex(16), "01")
    return f"00-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id(traceparent: str | None) -> str | None:
    return traceparent.split("-")[1] if valid(traceparent) else None


@contextmanager
def scope(traceparent: str | None, *, name: str | None = None, kind: str = "INTERNAL",
          attributes: Mapping | None = None) -> Iterator[str]:
    """Make `traceparent` current while the block runs (a new trace when it is missing or invalid).
    When exporting and `name` is given, the block is a span of that name, a child of `traceparent`
    (an error it raises is recorded on it)."""
    if _tracer is None or name is None:
        token = _current.set(traceparent if valid(traceparent) else child())
        try:
            yield _current.get()
        finally:
            _current.reset(token)
        return
    span = _start(name, traceparent, kind, attributes)
    token = _current.set(_traceparent_of(span))
    try:
        yield _current.get()
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(_otel.trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
        raise
    finally:
        _current.reset(token)
        span.end()


@contextmanager
def continued(name: str | None = None) -> Iterator[str]:
    """The current trace, or while the block runs a new one (when exporting, a root span `name`)."""
    if current() is not None:
        yield current()
        return
    with scope(None, name=name) as traceparent:
        yield traceparent


# ---------------------------------------------------------------------------------------------
# OpenTelemetry export

_tracer = None  # the OpenTelemetry tracer once start_export found an endpoint; None: no spans
_provider = None  # its TracerProvider
_otel = None  # the opentelemetry modules start_export imported


def exporting() -> bool:
    return _tracer is not None


def start_export(service: str) -> bool:
    """Export spans over OTLP/HTTP when the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set
    (OTEL_SERVICE_NAME overrides `service`; the exporter reads the other OTEL_EXPORTER_OTLP_*
    settings itself); True if it does. Spans go out in batches from a background thread and the
    last ones at exit, so a slow or absent collector never holds up work (it costs the spans,
    which the SDK logs). Raises ModuleNotFoundError without the `observability` extra: a process
    told to export that cannot must not run untraced silently."""
    global _tracer, _provider, _otel
    wanted = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if not wanted or os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true" or _tracer is not None:
        return _tracer is not None
    import opentelemetry.trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create(
        {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # shut down (flushed) at exit
    _otel, _provider = opentelemetry, provider
    _tracer = provider.get_tracer("tierflow")
    return True


def flush() -> None:
    """Send the spans so far now (a Lambda container is frozen between invocations)."""
    if _provider is not None:
        _provider.force_flush()


def _start(name: str, parent: str | None, kind: str, attributes: Mapping | None):
    """A started span `name` of `kind`, a child of `parent` (a root span without a valid one)."""
    trace = _otel.trace
    context = None
    if valid(parent):
        _, trace_hex, span_hex, flags = parent.split("-")
        context = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            int(trace_hex, 16), int(span_hex, 16), is_remote=True, trace_flags=trace.TraceFlags(int(flags, 16)))))
    return _tracer.start_span(name, context=context, kind=trace.SpanKind[kind],
                              attributes={k: v for k, v in (attributes or {}).items() if v is not None})


def _traceparent_of(span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
