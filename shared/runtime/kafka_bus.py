"""The Kafka runtime: the outbox relay (idempotent producer) and one consumer group per function.

Guarantees, and how:
- per-key order: one relay at a time (advisory lock) publishes in outbox order with the
  idempotent producer, which keeps order per partition across retries;
- nothing lost: an outbox row is marked sent only after the broker acknowledged it; a consumer
  commits offsets only after its Postgres transaction committed;
- nothing doubled: a relay killed between publish and mark publishes again, a consumer killed
  between its commit and the offset commit is redelivered, and `processed_events` turns both
  into no-ops;
- poison messages never block a partition: they go to `<topic>.dlq` with the reason and the
  original bytes, and the offset moves on;
- a transient failure holds back its partition only: the runner seeks back to the deferred event,
  pauses that partition until its retry time and keeps consuming the others.
"""

import logging
import time
from collections.abc import Callable, Sequence

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import OffsetAndMetadata

from events import ALL_TOPICS, dlq_topic
from events.topics import STRUCTURED_HEADERS
from shared.runtime import metrics
from shared.runtime.consumer import Function, Message, Outcome, RetryPolicy, apply_batch, retry_policy
from shared.runtime.dead_letters import send_to_kafka
from shared.runtime.outbox import lock_unsent, mark_sent
from shared.runtime.supervise import Supervised

log = logging.getLogger(__name__)

def consumer_group(function_name: str) -> str:
    return f"tierflow.{function_name}"


def make_producer(bootstrap: str) -> KafkaProducer:
    """An idempotent producer: retries never duplicate or reorder a partition's messages."""
    return KafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=True, acks="all", linger_ms=5, retries=10,
        max_in_flight_requests_per_connection=5,
    )


def ensure_topics(bootstrap: str, partitions: int, topics: Sequence[str] | None = None) -> None:
    """Create every event topic and its dead-letter topic unless they exist."""
    names = list(topics or ALL_TOPICS)
    names += [dlq_topic(t) for t in names]
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        missing = [n for n in names if n not in set(admin.list_topics())]
        for name in missing:
            try:
                admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
            except TopicAlreadyExistsError:
                pass  # created meanwhile by another process
    finally:
        admin.close()


