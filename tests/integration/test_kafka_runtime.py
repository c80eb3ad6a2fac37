"""The event runtime on a real Kafka broker and real Postgres: relay, consumer groups, dead letters."""

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from events import SceneApproved, load_schema
from functions.handlers.registry import FUNCTIONS
from shared.runtime.kafka_bus import KafkaFunctionRunner, ensure_topics, make_producer, relay_to_kafka
from tests.conftest import TIERFLOW, database_outage, make_scene

pytestmark = pytest.mark.integration

APPROVALS = FUNCTIONS["on_scene_approved"]


def _plain_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=bootstrap)


def _approval_bytes(scene_id: int, event_id: str | None = None) -> bytes:
    # Built by hand from the JSON Schema's contract, as a producer in another language would.
    return json.dumps({
        "specversion": "1.0", "id": event_id or str(uuid.uuid4()), "source": "urn:studio:review-tool",
        "type": "scene.approved", "subject": str(scene_id), "time": datetime.now(timezone.utc).isoformat(),
        "datacontenttype": "application/json", "data": {"scene_id": scene_id, "schema_version": 1},
    }).encode()


def _run_until_outcomes(runner, seen: list, condition, timeout: float = 60) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop.is_set, lambda f, o: seen.append(o)))
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            assert time.monotonic() < deadline, f"timed out; outcomes so far: {seen}"
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)


def _status(conn, scene_id: int) -> str:
    return conn.execute("SELECT status FROM scenes WHERE id = %s", [scene_id]).fetchone()["status"]


def _read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             consumer_timeout_ms=1000)
    records, deadline = [], time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records += list(consumer)
    finally:
        consumer.close()
    return records


def test_the_sample_matches_the_hand_built_event():
    import jsonschema

    jsonschema.Draft202012Validator(load_schema("scene.approved")).validate(json.loads(_approval_bytes(3)))


def test_an_event_from_a_plain_producer_reaches_its_handler_exactly_once(kafka_deps, conn):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    scenes = [make_scene(conn), make_scene(conn)]
    producer = _plain_producer(bootstrap)
    same_id = str(uuid.uuid4())
    producer.send("scene.approved", key=str(scenes[0]).encode(), value=_approval_bytes(scenes[0], same_id))
    producer.send("scene.approved", key=str(scenes[0]).encode(), value=_approval_bytes(scenes[0], same_id))
    producer.send("scene.approved", key=str(scenes[1]).encode(), value=_approval_bytes(scenes[1]))
    producer.flush()

    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    seen = []
    _run_until_outcomes(runner, seen, lambda: sum(len(o.applied) + len(o.duplicates) for o in seen) >= 3)
    assert [_status(conn, s) for s in scenes] == ["approved", "approved"]
    # Same id twice: one effect; two ids: two effects.
    assert sum(len(o.applied) for o in seen) == 2 and sum(len(o.duplicates) for o in seen) == 1
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 2


def test_a_malformed_event_goes_to_the_dlq_and_the_next_one_is_applied(kafka_deps, conn):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    scene = make_scene(conn)
    producer = _plain_producer(bootstrap)
    producer.send("scene.approved", key=str(scene).encode(), value=b"{this is not json")
    producer.send("scene.approved", key=str(scene).encode(), value=_approval_bytes(scene))
    producer.flush()

    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    _run_until_outcomes(runner, [], lambda: _status(conn, scene) == "approved")
    [letter] = _read_topic(bootstrap, "scene.approved.dlq", 1)
    headers = {k: v.decode() for k, v in letter.headers}
    assert letter.value == b"{this is not json" and letter.key == str(scene).encode()
    assert headers["dlq.reason"].startswith("not JSON")
    assert headers["dlq.topic"] == "scene.approved" and headers["dlq.consumer"] == "on_scene_approved"


def test_a_consumer_killed_between_db_commit_and_offset_commit_loses_and_doubles_nothing(kafka_deps, conn):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    scene = make_scene(conn, auto_upscale_to="production")
    producer = _plain_producer(bootstrap)
    producer.send("scene.approved", key=str(scene).encode(), value=_approval_bytes(scene))
    producer.flush()

    crashed = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))

    def killed_before_offset_commit(*args, **kwargs):
        raise SystemExit("killed")  # the database transaction has committed; the offsets never will

    crashed.consumer.commit_async = killed_before_offset_commit
    with pytest.raises(SystemExit):
        crashed.run(lambda: False)
    assert _status(conn, scene) == "approved"

    restarted = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    seen = []
    _run_until_outcomes(restarted, seen, lambda: bool(seen))
    assert [len(o.duplicates) for o in seen] == [1]  # redelivered, recognised, not applied again
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = 'upscale.requested'").fetchone()["n"] == 1


