"""Dispatchers: where workers run. Jobs wait in PostgreSQL and workers claim them there, so a
dispatcher only makes sure there are workers:

- `LocalDispatcher` (embedded default): TIERFLOW_LOCAL_WORKERS warm `tierflow worker serve`
  processes on this machine while this process needs them, another started when one dies;
- `BatchDispatcher`: AWS Batch worker jobs (`tierflow worker serve --exit-when-idle 300`, the
  job definition's command) with GPU, vCPU and memory requirements, one more whenever the
  unfinished jobs outnumber the worker jobs, up to TIERFLOW_BATCH_MAX_WORKERS.

A dispatcher never changes job state; a worker that dies loses its jobs when their leases expire.
"""

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

from shared import logs
from shared.domain import lifecycle
from shared.errors import ServiceUnavailable

# A local worker that exits within this many seconds of its start, this many times in a row, is
# not restarted again: something is wrong with the setup, not with one job.
QUICK_EXIT_SECONDS, QUICK_EXITS_ALLOWED = 10.0, 5
BATCH_SCALE_LOCK = 5_921_347_014  # one scaling decision at a time (any fixed number)
BATCH_ACTIVE = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING")
BATCH_WORKER_JOB = "tierflow-worker"
# How long a count of active worker jobs may answer "enough already" without asking Batch again.
ACTIVE_COUNT_FRESH_SECONDS = 10.0
# What a worker job runs (the job definition's command, here and in infra/template.yaml): a warm
# worker that leaves, and so frees its instance, after five idle minutes.
BATCH_WORKER_COMMAND = ["tierflow", "worker", "serve", "--exit-when-idle", "300"]
# The longest a worker job may run, busy or not: a worker stuck for good (a GPU hung inside one
# call, its heartbeat still renewing) is ended by Batch, and its job returns through its lease.
BATCH_WORKER_TIMEOUT_SECONDS = 12 * 3600
# How many workers the queue can use: one per job that is queued or held under a lease (a job
# whose result is written needs none). AWS Batch scaling and the KEDA trigger in infra/k8s use it.
JOBS_NEEDING_A_WORKER = ("SELECT count(*) FROM generation_jobs "
                         "WHERE status = 'queued' OR (status = 'running' AND lease_expires_at IS NOT NULL)")


def worker_environment(deps) -> dict[str, str]:
    """The settings a worker process needs, as TIERFLOW_* variables (it may run elsewhere)."""
    settings = deps.settings
    env = {
        "TIERFLOW_HOME": str(settings.home.resolve()),
        "TIERFLOW_DATABASE_URL": deps.database_url,
        "TIERFLOW_S3_BUCKET": settings.s3_bucket,
        "TIERFLOW_AWS_REGION": settings.aws_region,
        "TIERFLOW_MAX_ATTEMPTS": str(settings.max_attempts),
        "TIERFLOW_RETRY_BACKOFF_SECONDS": str(settings.retry_backoff_seconds),
        "TIERFLOW_REPORT_RETRY_SECONDS": str(settings.report_retry_seconds),
        "TIERFLOW_JOB_LEASE_SECONDS": str(settings.job_lease_seconds),
        "TIERFLOW_WORKER_CACHE_MODELS": str(settings.worker_cache_models),
        "TIERFLOW_AFFINITY_MAX_WAIT_SECONDS": str(settings.affinity_max_wait_seconds),
        "TIERFLOW_SIMILARITY_THRESHOLD": str(settings.similarity_threshold),
        "TIERFLOW_TAG_DRAFT_MEDIA": str(settings.tag_draft_media).lower(),
        "TIERFLOW_LOG_FORMAT": settings.log_format,
    }
    if settings.s3_endpoint_url:
        env["TIERFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.kafka_bootstrap:
        env["TIERFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    return env


class LocalWorker:
    """One supervised `tierflow worker serve` process (restarted under a new id when it dies)."""

    def __init__(self, index: int, log_path: Path):
        self.index, self.log_path = index, log_path
        self.process: subprocess.Popen | None = None
        self.worker_id = ""
        self.started = 0.0
        self.quick_exits = 0


class LocalDispatcher:
    """Runs this machine's warm workers for as long as this process needs them."""

    name = "local"

    def __init__(self, deps):
        self.deps, self.grace_seconds = deps, deps.settings.shutdown_grace_seconds
        logs = deps.settings.home.resolve() / "logs"
        self.workers = [LocalWorker(i, logs / f"worker-{i}.log") for i in range(deps.settings.local_workers)]
        self.failure: str | None = None  # why the workers could not be kept running
        self._supervisor: threading.Thread | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()

    def ensure_workers(self, conn: psycopg.Connection | None = None) -> None:
        """Start the workers and their supervisor unless they run already; raises when they keep
        failing at start (the reason is in the message)."""
        if self.failure:
            raise ServiceUnavailable(self.failure)
        with self._lock:
            if self._supervisor is not None or self._closing.is_set():
                return
            for worker in self.workers:
                self._start(worker)
            self._supervisor = threading.Thread(target=self._supervise, name="worker-supervisor", daemon=True)
            self._supervisor.start()

    def _start(self, worker: LocalWorker) -> None:
        worker.log_path.parent.mkdir(parents=True, exist_ok=True)
        worker.worker_id = f"{socket.gethostname()}:{os.getpid()}.{worker.index}:{secrets.token_hex(2)}"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
               **worker_environment(self.deps)}
        with worker.log_path.open("ab") as log:
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "functions.worker", "serve", "--id", worker.worker_id,
                 "--grace", str(self.grace_seconds), "--parent", str(os.getpid())],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)  # a Ctrl-C of this process reaches the workers through close()
        worker.started = time.monotonic()

    def _supervise(self) -> None:
        while not self._closing.wait(0.5):
            for worker in self.workers:
                status = worker.process.poll()
                if status is None or self._closing.is_set():
                    continue
                self._lost(worker, status)
                if self.failure:
                    return

    def _lost(self, worker: LocalWorker, status: int) -> None:
        """A worker exited by itself: end its leases now (it is known to be dead) and start another."""
        try:
            with self.deps.uow() as uow:
                ended = lifecycle.end_leases_of(uow.conn, worker.worker_id)
        except (psycopg.OperationalError, ServiceUnavailable):
            ended = 0  # the leases expire at their time instead
        quick = time.monotonic() - worker.started < QUICK_EXIT_SECONDS
        worker.quick_exits = worker.quick_exits + 1 if quick else 0
        tail = _last_lines(worker.log_path)
        if worker.quick_exits >= QUICK_EXITS_ALLOWED:
            self.failure = (f"local worker {worker.index} exited {worker.quick_exits} times right after starting "
                            f"(last status {status}): {tail} (log: {worker.log_path})")
            logs.say(f"tierflow: {self.failure}")
            return
        print(f"tierflow: local worker {worker.worker_id} exited with status {status}"
              + (f", {ended} job(s) in hand go to their next attempt" if ended else "")
              + "; starting another", file=sys.stderr, flush=True)
        self._closing.wait(min(0.25 * 2 ** worker.quick_exits, 10.0) if quick else 0)
        if not self._closing.is_set():
            self._start(worker)

    def stop(self) -> None:
        """Tell the workers to stop (SIGTERM: they claim nothing more, and finish or give back the
        job in hand within TIERFLOW_SHUTDOWN_GRACE_SECONDS); returns at once."""
        self._closing.set()
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        """Stop the workers and wait for them; one still running after the grace period is killed
        (its leases expire)."""
        self.stop()
        if self._supervisor is not None:
            self._supervisor.join(15)  # it starts no worker once closing is set
        self.stop()  # one it started just before
        processes = [w.process for w in self.workers if w.process is not None]
        deadline = time.monotonic() + self.grace_seconds + 15
        for process in processes:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _last_lines(path: Path, count: int = 3) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(lines[-count:])[-600:] or "(nothing logged)"


