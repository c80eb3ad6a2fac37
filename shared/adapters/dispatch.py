"""Dispatchers: where a generation job's worker runs. One interface, two places:

- `LocalDispatcher` (embedded default): worker processes on this machine (CPU or a local GPU),
  at most `TIERFLOW_LOCAL_WORKERS` at once;
- `BatchDispatcher`: AWS Batch, one job per segment on a GPU job queue, with GPU, vCPU and
  memory requirements.

Either way the worker reports back with generation.progress / completed / failed events, which
`on_generation_result` applies. A dispatcher only starts work; it never changes job state.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg

from events import GenerationFailed
from infra.process import start_time
from shared.domain import lifecycle
from shared.domain.scenes import job_document

# The worker exits with this status after it reported its own failure as an event.
WORKER_REPORTED_FAILURE = 3


def worker_environment(deps) -> dict[str, str]:
    """The settings a worker process needs, as TIERFLOW_* variables (it may run elsewhere)."""
    settings = deps.settings
    env = {
        "TIERFLOW_HOME": str(settings.home.resolve()),
        "TIERFLOW_DATABASE_URL": deps.database_url,
        "TIERFLOW_S3_BUCKET": settings.s3_bucket,
        "TIERFLOW_AWS_REGION": settings.aws_region,
        "TIERFLOW_REPORT_RETRY_SECONDS": str(settings.report_retry_seconds),
    }
    if settings.s3_endpoint_url:
        env["TIERFLOW_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
    if settings.kafka_bootstrap:
        env["TIERFLOW_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    return env


class LocalDispatcher:
    """Runs each job as `python -m functions.worker --job FILE` on this machine.

    The queue lives in this process. Each job's external id names the process that took it
    ("local:HOST:PID:START:job-N.json"), so that a later process can tell which jobs died with
    their dispatcher (killed, or stopped with jobs waiting) and run them again: `redispatch_orphans`.
    """

    name = "local"

    def __init__(self, deps):
        self.deps = deps
        self.jobs_dir = deps.settings.home.resolve() / "jobs"
        self.pool = ThreadPoolExecutor(max_workers=deps.settings.local_workers, thread_name_prefix="worker")
        self.owner = process_identity(os.getpid())
        self._running = 0
        self._workers: set[subprocess.Popen] = set()
        self._closing = False
        self._lock = threading.Lock()

    def submit(self, job: dict, delay_seconds: float = 0.0) -> str:
        """Queue the job; it starts after `delay_seconds` (retry backoff) when a slot is free."""
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        path = self.jobs_dir / f"job-{job['job_id']}.json"
        path.write_text(json.dumps(job, indent=2))
        with self._lock:
            self._running += 1
        # Counted down when the job ends, or when close() drops it before it started.
        self.pool.submit(self._run, job, path, delay_seconds).add_done_callback(self._ended)
        return f"local:{self.owner}:{path.name}"

    def _ended(self, _future) -> None:
        with self._lock:
            self._running -= 1

    @property
    def busy(self) -> bool:
        """True while a job submitted here is waiting or running."""
        with self._lock:
            return self._running > 0

    def close(self) -> None:
        """Stop without waiting: drop the waiting jobs and stop the running workers. Their jobs
        stay unfinished in the database, for the next process to run again."""
        self._closing = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            workers = list(self._workers)
        for worker in workers:
            worker.terminate()

    def _run(self, job: dict, path: Path, delay_seconds: float) -> None:
        try:
            time.sleep(delay_seconds)
            if self._closing:
                return
            env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
                   **worker_environment(self.deps)}
            worker = subprocess.Popen([sys.executable, "-m", "functions.worker", "--job", str(path)],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            with self._lock:
                self._workers.add(worker)
            if self._closing:  # close() ran while this one was starting
                worker.terminate()
            _, stderr = worker.communicate()
            with self._lock:
                self._workers.discard(worker)
            if self._closing:
                return  # stopped by close(), not failed: the job runs again in the next process
            if worker.returncode not in (0, WORKER_REPORTED_FAILURE):
                # Killed or crashed before it could say why: report it for the worker.
                tail = " ".join((stderr or "").strip().splitlines()[-3:])[-500:]
                self._report_failure(job, f"the worker process exited with status {worker.returncode}: {tail}")
        except Exception as exc:  # noqa: BLE001 - a job must never vanish without a result
            self._report_failure(job, f"the local dispatcher could not run the worker: {exc}")

    def _report_failure(self, job: dict, reason: str) -> None:
        with self.deps.uow() as uow:
            uow.emit(GenerationFailed(job_id=job["job_id"], scene_id=job["scene_id"], segment_id=job["segment_id"],
                                      reason=reason, retryable=True))


def process_identity(pid: int) -> str | None:
    """"HOST:PID:START" of a running process (START tells a reused pid apart); None when it is gone."""
    started = start_time(pid)
    return None if started is None else f"{socket.gethostname()}:{pid}:{started}"


def _orphaned(external_job_id: str | None) -> bool:
    """The job was taken by a local dispatcher of this machine whose process is gone."""
    parts = (external_job_id or "").split(":")
    if len(parts) != 5 or parts[0] != "local" or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False  # another machine's (it may be alive), or not a local job
    return process_identity(int(parts[2])) != ":".join(parts[1:4])


def redispatch_orphans(deps) -> list[int]:
    """Dispatch again, here, the unfinished jobs whose local dispatcher died; returns their ids.

    A worker that outlived its dispatcher may still finish such a job: then the first result
    counts (on_generation_result) and the second run costs only CPU or GPU time.
    """
    with deps.connect() as conn:
        candidates = [r["id"] for r in conn.execute(
            "SELECT id, external_job_id FROM generation_jobs "
            "WHERE dispatcher = 'local' AND status IN ('queued', 'running') ORDER BY id").fetchall()
            if _orphaned(r["external_job_id"])]
    redispatched = []
    for job_id in candidates:
        with deps.uow() as uow:
            row = uow.conn.execute(
                "SELECT external_job_id FROM generation_jobs WHERE id = %s AND status IN ('queued', 'running') "
                "FOR UPDATE", [job_id]).fetchone()
            if row is None or not _orphaned(row["external_job_id"]):
                continue  # finished, or taken by another process meanwhile
            dispatcher = deps.dispatcher
            lifecycle.record_dispatch(uow.conn, job_id, dispatcher.name, dispatcher.submit(job_document(uow.conn, job_id)))
            redispatched.append(job_id)
    return redispatched


def batch_resource_requirements(settings) -> list[dict]:
    """What one worker job asks AWS Batch for: vCPUs, memory and (unless TIERFLOW_BATCH_GPUS=0,
    for CPU-only queues) GPUs. The job definition (infra/deploy.py) and each submission agree."""
    requirements = [{"type": "VCPU", "value": str(settings.batch_vcpus)},
                    {"type": "MEMORY", "value": str(settings.batch_memory_mib)}]
    if settings.batch_gpus:
        requirements.append({"type": "GPU", "value": str(settings.batch_gpus)})
    return requirements


class BatchDispatcher:
    """Submits each job to an AWS Batch GPU job queue."""

    name = "batch"

    def __init__(self, deps):
        import boto3

        settings = deps.settings
        self.settings = settings
        self.client = boto3.client("batch", endpoint_url=settings.batch_endpoint_url, region_name=settings.aws_region)

    def submit(self, job: dict, delay_seconds: float = 0.0) -> str:
        """Submit the job; returns the Batch job id. (Batch has no start delay: its queue is the backoff.)"""
        settings = self.settings
        response = self.client.submit_job(
            jobName=f"tierflow-scene{job['scene_id']}-job{job['job_id']}",
            jobQueue=settings.batch_job_queue,
            jobDefinition=settings.batch_job_definition,
            containerOverrides={
                "command": ["tierflow", "worker", "--job-json", json.dumps(job, separators=(",", ":"))],
                "resourceRequirements": batch_resource_requirements(settings),
            },
            retryStrategy={"attempts": 1},  # Tierflow retries itself, with a new attempt row
            tags={"tierflow-scene": str(job["scene_id"]), "tierflow-job": str(job["job_id"])},
        )
        return response["jobId"]

    def follow(self, conn: psycopg.Connection, emit) -> int:
        """Report Batch jobs that ended without the worker saying so (failed to start, killed).
        Returns how many were reported."""
        rows = conn.execute(
            """SELECT j.id, j.external_job_id, g.id AS segment_id, g.scene_id FROM generation_jobs j
               JOIN segments g ON g.id = j.segment_id
               WHERE j.dispatcher = 'batch' AND j.status IN ('queued', 'running') AND j.external_job_id IS NOT NULL""",
        ).fetchall()
        reported = 0
        for start in range(0, len(rows), 100):  # describe_jobs takes 100 ids at a time
            chunk = {r["external_job_id"]: r for r in rows[start:start + 100]}
            for described in self.client.describe_jobs(jobs=list(chunk))["jobs"]:
                row = chunk[described["jobId"]]
                if described["status"] == "FAILED":
                    reason = f"AWS Batch job {described['jobId']} failed: {described.get('statusReason', 'no reason given')}"
                elif described["status"] == "SUCCEEDED" and not _reported(conn, row["id"]):
                    reason = f"AWS Batch job {described['jobId']} ended without reporting a result"
                else:
                    continue
                emit(GenerationFailed(job_id=row["id"], scene_id=row["scene_id"], segment_id=row["segment_id"],
                                      reason=reason, retryable=True))
                reported += 1
        return reported


def _reported(conn: psycopg.Connection, job_id: int) -> bool:
    # The worker's result may still be on its way to the handler: it is in the outbox already.
    return conn.execute(
        "SELECT 1 FROM outbox WHERE topic IN ('generation.completed', 'generation.failed') "
        "AND payload -> 'data' ->> 'job_id' = %s LIMIT 1",
        [str(job_id)],
    ).fetchone() is not None
