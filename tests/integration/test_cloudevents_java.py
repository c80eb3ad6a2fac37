"""CloudEvents on the wire, by the Kafka protocol binding, against a client of another language:
the CloudEvents Java SDK (tests/java/CloudEventsClient.java) reads every event type Tierflow
relays, and a binary-mode event it sends is applied."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from events import ALL_TOPICS, dlq_topic
from events.codec import parse_event
from functions.handlers.registry import FUNCTIONS
from shared.runtime.kafka_bus import KafkaFunctionRunner, ensure_topics, make_producer, relay_to_kafka
from tests.conftest import make_scene
from tests.integration.test_kafka_runtime import _read_topic, _running, _wait_for

pytestmark = pytest.mark.integration

JAVA_DIR = Path(__file__).resolve().parents[1] / "java"
SAMPLES = Path(__file__).resolve().parents[2] / "events" / "samples"


@pytest.fixture(scope="session")
def java_client(tmp_path_factory) -> list[str]:
    """The command that runs CloudEventsClient, built once: Maven fetches the SDK (into ~/.m2,
    reused by later runs), javac compiles the client."""
    build = tmp_path_factory.mktemp("cloudevents-java")
    fetched = subprocess.run(
        [shutil.which("mvn") or "mvn", "-q", "-B", "-f", str(JAVA_DIR / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={build / 'lib'}"], capture_output=True, text=True, timeout=600)
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    classpath = f"{build / 'classes'}:{build / 'lib'}/*"
    compiled = subprocess.run(["javac", "-d", str(build / "classes"), "-cp", classpath,
                               str(JAVA_DIR / "CloudEventsClient.java")], capture_output=True, text=True, timeout=300)
    assert compiled.returncode == 0, compiled.stderr
    return ["java", "-cp", classpath, "CloudEventsClient"]


def _java(command: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=180)


def test_the_java_sdk_reads_every_event_type_tierflow_relays(kafka_deps, conn, java_client):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    # One event of every type, written to the outbox as a handler would and relayed.
    with kafka_deps.uow() as uow:
        sent = {}
        for topic in ALL_TOPICS:
            _, event = parse_event((SAMPLES / f"{topic}.json").read_bytes())
            sent[topic] = uow.emit(event)
    assert relay_to_kafka(conn, make_producer(bootstrap)) == len(ALL_TOPICS)

    # A plain consumer sees the binding's content-type header on every message.
    plain = KafkaConsumer(*ALL_TOPICS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                          consumer_timeout_ms=3000)
    records = list(plain)
    plain.close()
    assert len(records) == len(ALL_TOPICS)
    assert all(dict(r.headers)["content-type"] == b"application/cloudevents+json" for r in records)

    read = _java(java_client, "read", bootstrap, *ALL_TOPICS)
    assert read.returncode == 0, read.stderr
    lines = [line.split("\t") for line in read.stdout.splitlines()]
    assert sorted((topic, kind, event_id, mode) for topic, kind, _, event_id, mode in lines) == sorted(
        (topic, topic, sent[topic], "structured") for topic in ALL_TOPICS)


def test_a_binary_mode_event_from_the_java_sdk_is_applied_and_a_bad_one_is_dead_lettered(kafka_deps, conn,
                                                                                           java_client):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    scene_id = make_scene(conn)
    sent = _java(java_client, "send-binary", bootstrap, "scene.approved", "scene.approved", str(scene_id),
                 "urn:studio:review-tool", json.dumps({"scene_id": scene_id, "approved_by": "ana"}))
    assert sent.returncode == 0, sent.stderr
    event_id = sent.stdout.strip()
    # The same, with data that is not the event's: dead-lettered with the reason, headers kept.
    bad = _java(java_client, "send-binary", bootstrap, "scene.approved", "scene.approved", str(scene_id),
                "urn:studio:review-tool", json.dumps({"scene": "one"}))
    assert bad.returncode == 0, bad.stderr

    runner = KafkaFunctionRunner(kafka_deps, FUNCTIONS["on_scene_approved"], bootstrap, make_producer(bootstrap))
    with _running(runner) as (outcomes, thread):
        _wait_for(lambda: sum(len(o.applied) + len(o.dead) for o in outcomes) >= 2, thread, "both events")
    [letter] = _read_topic(bootstrap, dlq_topic("scene.approved"), expected=1)
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene_id]).fetchone()["status"] == "approved"
    assert conn.execute("SELECT count(*) AS n FROM processed_events WHERE event_id = %s", [event_id]).fetchone()["n"] == 1
    headers = dict(letter.headers)
    assert headers["ce_specversion"] == b"1.0" and headers["content-type"] == b"application/json"
    assert b"scene_id" in headers["dlq.reason"] and json.loads(letter.value) == {"scene": "one"}
