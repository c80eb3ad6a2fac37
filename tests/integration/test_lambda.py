"""The AWS Lambda entrypoint with the payloads Amazon MSK and self-managed Kafka event sources send."""

import base64
import json

import pytest

from events import SceneApproved, envelope_for
from functions import lambda_entry
from functions.handlers import on_scene_approved
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


def _approval(scene_id: int) -> bytes:
    return envelope_for(SceneApproved(scene_id=scene_id), source="urn:test").to_json()


@pytest.fixture
def lambda_env(monkeypatch, database_url, tmp_path):
    monkeypatch.setenv("TIERFLOW_DATABASE_URL", database_url)
    monkeypatch.setenv("TIERFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("TIERFLOW_KAFKA_BOOTSTRAP", raising=False)


@pytest.mark.parametrize("event_source", ["SelfManagedKafka", "aws:kafka"])
def test_partial_batch_failure_names_exactly_the_failing_records(lambda_env, conn, event_source):
    good = [make_scene(conn), make_scene(conn)]
    payload = {
        "eventSource": event_source,
        "bootstrapServers": "b-1.example:9092",
        "records": {
            "scene.approved-0": [
                _record("scene.approved", 0, 10, _approval(good[0]), str(good[0]).encode()),
                _record("scene.approved", 0, 11, b"{not json"),
            ],
            "scene.approved-3": [
                _record("scene.approved", 3, 40, _approval(424242), b"424242"),
                _record("scene.approved", 3, 41, _approval(good[1]), str(good[1]).encode()),
            ],
        },
    }
    # A fresh handler so each parametrised run builds its own deps from the environment.
    handler = lambda_entry.lambda_entrypoint(on_scene_approved.FUNCTION)
    response = handler(payload, None)
    assert response == {"batchItemFailures": [
        {"itemIdentifier": "scene.approved-0-11"}, {"itemIdentifier": "scene.approved-3-40"}]}
    statuses = [r["status"] for r in conn.execute("SELECT status FROM scenes WHERE id = ANY(%s)", [good])]
    assert statuses == ["approved", "approved"]

    # Lambda retries the failed records: applied ones are not in the retry, and a redelivery
    # of an applied record changes nothing.
    again = handler({**payload, "records": {"scene.approved-0": [payload["records"]["scene.approved-0"][0]]}}, None)
    assert again == {"batchItemFailures": []}
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 2


def test_the_handler_the_template_names_is_wired_to_the_function(lambda_env, conn):
    scene = make_scene(conn)
    payload = {"eventSource": "SelfManagedKafka",
               "records": {"scene.approved-0": [_record("scene.approved", 0, 1, _approval(scene))]}}
    assert lambda_entry.on_scene_approved(payload, None) == {"batchItemFailures": []}
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"


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