def test_offsets_are_committed_once_per_interval_while_busy_and_at_once_when_idle(kafka_deps, conn):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    scenes = [make_scene(conn) for _ in range(12)]
    producer = _plain_producer(bootstrap)
    for scene in scenes:
        producer.send("scene.approved", key=str(scene).encode(), value=_approval_bytes(scene))
    producer.flush()

    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap), batch_size=2,
                                 commit_interval=3600)
    commits, commit_async = [], runner.consumer.commit_async

    def recorded_commit(offsets):
        commits.append({tp.partition: meta.offset for tp, meta in offsets.items()})
        return commit_async(offsets)

    runner.consumer.commit_async = recorded_commit
    seen = []
    _run_until_outcomes(runner, seen, lambda: sum(len(o.applied) for o in seen) == 12 and len(commits) == 2)
    assert len(seen) >= 6  # batches of at most 2 records
    # The first batch's offsets at once, then nothing while busy; once idle, everything applied since.
    reader = KafkaConsumer(bootstrap_servers=bootstrap)
    end = reader.end_offsets([TopicPartition("scene.approved", p) for p in range(4)])
    reader.close()
    assert {**commits[0], **commits[1]} == {tp.partition: offset for tp, offset in end.items() if offset}
    assert len(commits[0]) <= 2


def test_a_relay_killed_after_publishing_before_marking_sent_is_deduplicated(kafka_deps, conn):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    scene = make_scene(conn)
    with kafka_deps.uow() as uow:
        uow.emit(SceneApproved(scene_id=scene))
    producer = make_producer(bootstrap)
    # Publish, then "crash" before the mark commits: the outer transaction is rolled back.
    with conn.transaction(force_rollback=True):
        assert relay_to_kafka(conn, producer) == 1
    assert conn.execute("SELECT sent_at FROM outbox").fetchone()["sent_at"] is None
    assert relay_to_kafka(conn, producer) == 1  # the restarted relay publishes it again
    assert conn.execute("SELECT sent_at FROM outbox").fetchone()["sent_at"] is not None
    assert len(_read_topic(bootstrap, "scene.approved", 2)) == 2

    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, producer)
    seen = []
    _run_until_outcomes(runner, seen, lambda: sum(len(o.applied) + len(o.duplicates) for o in seen) >= 2)
    assert sum(len(o.applied) for o in seen) == 1 and sum(len(o.duplicates) for o in seen) == 1
    assert _status(conn, scene) == "approved"


