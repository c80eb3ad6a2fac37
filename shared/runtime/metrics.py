"""Prometheus metrics, `tierflow_*`: at GET /metrics on `serve`, on `--metrics-port` for `consume`
and `worker serve` (the `observability` extra, prometheus-client).

Two kinds, on purpose:
- what this process did since it started (events applied, duplicate and dead per function,
  handler latency, consumer lag, the worker's model-cache hits): counters and histograms in
  memory, as Prometheus expects of a process;
- what the database holds (jobs by tier and status, the queue, render and held seconds by tier,
  device-seconds by project and tier, unsent outbox rows, deliveries by outcome): read from
  PostgreSQL at every scrape, so a restarted process reports the same figures.

Without prometheus-client the in-memory recording does nothing, and asking for /metrics says which
extra to install.
"""

import importlib.util
import threading

import psycopg

from shared.adapters import db
from shared.errors import ServiceUnavailable
from shared.extras import missing_extra

# Render and held seconds span a tiny model's 0.1 s to a Production segment's minutes.
SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
HANDLER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_lock = threading.Lock()
_process: dict = {}  # the in-memory metrics, built on first use


def available() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


def _metrics() -> dict | None:
    if _process:
        return _process
    if not available():
        return None
    with _lock:
        if not _process:
            from prometheus_client import Counter, Gauge, Histogram

            _process.update(
                events=Counter("tierflow_events_total", "Events this process's functions received, by outcome "
                               "(applied, duplicate, dead, deferred).", ["function", "outcome"]),
                handler=Histogram("tierflow_handler_seconds", "Time a handler took to apply one event.",
                                  ["function"], buckets=HANDLER_BUCKETS),
                lag=Gauge("tierflow_consumer_lag", "Messages of a partition not yet read by this process's "
                          "consumer (Kafka: end offset - position).", ["function", "topic", "partition"]),
                cache=Counter("tierflow_model_cache_total", "Pipelines a worker needed, by whether its model "
                              "cache had them loaded (hit) or it loaded them (miss).", ["result"]),
            )
    return _process


def record_outcome(function: str, outcome) -> None:
    """Count a committed batch's outcome (shared.runtime.consumer.Outcome)."""
    metrics = _metrics()
    if metrics is None:
        return
    for name, messages in (("applied", outcome.applied), ("duplicate", outcome.duplicates),
                           ("dead", outcome.dead), ("deferred", outcome.deferred)):
        if messages:
            metrics["events"].labels(function, name).inc(len(messages))
    for seconds in outcome.handler_seconds:
        metrics["handler"].labels(function).observe(seconds)


def record_lag(function: str, topic: str, partition: int, lag: int) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics["lag"].labels(function, topic, str(partition)).set(lag)


def record_cache(hit: bool) -> None:
    metrics = _metrics()
    if metrics is not None:
        metrics["cache"].labels("hit" if hit else "miss").inc()