def batch_resource_requirements(settings) -> list[dict]:
    """What one worker job asks AWS Batch for: vCPUs, memory and (unless TIERFLOW_BATCH_GPUS=0,
    for CPU-only queues) GPUs. The job definition (infra/deploy.py) and each submission agree."""
    requirements = [{"type": "VCPU", "value": str(settings.batch_vcpus)},
                    {"type": "MEMORY", "value": str(settings.batch_memory_mib)}]
    if settings.batch_gpus:
        requirements.append({"type": "GPU", "value": str(settings.batch_gpus)})
    return requirements


class BatchDispatcher:
    """Scales worker jobs on an AWS Batch GPU job queue to the unfinished generation jobs."""

    name = "batch"

    def __init__(self, deps):
        import boto3

        self.settings = deps.settings
        self.client = boto3.client("batch", endpoint_url=self.settings.batch_endpoint_url,
                                   region_name=self.settings.aws_region)
        self._active: tuple[int, float] | None = None  # worker jobs counted, and when

    def ensure_workers(self, conn: psycopg.Connection) -> int:
        """Submit worker jobs until there is one per unfinished generation job, at most
        TIERFLOW_BATCH_MAX_WORKERS in all; returns how many were submitted."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [BATCH_SCALE_LOCK])
        unfinished = conn.execute(JOBS_NEEDING_A_WORKER).fetchone()["count"]
        target = min(self.settings.batch_max_workers, unfinished)
        # A burst of requests (a 100-segment scene) asks Batch once, not once per job; a count
        # that says "fewer than wanted" is always checked with Batch before anything is submitted.
        if self._active and time.monotonic() - self._active[1] < ACTIVE_COUNT_FRESH_SECONDS \
                and self._active[0] >= target:
            return 0
        active = self.active_workers()
        wanted = target - active
        self._active = (active + max(0, wanted), time.monotonic())
        for _ in range(max(0, wanted)):
            self.client.submit_job(
                jobName=f"{BATCH_WORKER_JOB}-{secrets.token_hex(4)}",
                jobQueue=self.settings.batch_job_queue,
                jobDefinition=self.settings.batch_job_definition,  # runs BATCH_WORKER_COMMAND
                containerOverrides={"resourceRequirements": batch_resource_requirements(self.settings)},
                retryStrategy={"attempts": 1},  # a lost worker's jobs come back through their leases
                tags={"tierflow": "worker"},
            )
        return max(0, wanted)

    def active_workers(self) -> int:
        """Worker jobs on the queue that have not ended (waiting to start or running)."""
        active = 0
        for status in BATCH_ACTIVE:
            pages = self.client.get_paginator("list_jobs").paginate(
                jobQueue=self.settings.batch_job_queue, jobStatus=status)
            active += sum(1 for page in pages for job in page["jobSummaryList"]
                          if job["jobName"].startswith(BATCH_WORKER_JOB))
        return active