def test_cli_publish_relay_consume_tail_and_sigterm(kafka_deps, conn, run_cli, database_url, tmp_path):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    env = {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_KAFKA_BOOTSTRAP": bootstrap}
    scene = make_scene(conn, auto_upscale_to="production")

    published = run_cli("events", "publish", "scene.approved", "--data", json.dumps({"scene_id": scene}), "--json",
                        env=env)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout)["subject"] == str(scene)

    consume = subprocess.Popen([TIERFLOW, "consume", "on_scene_approved"], env={**_clean_env(tmp_path), **env},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while _status(conn, scene) != "approved":
            assert time.monotonic() < deadline and consume.poll() is None, consume.stderr.read() if consume.poll() else ""
            time.sleep(0.2)
    finally:
        consume.send_signal(signal.SIGTERM)
        out, err = consume.communicate(timeout=60)
    assert consume.returncode == 0, err
    assert "on_scene_approved: applied 1" in out and "consumers stopped" in out

    relay = run_cli("relay", "--once", env=env)
    assert relay.returncode == 0, relay.stderr
    assert "relayed 1 event(s)" in relay.stdout
    tail = run_cli("events", "tail", "upscale.requested", "--from-beginning", "--limit", "1", "--json",
                   "--timeout", "30", env=env)
    assert tail.returncode == 0, tail.stderr
    [line] = tail.stdout.splitlines()
    assert json.loads(line)["data"]["source_scene_id"] == scene


def _clean_env(tmp_path: Path) -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")} | {"TIERFLOW_HOME": str(tmp_path)}


def test_dlq_list_and_replay_after_a_fix(kafka_deps, conn, run_cli, database_url):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    env = {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_KAFKA_BOOTSTRAP": bootstrap}
    producer = _plain_producer(bootstrap)
    producer.send("scene.approved", key=b"77", value=_approval_bytes(77))
    producer.flush()
    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    seen = []
    _run_until_outcomes(runner, seen, lambda: any(o.dead for o in seen))

    listed = run_cli("events", "dlq", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    [letter] = json.loads(listed.stdout)
    assert letter["reason"] == "refused: scene 77 does not exist" and letter["consumer"] == "on_scene_approved"

    make_scene(conn, scene_id=77)  # the fix
    replayed = run_cli("events", "dlq", "--replay", env=env)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
    assert json.loads(run_cli("events", "dlq", "--json", env=env).stdout) == []
    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    _run_until_outcomes(runner, [], lambda: _status(conn, 77) == "approved")


@contextmanager
def _running(runner):
    """The runner in a thread while the block runs; yields its outcomes and the thread, then stops it."""
    seen, stop = [], threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop.is_set, lambda f, o: seen.append(o)))
    thread.start()
    try:
        yield seen, thread
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()


def _wait_for(condition, thread, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        assert thread.is_alive(), f"the runner stopped while waiting for {what}"
        time.sleep(0.1)


def test_a_runner_outlives_a_database_restart_and_applies_each_event_once(kafka_deps, conn, postgres_server):
    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    before, during = make_scene(conn), make_scene(conn)
    producer = _plain_producer(bootstrap)
    producer.send("scene.approved", key=str(before).encode(), value=_approval_bytes(before))
    producer.flush()
    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    with _running(runner) as (seen, thread):
        _wait_for(lambda: _status(conn, before) == "approved", thread, "the first event")
        # PostgreSQL goes away for 2 s (every session cut, new ones refused) while an event arrives.
        with database_outage(postgres_server, conn.info.dbname, conn.info.backend_pid):
            producer.send("scene.approved", key=str(during).encode(), value=_approval_bytes(during))
            producer.flush()
            time.sleep(2)
            assert thread.is_alive()
        _wait_for(lambda: _status(conn, during) == "approved", thread, "the event sent during the outage")
    assert sum(len(o.applied) for o in seen) == 2 and not any(o.dead for o in seen)
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 2


def test_pruning_is_refused_for_a_retention_the_broker_makes_unsafe(kafka_deps, run_cli, database_url):
    ensure_topics(kafka_deps.settings.kafka_bootstrap, 4)
    env = {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_KAFKA_BOOTSTRAP": kafka_deps.settings.kafka_bootstrap}
    refused = run_cli("db", "prune", "--older-than", "1.5", env=env)  # the test broker keeps events a day
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("tierflow: 1.5 days is shorter than the broker keeps events (24 h) plus a "
                                      "day: keep them at least 2 days")
    assert run_cli("db", "prune", "--older-than", "2", env=env).returncode == 0


def test_a_transient_failure_holds_back_its_partition_only_and_is_applied_once_it_passes(kafka_deps, conn):
    from shared.runtime.consumer import Function

    bootstrap = kafka_deps.settings.kafka_bootstrap
    ensure_topics(bootstrap, 4)
    flaky, behind, other = make_scene(conn), make_scene(conn), make_scene(conn)
    storage_down = threading.Event()
    storage_down.set()

    def handle(event, uow, ports):
        if event.scene_id == flaky and storage_down.is_set():
            raise ConnectionResetError("S3 said 503 Slow Down")
        APPROVALS.handle(event, uow, ports)

    producer = _plain_producer(bootstrap)
    for scene, partition in ((flaky, 0), (behind, 0), (other, 1)):
        producer.send("scene.approved", key=str(scene).encode(), value=_approval_bytes(scene), partition=partition)
    producer.flush()
    runner = KafkaFunctionRunner(kafka_deps, Function("approvals", APPROVALS.consumes, handle), bootstrap,
                                 make_producer(bootstrap))
    with _running(runner) as (seen, thread):
        # The other partition goes on; the failing event and the one behind it in its partition wait.
        _wait_for(lambda: _status(conn, other) == "approved", thread, "the other partition")
        _wait_for(lambda: conn.execute("SELECT tries FROM event_failures").fetchone() is not None, thread, "a retry")
        time.sleep(2.5)  # pauses of 1 s, then 2 s: a few tries, none applied
        assert (_status(conn, flaky), _status(conn, behind)) == ("generated", "generated")
        [failure] = conn.execute("SELECT ref, tries, last_error FROM event_failures").fetchall()
        assert failure["ref"] == "scene.approved-0-0" and failure["tries"] >= 2
        assert failure["last_error"] == "ConnectionResetError: S3 said 503 Slow Down"
        storage_down.clear()
        _wait_for(lambda: _status(conn, behind) == "approved", thread, "the held-back partition")
    assert _status(conn, flaky) == "approved"
    assert not any(o.dead for o in seen)
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 3
    assert conn.execute("SELECT count(*) AS n FROM event_failures").fetchone()["n"] == 0
    # Offsets were committed past every event (the clean stop commits): nothing is read again.
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="tierflow.approvals", enable_auto_commit=False)
    committed = {p: consumer.committed(TopicPartition("scene.approved", p)) for p in (0, 1)}
    consumer.close()
    assert committed == {0: 2, 1: 1}


def test_a_runner_survives_a_broker_restart_and_applies_each_event_once(kafka_deps, conn, kafka_broker):
    bootstrap = kafka_broker.bootstrap
    ensure_topics(bootstrap, 4)
    before, after = make_scene(conn), make_scene(conn)
    producer = _plain_producer(bootstrap)
    producer.send("scene.approved", key=str(before).encode(), value=_approval_bytes(before))
    producer.flush()
    producer.close()
    runner = KafkaFunctionRunner(kafka_deps, APPROVALS, bootstrap, make_producer(bootstrap))
    with _running(runner) as (seen, thread):
        _wait_for(lambda: _status(conn, before) == "approved", thread, "the first event")
        kafka_broker.restart()
        producer = _plain_producer(bootstrap)
        producer.send("scene.approved", key=str(after).encode(), value=_approval_bytes(after))
        producer.flush()
        producer.close()
        _wait_for(lambda: _status(conn, after) == "approved", thread, "the event sent after the restart", timeout=120)
    assert not any(o.dead for o in seen)
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 2
