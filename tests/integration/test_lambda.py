"""The AWS Lambda entrypoint with the payloads Amazon MSK and self-managed Kafka event sources send."""

import base64
import io
import json
import logging
from contextlib import contextmanager

import pytest

from events import SceneApproved, envelope_for
from functions import lambda_entry
from functions.handlers import on_scene_approved
from shared.runtime.consumer import Function
from tests.conftest import make_scene

pytestmark = pytest.mark.integration


def _record(topic: str, partition: int, offset: int, value: bytes, key: bytes | None = None) -> dict:
    record = {
        "topic": topic, "partition": partition, "offset": offset, "timestamp": 1764000000000,
        "timestampType": "CREATE_TIME", "value": base64.b64encode(value).decode(),
        "headers": [{"origin": list(b"test")}],
    }
    if key is not None:
        record["key"] = base64.b64encode(key).decode()
    return record


def _approval(scene_id: int, approved_by: str | None = None) -> bytes:
    return envelope_for(SceneApproved(scene_id=scene_id, approved_by=approved_by), source="urn:test").to_json()


@pytest.fixture
def lambda_env(monkeypatch, database_url, tmp_path):
    monkeypatch.setenv("TIERFLOW_DATABASE_URL", database_url)
    monkeypatch.setenv("TIERFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("TIERFLOW_KAFKA_BOOTSTRAP", raising=False)


class _Context:
    """What Lambda passes as `context`, as far as the entrypoint reads it."""

    def get_remaining_time_in_millis(self) -> int:
        return 60_000


def _flaky_approvals(failing: set[str]) -> Function:
    """on_scene_approved, failing transiently for approvals by anyone in `failing`."""
    def handle(event, uow, ports):
        if event.approved_by in failing:
            raise ConnectionResetError("S3 said 503 Slow Down")
        on_scene_approved.handle(event, uow, ports)

    return Function("flaky_approvals", on_scene_approved.FUNCTION.consumes, handle)


def test_dead_letters_go_to_the_dlq_and_transient_failures_come_back_in_the_documented_shape(
        lambda_env, monkeypatch, conn, kafka_deps, kafka_bootstrap):
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response

    from shared.runtime import dead_letters
    from shared.runtime.kafka_bus import ensure_topics

    monkeypatch.setenv("TIERFLOW_KAFKA_BOOTSTRAP", kafka_bootstrap)
    ensure_topics(kafka_bootstrap, 4)
    good, flaky, after = make_scene(conn), make_scene(conn), make_scene(conn)
    records = {
        "scene.approved-0": [
            _record("scene.approved", 0, 10, _approval(good), str(good).encode()),
            _record("scene.approved", 0, 11, b"{not json"),
            _record("scene.approved", 0, 12, _approval(flaky, "flaky"), str(flaky).encode()),
            _record("scene.approved", 0, 13, _approval(after), str(after).encode()),  # behind the deferred one
        ],
        "scene.approved-3": [_record("scene.approved", 3, 40, _approval(424242), b"424242")],
    }
    failing = {"flaky"}
    handler = lambda_entry.lambda_entrypoint(_flaky_approvals(failing))
    for source in ("SelfManagedKafka", "aws:kafka"):  # MSK and self-managed Kafka send the same records
        response = handler({"eventSource": source, "records": records}, _Context())
        # The shape aws-lambda-powertools' Kafka batch processor returns for the same failures.
        expected = process_partial_response(
            event={"eventSource": source, "records": records}, processor=BatchProcessor(event_type=EventType.Kafka),
            record_handler=lambda record: record.offset not in (12, 13) or 1 / 0, context=None)
        assert response == expected == {"batchItemFailures": [
            {"itemIdentifier": {"partition": "scene.approved-0", "offset": 12}},
            {"itemIdentifier": {"partition": "scene.approved-0", "offset": 13}}]}
    statuses = {r["id"]: r["status"] for r in conn.execute(
        "SELECT id, status FROM scenes WHERE id = ANY(%s)", [[good, flaky, after]])}
    assert statuses == {good: "approved", flaky: "generated", after: "generated"}
    [failure] = conn.execute("SELECT consumer, ref, tries, last_error FROM event_failures").fetchall()
    assert failure == {"consumer": "flaky_approvals", "ref": "scene.approved-0-12", "tries": 2,
                       "last_error": "ConnectionResetError: S3 said 503 Slow Down"}
    # The poison record and the refused one, once each per invocation, on the topic `events dlq` reads.
    letters = dead_letters.on_kafka(kafka_deps, replay=False)
    assert sorted((d["origin"], d["reason"][:30]) for d in letters) == [
        ("scene.approved-0-11", "not JSON: Expecting property n"), ("scene.approved-0-11", "not JSON: Expecting property n"),
        ("scene.approved-3-40", "refused: scene 424242 does not"), ("scene.approved-3-40", "refused: scene 424242 does not")]

    # Lambda retries from the first failure; the storage is back. The entrypoint waits for the
    # retry time, then applies both, in order, and forgets the failure.
    failing.clear()
    again = handler({"eventSource": "SelfManagedKafka", "records": {"scene.approved-0": records["scene.approved-0"][2:]}},
                    _Context())
    assert again == {"batchItemFailures": []}
    assert {r["status"] for r in conn.execute("SELECT status FROM scenes WHERE id = ANY(%s)", [[flaky, after]])} == {
        "approved"}
    assert conn.execute("SELECT count(*) AS n FROM event_failures").fetchone()["n"] == 0


def test_the_handler_the_template_names_is_wired_to_the_function(lambda_env, conn):
    scene = make_scene(conn)
    payload = {"eventSource": "SelfManagedKafka",
               "records": {"scene.approved-0": [_record("scene.approved", 0, 1, _approval(scene))]}}
    assert lambda_entry.on_scene_approved(payload, None) == {"batchItemFailures": []}
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"


@contextmanager
def _powertools_log_to(stream):
    """powertools configures its logger once per process, on the stdout of that moment: point it here."""
    from aws_lambda_powertools import Logger

    Logger(service="tierflow-lambda")  # configured, if no test did yet
    [handler] = logging.getLogger("tierflow-lambda").handlers
    previous = handler.setStream(stream)
    try:
        yield
    finally:
        handler.setStream(previous)


def test_a_binary_mode_record_is_read_from_its_headers_and_the_invocation_is_logged(lambda_env, conn):
    scene = make_scene(conn)
    record = _record("scene.approved", 0, 1, json.dumps({"scene_id": scene}).encode(), key=str(scene).encode())
    record["headers"] = [{name: list(value)} for name, value in [
        ("ce_specversion", b"1.0"), ("ce_id", b"from-ftrack-1"), ("ce_source", b"urn:ftrack"),
        ("ce_type", b"scene.approved"), ("ce_subject", str(scene).encode()), ("ce_time", b"2026-12-02T03:00:00Z"),
        ("content-type", b"application/json")]]
    payload = {"eventSource": "SelfManagedKafka", "records": {"scene.approved-0": [record]}}
    handler = lambda_entry.lambda_entrypoint(on_scene_approved.FUNCTION)  # a new container: this test's database
    logged_to = io.StringIO()
    with _powertools_log_to(logged_to):
        assert handler(payload, _Context()) == {"batchItemFailures": []}
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"
    assert conn.execute("SELECT 1 FROM processed_events WHERE event_id = 'from-ftrack-1'").fetchone()
    # powertools' Logger: one JSON line per invocation, with what became of the batch.
    [logged] = [json.loads(line) for line in logged_to.getvalue().splitlines() if '"batch applied"' in line]
    assert {k: logged[k] for k in ("level", "service", "function", "records", "applied", "dead", "deferred")} == {
        "level": "INFO", "service": "tierflow-lambda", "function": "on_scene_approved", "records": 1, "applied": 1,
        "dead": 0, "deferred": 0}


def test_a_payload_that_is_not_from_kafka_is_refused(lambda_env):
    from events import InvalidEvent

    with pytest.raises(InvalidEvent, match="not a Kafka event source payload"):
        lambda_entry.on_scene_approved({"Records": [{"eventSource": "aws:sqs"}]}, None)


def test_sample_payload_file_round_trips(lambda_env, conn, tmp_path):
    scene = make_scene(conn)
    sample = {"eventSource": "aws:SelfManagedKafka",
              "records": {"scene.approved-1": [_record("scene.approved", 1, 7, _approval(scene))]}}
    path = tmp_path / "event.json"
    path.write_text(json.dumps(sample))
    handler = lambda_entry.lambda_entrypoint(on_scene_approved.FUNCTION)
    assert handler(json.loads(path.read_text()), None) == {"batchItemFailures": []}