class StoredState:
    """A prometheus-client collector of what the database holds, read at each scrape."""

    def __init__(self, deps):
        self.deps = deps

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        try:
            with db.connect(self.deps.database_url, connect_timeout=5) as conn:
                rows = _stored_state(conn)
        except (psycopg.Error, ServiceUnavailable):
            rows = None
        up = GaugeMetricFamily("tierflow_database_up", "Whether the last scrape could read the database.")
        up.add_metric([], 0 if rows is None else 1)
        yield up
        if rows is None:
            return

        outbox = GaugeMetricFamily("tierflow_outbox_unsent", "Outbox events not yet relayed.")
        outbox.add_metric([], rows["outbox"]["unsent"])
        yield outbox
        oldest = GaugeMetricFamily("tierflow_outbox_oldest_unsent_seconds", "Age of the oldest unrelayed event.")
        oldest.add_metric([], rows["outbox"]["oldest"] or 0.0)
        yield oldest

        jobs = GaugeMetricFamily("tierflow_jobs", "Generation jobs (attempts) by tier and status.",
                                 labels=["tier", "status"])
        for row in rows["jobs"]:
            jobs.add_metric([row["tier"], row["status"]], row["n"])
        yield jobs
        depth = GaugeMetricFamily("tierflow_queue_depth", "Queued jobs, by tier.", labels=["tier"])
        wait = GaugeMetricFamily("tierflow_queue_oldest_wait_seconds",
                                 "How long the oldest claimable queued job of a tier has waited.", labels=["tier"])
        for row in rows["queue"]:
            depth.add_metric([row["tier"]], row["n"])
            wait.add_metric([row["tier"]], row["oldest"] or 0.0)
        yield depth
        yield wait

        for name, column, text in (
                ("tierflow_render_seconds", "device_seconds", "Render seconds of succeeded jobs, by tier."),
                ("tierflow_held_seconds", "held_seconds",
                 "Seconds workers held their device for a job (load, render, encode, upload), by tier.")):
            histogram = HistogramMetricFamily(name, text, labels=["tier"])
            for tier, (buckets, total) in rows["histograms"][column].items():
                histogram.add_metric([tier], buckets, sum_value=total)
            yield histogram

        device = CounterMetricFamily("tierflow_device_seconds", "Render seconds, by project and tier.",
                                     labels=["project", "tier"])
        for row in rows["device"]:
            device.add_metric([row["project"], row["tier"]], row["seconds"])
        yield device

        deliveries = GaugeMetricFamily("tierflow_deliveries", "Deliveries by outcome.", labels=["status"])
        for row in rows["deliveries"]:
            deliveries.add_metric([row["status"]], row["n"])
        yield deliveries


def _stored_state(conn: psycopg.Connection) -> dict:
    tier_of_job = ("FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id "
                   "JOIN resolution_tiers t ON t.id = s.resolution_tier_id")
    state = {
        "outbox": conn.execute(
            """SELECT count(*) AS unsent, EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest
               FROM outbox WHERE sent_at IS NULL""").fetchone(),
        "jobs": conn.execute(f"SELECT t.name AS tier, j.status, count(*) AS n {tier_of_job} GROUP BY 1, 2").fetchall(),
        "queue": conn.execute(
            f"""SELECT t.name AS tier, count(*) AS n,
                       EXTRACT(EPOCH FROM now() - min(j.not_before) FILTER (WHERE j.not_before <= now()))::float8
                           AS oldest
                {tier_of_job} WHERE j.status = 'queued' GROUP BY 1""").fetchall(),
        "device": conn.execute(
            f"""SELECT p.name AS project, t.name AS tier, COALESCE(sum(j.device_seconds), 0)::float8 AS seconds
                {tier_of_job} JOIN projects p ON p.id = s.project_id
                WHERE j.device_seconds IS NOT NULL GROUP BY 1, 2""").fetchall(),
        "deliveries": conn.execute("SELECT status, count(*) AS n FROM deliveries GROUP BY 1").fetchall(),
        "histograms": {},
    }
    for column in ("device_seconds", "held_seconds"):
        counts = ", ".join(f"count(*) FILTER (WHERE j.{column} <= {bound})" for bound in SECONDS_BUCKETS)
        per_tier = {}
        for row in conn.execute(
                f"""SELECT t.name AS tier, ARRAY[{counts}, count(*)] AS buckets, sum(j.{column})::float8 AS total
                    {tier_of_job} WHERE j.status = 'succeeded' AND j.{column} IS NOT NULL GROUP BY 1""").fetchall():
            bounds = [str(float(b)) for b in SECONDS_BUCKETS] + ["+Inf"]
            per_tier[row["tier"]] = (list(zip(bounds, row["buckets"])), row["total"])
        state["histograms"][column] = per_tier
    return state


_stored: list[StoredState] = []  # one database collector per process, registered once


def exposition(deps) -> tuple[bytes, str]:
    """The Prometheus text of this process's metrics and the database's state, with its content type."""
    if not available():
        raise ServiceUnavailable(f"/metrics {missing_extra(ModuleNotFoundError(name='prometheus_client'))}")
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    _metrics()
    with _lock:
        if not _stored:
            _stored.append(StoredState(deps))
            REGISTRY.register(_stored[0])
        _stored[0].deps = deps  # the database of whoever asks (one per process, but tests have many)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
