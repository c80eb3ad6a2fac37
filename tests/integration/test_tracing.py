"""W3C trace context on every event: one trace follows a scene from its submission through
generation, approval and upscale, across the outbox, the consumers and the workers."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from events import SceneApproved, envelope_for, tracing
from functions.handlers.registry import FUNCTIONS
from infra import embedded
from infra.net import free_ports
from shared.domain import scenes, upscale
from shared.domain.recipe import SegmentSpec
from shared.runtime.consumer import Message, apply_batch
from tests.conftest import make_scene, wait_for_scene
from tests.integration.test_upscale import _approve_and_follow

pytestmark = pytest.mark.integration

TWO = [SegmentSpec(prompt="a lighthouse", seed=1, frames=2, steps=1),
       SegmentSpec(prompt="waves", seed=2, frames=2, steps=1)]


def _events(conn, *scene_ids: int) -> list[dict]:
    return [r["payload"] for r in conn.execute(
        "SELECT payload FROM outbox WHERE message_key = ANY(%s) ORDER BY id", [[str(s) for s in scene_ids]])]


def test_one_trace_follows_a_scene_from_submission_through_approval_and_upscale(gen_deps, conn, run_cli,
                                                                                database_url):
    draft = scenes.submit_scene(gen_deps, project="p", name="s", aspect="16:9", segments=TWO)
    assert wait_for_scene(gen_deps, draft)["status"] == "generated"
    upscale.set_auto_upscale(gen_deps, "p", "preview")
    target = _approve_and_follow(gen_deps, draft)
    assert wait_for_scene(gen_deps, target)["status"] == "generated"

    events = _events(conn, draft, target)
    types = {e["type"] for e in events}
    assert {"generation.requested", "generation.progress", "generation.completed", "scene.approved",
            "upscale.requested", "upscale.progress", "upscale.completed"} <= types
    parents = [e["traceparent"] for e in events]
    assert all(tracing.valid(p) for p in parents)
    assert len({tracing.trace_id(p) for p in parents}) == 1  # one trace, from submission to the upscale
    assert len(set(parents)) == len(parents)  # every event its own span

    # What `events tail --from-beginning --json` prints carries it too.
    tail = run_cli("events", "tail", "--from-beginning", "--json", "--timeout", "3",
                   env={"TIERFLOW_DATABASE_URL": database_url})
    printed = [json.loads(line) for line in tail.stdout.splitlines()]
    generation = [e for e in printed if e["type"].startswith("generation.") and e["subject"] == str(draft)]
    assert len(generation) >= 6 and {tracing.trace_id(e["traceparent"]) for e in generation} == {
        tracing.trace_id(parents[0])}

    # Another scene is another trace.
    other = scenes.submit_scene(gen_deps, project="p", name="t", aspect="16:9", segments=TWO[:1])
    assert tracing.trace_id(_events(conn, other)[0]["traceparent"]) != tracing.trace_id(parents[0])


def test_an_event_from_a_studio_tool_is_continued_in_its_own_trace(deps, conn):
    scene = make_scene(conn, auto_upscale_to="production", status="generated")
    theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    approval = envelope_for(SceneApproved(scene_id=scene), source="urn:ftrack", extensions={"traceparent": theirs})
    with conn.transaction():
        outcome = apply_batch(conn, deps.ports, FUNCTIONS["on_scene_approved"],
                              [Message("scene.approved", approval.to_json(), str(scene).encode(), outbox_id=1)])
    assert len(outcome.applied) == 1
    [requested] = [e for e in _events(conn, scene) if e["type"] == "upscale.requested"]
    assert tracing.trace_id(requested["traceparent"]) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert requested["traceparent"] != theirs  # a span of its own


def test_a_bad_traceparent_starts_a_new_trace_instead_of_spreading():
    with tracing.scope("00-zz-00-01") as started:
        assert tracing.valid(started) and tracing.current() == started
    assert tracing.current() is None
    assert tracing.trace_id(tracing.child("00-" + "0" * 32 + "-00f067aa0ba902b7-01")) != "0" * 32


class _OtlpReceiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver (what a collector listens on at :4318): keeps every span posted
    to /v1/traces, with its service's name."""

    def __init__(self):
        self.spans: list[tuple[str, object]] = []
        super().__init__(("127.0.0.1", 0), _OtlpHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _OtlpHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces" or self.headers["Content-Type"] != "application/x-protobuf":
            self.send_error(404)
            return
        request = ExportTraceServiceRequest.FromString(body)
        for resource_spans in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
            self.server.spans.extend((service, span) for scope in resource_spans.scope_spans for span in scope.spans)
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_spans_go_to_the_otlp_endpoint_and_draw_the_scene_as_one_tree(run_cli, database_url, tiny_model, tmp_path,
                                                                        conn):
    receiver = _OtlpReceiver()
    env = {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_MODEL": tiny_model,
           "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
    try:
        done = run_cli("jobs", "submit", "--project", "p", "--scene", "s", "--aspect", "16:9", "--prompt", "a lighthouse",
                       "--frames", "2", "--steps", "1", "--wait", "--json", env=env)
        assert done.returncode == 0, done.stderr
        scene = json.loads(done.stdout)["scene_id"]
        approved = run_cli("scenes", "approve", str(scene), "--wait", env=env)
        assert approved.returncode == 0, approved.stderr
    finally:
        embedded.stop(tmp_path / "home")
        receiver.shutdown()
    # Every process flushed its spans when it exited.
    spans = {span.span_id.hex(): (service, span) for service, span in receiver.spans}
    assert len(spans) == len(receiver.spans)
    services = {service for service, _ in spans.values()}
    assert {"tierflow-jobs", "tierflow-worker", "tierflow-scenes"} <= services

    events = _events(conn, scene)
    [trace] = {tracing.trace_id(e["traceparent"]) for e in events}
    for event in events:  # each event's traceparent is the producer span that wrote it
        _, trace_hex, span_hex, _ = event["traceparent"].split("-")
        _, producer = spans[span_hex]
        assert (producer.name, producer.kind, producer.trace_id.hex()) == (
            f"send {event['type']}", Span.SPAN_KIND_PRODUCER, trace_hex)
    in_trace = [(service, span) for service, span in spans.values() if span.trace_id.hex() == trace]
    names = {(service, span.name) for service, span in in_trace}
    assert {("tierflow-jobs", "unit of work"), ("tierflow-jobs", "on_generation_requested generation.requested"),
            ("tierflow-worker", "generate draft"), ("tierflow-scenes", "approve"),
            ("tierflow-scenes", "on_scene_approved scene.approved")} <= names
    # One tree: the submission is its root, and every other span's parent was received.
    roots = [span for _, span in in_trace if not span.parent_span_id]
    assert [(r.name, r.kind) for r in roots] == [("unit of work", Span.SPAN_KIND_INTERNAL)]
    assert all(span.parent_span_id.hex() in spans for _, span in in_trace if span.parent_span_id)
    [render] = [span for service, span in in_trace if span.name == "generate draft"]
    attributes = {a.key: a.value for a in render.attributes}
    assert (attributes["tierflow.scene_id"].int_value, attributes["tierflow.tier"].string_value) == (scene, "draft")
    assert render.end_time_unix_nano > render.start_time_unix_nano
    [applied] = [span for _, span in in_trace if span.name == "on_scene_approved scene.approved"]
    assert applied.kind == Span.SPAN_KIND_CONSUMER
    assert spans[applied.parent_span_id.hex()][1].name == "send scene.approved"


def test_a_collector_that_is_down_costs_the_spans_not_the_work(run_cli, database_url, conn):
    [port] = free_ports()  # nothing listens there
    env = {"TIERFLOW_DATABASE_URL": database_url, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    done = run_cli("jobs", "submit", "--project", "p", "--scene", "s", "--aspect", "16:9", "--prompt", "a lighthouse",
                   "--json", env=env)
    assert done.returncode == 0, done.stderr
    scene = json.loads(done.stdout)["scene_id"]
    assert [e["type"] for e in _events(conn, scene)] == ["generation.requested"]
    assert "Failed to export" in done.stderr  # said, by the SDK's logger