def longest_retention_seconds(bootstrap: str) -> float | None:
    """The longest any event topic keeps events on the broker (None: forever)."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        answer = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, configs={"retention.ms": None}) for topic in ALL_TOPICS],
            config_filter="all")
    finally:
        admin.close()
    values = [int(entry["value"]) for topics in answer.values() for configs in topics.values()
              for name, entry in configs.items() if name == "retention.ms"]
    if not values:
        raise RuntimeError(f"the broker did not say how long its topics keep events: {answer!r}")
    return None if any(v < 0 for v in values) else max(values) / 1000


def relay_to_kafka(conn: psycopg.Connection, producer: KafkaProducer, limit: int = 1000, timeout: float = 30) -> int:
    """Publish unsent outbox events in order and mark them sent; returns how many."""
    with conn.transaction():
        rows = lock_unsent(conn, limit, "id, topic, message_key, payload::text AS payload")
        if not rows:
            return 0
        futures = [
            producer.send(r["topic"], key=r["message_key"].encode(), value=r["payload"].encode(),
                          headers=STRUCTURED_HEADERS)
            for r in rows
        ]
        producer.flush(timeout=timeout)
        for future in futures:
            future.get(timeout=timeout)  # raises if the broker refused: nothing is marked sent
        mark_sent(conn, [r["id"] for r in rows])
    return len(rows)


class KafkaFunctionRunner:
    """Runs one function as a member of its consumer group."""

    def __init__(self, deps, function: Function, bootstrap: str, producer: KafkaProducer,
                 retry: RetryPolicy | None = None, batch_size: int = 500, commit_interval: float = 1.0,
                 instance_id: str | None = None):
        """`instance_id`: a stable name of this process (Kafka static membership): restarted under
        the same name, it takes its partitions back at once instead of after a rebalance."""
        self.deps = deps
        self.function = function
        self.producer = producer
        self.retry = retry or retry_policy(deps.settings)
        self.supervised = Supervised(f"consumer {function.name}")
        self._paused: dict[TopicPartition, float] = {}  # held back after a deferral, until time.monotonic()
        self.commit_interval = commit_interval
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}  # applied, offsets not yet committed
        self._committed_at = float("-inf")  # time.monotonic() of the last offset commit
        self.consumer = KafkaConsumer(
            *function.consumes,
            bootstrap_servers=bootstrap,
            group_id=consumer_group(function.name),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=batch_size,
            session_timeout_ms=int(deps.settings.kafka_session_timeout_seconds * 1000),
            heartbeat_interval_ms=int(deps.settings.kafka_session_timeout_seconds * 1000 / 3),
            group_instance_id=f"{instance_id}.{function.name}" if instance_id else None,
        )

    def run(self, should_stop: Callable[[], bool], on_outcome: Callable[[Function, Outcome], None] | None = None):
        """Poll, apply, dead-letter, commit offsets — until `should_stop()`; then leave the group.
        Outlives outages of PostgreSQL and Kafka (shared.runtime.supervise); a bug is raised."""
        supervised = self.supervised
        stopped = False
        try:
            supervised.run(lambda: self._serve(should_stop, on_outcome, supervised), should_stop)
            stopped = True
        finally:
            if stopped:
                try:
                    self.consumer.commit()  # a clean stop leaves every applied offset committed
                except KafkaError as exc:  # what is not committed is redelivered, and is a no-op
                    log.warning("%s: offsets not committed at stop: %s", self.function.name, exc)
            self.consumer.close()

    def _serve(self, should_stop, on_outcome, supervised: Supervised) -> None:
        with self.deps.connect() as conn:
            while not should_stop():
                self._resume_due()
                batch = self.consumer.poll(timeout_ms=200)
                if not batch:
                    self._commit_offsets()  # idle: what was applied is committed now
                    supervised.cycle()
                    continue
                try:
                    outcome = self._apply(conn, batch)
                except BaseException:
                    # Not applied (or its dead letters not sent): from the batch's first offsets again.
                    for partition, records in batch.items():
                        self.consumer.seek(partition, records[0].offset)
                    raise
                supervised.cycle()
                if on_outcome:
                    on_outcome(self.function, outcome)

    def _apply(self, conn, batch: dict[TopicPartition, list]) -> Outcome:
        messages = [
            Message(r.topic, r.value if r.value is not None else b"", r.key, headers=tuple(r.headers or ()),
                    partition=r.partition, offset=r.offset)
            for records in batch.values() for r in records
        ]
        # 1. effects and processed_events, one transaction for the whole batch
        with conn.transaction():
            outcome = apply_batch(conn, self.deps.ports, self.function, messages, self.retry)
        metrics.record_outcome(self.function.name, outcome)
        for partition in batch:
            end = self.consumer.highwater(partition)
            if end is not None:
                metrics.record_lag(self.function.name, partition.topic, partition.partition,
                                   max(0, end - self.consumer.position(partition)))
        # 2. dead letters, acknowledged by the broker before the offsets move past them
        if outcome.dead:
            send_to_kafka(self.producer, self.function.name, outcome.dead)
        # 3. a partition with a deferred event is read again from there, after its pause
        held_back = self._hold_back(outcome)
        # 4. offsets: at most once per commit_interval while busy (a commit per batch would be a
        # broker request per batch, hundreds a second under moderate load), without waiting for
        # the broker (a blocking commit costs ~9 ms). Events applied but not yet committed are
        # redelivered after a crash or a rebalance, and processed_events turns them into no-ops.
        self._uncommitted.update({
            partition: OffsetAndMetadata(held_back.get(partition, records[-1].offset + 1), "", -1)
            for partition, records in batch.items()
        })
        if time.monotonic() - self._committed_at >= self.commit_interval:
            self._commit_offsets()
        return outcome

    def _hold_back(self, outcome: Outcome) -> dict[TopicPartition, int]:
        """Seek each partition with a deferred event back to it and pause the partition until the
        event's retry time; returns those partitions' first offsets not done."""
        first: dict[TopicPartition, int] = {}
        for message in outcome.not_done:
            first.setdefault(TopicPartition(message.topic, message.partition), message.offset)
        pauses = {TopicPartition(m.topic, m.partition): pause for m, _, pause in outcome.deferred}
        for partition, offset in first.items():
            self.consumer.seek(partition, offset)
            self.consumer.pause(partition)
            self._paused[partition] = time.monotonic() + pauses.get(partition, 1.0)
        return first

    def _resume_due(self) -> None:
        now, assigned = time.monotonic(), self.consumer.assignment()
        due = [p for p, at in self._paused.items() if at <= now or p not in assigned]
        for partition in due:
            del self._paused[partition]
        if due := [p for p in due if p in assigned]:
            self.consumer.resume(*due)

    def _commit_offsets(self) -> None:
        if self._uncommitted:
            self.consumer.commit_async(self._uncommitted)
            self._uncommitted = {}
            self._committed_at = time.monotonic()
