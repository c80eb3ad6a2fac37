"""The native Kafka launcher (infra.kafka) against a real single-node KRaft broker: one broker per
module (starting a JVM costs seconds), topics created and messages round-tripped with kafka-python,
then a clean stop. The jars come from the launcher's cache (fetched with Maven on first use)."""

import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
from collections import defaultdict

import pytest

with warnings.catch_warnings():
    # kafka-python 3 loads its protocol schemas at import with importlib.resources' legacy API
    # (its issue, not ours): ~200 DeprecationWarnings that would bury the test summary.
    warnings.simplefilter("ignore", DeprecationWarning)
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.serializer import DefaultSerializer

from infra import kafka as launcher

pytestmark = pytest.mark.integration

PYTHON = sys.executable


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    started = launcher.start_broker(tmp_path_factory.mktemp("kafka"))
    yield started
    started.stop()  # idempotent: test_stop may have stopped it already


def _port_of(bootstrap: str) -> int:
    host, port = bootstrap.rsplit(":", 1)
    assert host == "127.0.0.1"
    return int(port)


def test_broker_listens_on_loopback_only(broker):
    props = dict(line.split("=", 1) for line in (broker.data_dir / "server.properties").read_text().splitlines())
    assert props["advertised.listeners"] == f"PLAINTEXT://{broker.bootstrap}"
    for listener in props["listeners"].split(","):
        assert "//127.0.0.1:" in listener
    assert broker.is_running() and broker.returncode is None


def test_keyed_messages_round_trip_in_order(broker):
    topic = "t-" + uuid.uuid4().hex[:8]
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])
        [described] = admin.describe_topics([topic])
        assert len(described["partitions"]) == 4
    finally:
        admin.close()

    keys = [f"key-{i}" for i in range(10)]
    sent = [(keys[n % len(keys)], n // len(keys)) for n in range(100)]  # 10 keys x seq 0..9
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=True, acks="all",
                             key_serializer=DefaultSerializer(), value_serializer=DefaultSerializer())
    try:
        for key, seq in sent:
            producer.send(topic, key=key, value=str(seq))
        producer.flush(timeout=30)
    finally:
        producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id="g-" + topic,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             key_deserializer=DefaultSerializer(), value_deserializer=DefaultSerializer())
    received: dict[str, list[int]] = defaultdict(list)
    partitions_of: dict[str, set[int]] = defaultdict(set)
    count = 0
    try:
        deadline = time.monotonic() + 60
        while count < len(sent) and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=1000).values():
                for record in records:
                    received[record.key].append(int(record.value))
                    partitions_of[record.key].add(record.partition)
                    count += 1
        consumer.commit()
    finally:
        consumer.close()

    assert count == len(sent)
    assert sorted(received) == keys
    for key in keys:
        assert received[key] == list(range(10)), key  # per-key order kept
        assert len(partitions_of[key]) == 1, key  # a key always maps to one partition
    # The keys spread over more than one of the 4 partitions.
    assert len(set().union(*partitions_of.values())) > 1


def test_second_fetch_reuses_the_cache_without_maven(broker, monkeypatch):
    def no_maven(*args, **kwargs):
        raise AssertionError("fetch_kafka ran Maven although the jars are cached")

    monkeypatch.setattr(launcher, "_run_maven", no_maven)
    classpath = launcher.fetch_kafka()
    cache_dir = launcher.default_cache_dir()
    assert classpath == (cache_dir / launcher.MARKER).read_text().strip()
    # The running broker was started with exactly this classpath.
    with open(f"/proc/{broker.pid}/cmdline", "rb") as f:
        assert classpath.encode() in f.read().split(b"\0")
    assert any(jar.endswith(f"kafka_2.13-{launcher.DEFAULT_VERSION}.jar") for jar in classpath.split(os.pathsep))


def test_fetch_cli_prints_the_cache_dir(broker):
    # The fixture has fetched already, so this only reads the marker.
    done = subprocess.run([PYTHON, "-m", "infra.kafka", "fetch"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(launcher.default_cache_dir())


def test_stop_shuts_down_cleanly_and_frees_the_port(broker):
    port = _port_of(broker.bootstrap)
    broker.stop()
    assert not broker.is_running()
    assert broker.returncode == 143  # the JVM's exit after a SIGTERM-triggered clean shutdown, not SIGKILL
    with pytest.raises(ProcessLookupError):
        os.kill(broker.pid, 0)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert "[BrokerServer id=1] shut down completed" in broker.log_file.read_text(errors="replace")
    broker.stop()  # idempotent
    assert broker.returncode == 143
