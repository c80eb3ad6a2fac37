"""A worker process: claims queued jobs from PostgreSQL under leases and runs them on warm pipelines.

`tierflow worker serve` runs until it is stopped (or idle for `--exit-when-idle`, or done with
`--max-jobs`); `tierflow worker --job FILE` is the same worker taking one given job and exiting.
Each of its `--concurrency` slots (one per GPU by default, 1 on CPU) claims one job at a time,
preferring jobs of a model it has loaded and of the size it rendered last (no job waits longer
than TIERFLOW_AFFINITY_MAX_WAIT_SECONDS for that), and keeps its loaded pipelines in an LRU cache
(TIERFLOW_WORKER_CACHE_MODELS). Idle slots wake on NOTIFY when a job is queued.

A heartbeat renews the leases of the jobs in hand, writes the worker's row in the register
(shared.domain.fleet) and sweeps the leases of workers that went silent. SIGTERM or SIGINT: no
new claims; a job in hand finishes if it can within the grace period, else it is given back to
the queue; then exit 0. A killed worker gives back nothing: its leases expire.
"""

import os
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass

import psycopg

from events import GenerationFailed
from functions.worker.job import (
    Claim,
    Connection,
    LeaseLost,
    PipelineCache,
    Released,
    ReportNotWritten,
    parse_job,
    run_job,
)
from shared import logs
from shared.adapters import db
from shared.bootstrap import Deps
from shared.domain import fleet, lifecycle
from shared.domain.scenes import job_document
from shared.errors import InvalidInput, ServiceUnavailable
from shared.runtime import drive

JOBS_CHANNEL = "tierflow_jobs"  # notified when a job is queued (migration 0010)
# An idle slot looks at the queue at least this often, for jobs whose backoff ran out.
IDLE_POLL_SECONDS = 1.0
# What became of a job this worker claimed.
DONE, FAILED, LOST, RELEASED, NOT_WRITTEN = "done", "failed", "lost", "released", "not written"
DATABASE_DOWN = (psycopg.OperationalError, ServiceUnavailable)


@dataclass(frozen=True)
class Options:
    concurrency: int | None = None  # None: one slot per GPU, 1 on CPU
    exit_when_idle: float | None = None  # seconds without a job; None: never
    max_jobs: int | None = None
    models: list[str] | None = None  # only claim jobs of these models; None: any
    grace_seconds: float = 30.0
    worker_id: str | None = None
    parent_pid: int | None = None  # stop when this process is gone
    health_port: str | None = None  # "[HOST:]PORT" for /healthz and /readyz
    metrics_port: str | None = None  # "[HOST:]PORT" for /metrics


def default_worker_id() -> str:
    """host:pid:random: readable, and new on every start even where pids repeat (containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


def _devices(concurrency: int | None) -> list[str]:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    slots = concurrency or max(gpus, 1)
    return [f"cuda:{i % gpus}" for i in range(slots)] if gpus else ["cpu"] * slots


class Worker:
    """One worker process: its slots, its heartbeat and its row in the register."""

    def __init__(self, deps: Deps, options: Options, *, only_job: int | None = None, document: dict | None = None,
                 held_since: float | None = None):
        self.deps, self.options = deps, options
        self.settings = deps.settings
        self.id = options.worker_id or default_worker_id()
        # The one-shot form: this job only, from this document, held since the process started.
        self.only_job, self.document, self.held_since = only_job, document, held_since
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self._lock = threading.Lock()
        self.claims = self.jobs_done = 0
        self.outcomes: list[tuple[str, object]] = []
        self.crash: BaseException | None = None
        self.started = time.monotonic()
        self._outage: str | None = None
        devices = _devices(options.concurrency)
        cpu_slots = devices.count("cpu")
        threads = max(1, (os.cpu_count() or 1) // cpu_slots) if cpu_slots > 1 else None
        self.slots = [Slot(self, i, device, PipelineCache(self.settings.worker_cache_models, threads))
                      for i, device in enumerate(devices)]

    # -- the process -------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until stopped, idle or done; 0 on a normal end, 1 when the worker could not go on."""
        try:
            db.with_reconnect(self._register, for_seconds=self.settings.report_retry_seconds)
        except (*DATABASE_DOWN, psycopg.errors.InsufficientPrivilege) as exc:  # a role short of grants too
            self.log(f"cannot register with the database: {exc}")
            return 1
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, self._on_signal)
        from shared.runtime.health import not_ready, serve_metrics, serve_probes

        servers = []
        try:
            if self.options.health_port:
                servers.append(serve_probes(self.options.health_port, lambda: not_ready(self.deps, [self])))
            if self.options.metrics_port:
                servers.append(serve_metrics(self.options.metrics_port, self.deps))
        except ServiceUnavailable as exc:
            self.log(str(exc))
            for server in servers:
                server.shutdown()
            return 1
        try:
            return self._serve()
        finally:
            for server in servers:
                server.shutdown()

    def problem(self) -> str | None:
        """Why this worker takes no work now (for its readiness probe), or None."""
        if self.crash is not None or self.finished.is_set():
            return "worker: stopped"
        if self.stopping.is_set():
            return "worker: stopping"
        return f"worker: database unreachable ({self._outage})" if self._outage else None

    def _serve(self) -> int:
        threads = [threading.Thread(target=s.run, name=f"slot-{s.index}", daemon=True) for s in self.slots]
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        for thread in [*threads, heartbeat]:
            thread.start()
        if not self.only_job:
            self.log(f"serving on {', '.join(s.device for s in self.slots)}"
                     + (f", models {', '.join(self.options.models)}" if self.options.models else ""))
        deadline = None
        while any(t.is_alive() for t in threads):
            if self.options.parent_pid and os.getppid() != self.options.parent_pid and not self.stopping.is_set():
                self.log(f"the supervising process {self.options.parent_pid} is gone; stopping")
                self.stopping.set()
            if self.crash is None and not heartbeat.is_alive():
                self.crash = RuntimeError("the heartbeat stopped")
            if self.crash is not None:
                self.stopping.set()
            if self.stopping.is_set() and deadline is None:
                deadline = time.monotonic() + self.options.grace_seconds
            if deadline is not None and time.monotonic() > deadline:
                for slot in self.slots:
                    slot.cancel = True  # give back at the next step
                if time.monotonic() > deadline + 10:
                    self._give_back_stuck()
                    break
            time.sleep(0.1)
        self.finished.set()
        heartbeat.join(5)
        try:
            db.with_reconnect(lambda: self._record("stopped"), for_seconds=min(10, self.settings.report_retry_seconds))
        except DATABASE_DOWN:
            pass  # it shows as lost instead
        if self.crash is not None:
            self.log(f"stopped: {type(self.crash).__name__}: {self.crash}")
            return 1
        if not self.only_job:
            self.log(f"stopped after {self.jobs_done} job(s)")
        return 0

    def _on_signal(self, signum, _frame) -> None:
        if not self.stopping.is_set():
            self.log(f"{signal.Signals(signum).name}: finishing the job in hand (at most "
                     f"{self.options.grace_seconds:g} s), claiming no more")
        self.stopping.set()

    def _give_back_stuck(self) -> None:
        """Slots still busy after the grace period and the give-back at the next step (a step that
        never ends): give their jobs back from here, then leave them."""
        for slot in self.slots:
            claim = slot.claim
            if claim is None:
                continue
            try:
                with self.deps.uow() as uow:
                    lifecycle.release_job(uow.conn, claim.job_id, self.id)
                self.log(f"job {claim.job_id}: gave it back to the queue (its step did not end)")
            except DATABASE_DOWN as exc:
                self.log(f"job {claim.job_id}: could not give it back ({exc}); its lease will expire")

    def _register(self) -> None:
        with self.deps.uow() as uow:
            fleet.register_worker(uow.conn, self.id, host=socket.gethostname(), pid=os.getpid(),
                                  device=", ".join(sorted({s.device for s in self.slots})),
                                  concurrency=len(self.slots), models=self.options.models or [])

    def _record(self, state: str | None = None) -> None:
        now = time.monotonic()
        busy = sum(s.busy_seconds + (now - s.busy_since if s.busy_since else 0) for s in self.slots)
        in_hand = [s.claim.job_id for s in self.slots if s.claim]
        state = state or ("stopping" if self.stopping.is_set() else "busy" if in_hand else "idle")
        with self.deps.uow() as uow:
            fleet.record_worker(uow.conn, self.id, state=state, job_ids=in_hand,
                                cached_models=sorted({m for s in self.slots for m in s.cache.models}),
                                jobs_done=self.jobs_done, busy_seconds=busy,
                                idle_seconds=max(0.0, len(self.slots) * (now - self.started) - busy))

    # -- the heartbeat -----------------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        beat = max(0.2, min(self.settings.job_lease_seconds / 3, 10.0))
        try:
            while not self.finished.wait(beat):
                try:
                    self._heartbeat()
                    self._database_back()
                except DATABASE_DOWN as exc:
                    self._database_down(f"heartbeat: {exc}")
        except BaseException as exc:  # noqa: BLE001 - a bug: the worker must not go on without leases
            self.crash = exc

    def _heartbeat(self) -> None:
        claims = [s.claim for s in self.slots if s.claim]
        if claims:
            with self.deps.uow() as uow:
                held = set(lifecycle.renew_leases(uow.conn, self.id, [c.job_id for c in claims],
                                                  self.settings.job_lease_seconds))
            for claim in claims:
                claim.lost = claim.lost or claim.job_id not in held
        self._record()
        swept = drive.sweep_lost_jobs(self.deps)
        if swept:
            self.log(drive.lost_jobs_line(swept))

    def _database_down(self, what: str) -> None:
        with self._lock:
            first, self._outage = self._outage is None, what
        if first:
            self.log(f"database unreachable ({what}); retrying")

    def _database_back(self) -> None:
        with self._lock:
            was, self._outage = self._outage, None
        if was:
            self.log("database reachable again")

    # -- tickets for --max-jobs --------------------------------------------------------------

    def take_ticket(self) -> bool:
        with self._lock:
            if self.options.max_jobs is not None and self.claims >= self.options.max_jobs:
                return False
            self.claims += 1
            return True

    def return_ticket(self) -> None:
        with self._lock:
            self.claims -= 1

    def job_ended(self, outcome: str, detail: object) -> None:
        with self._lock:
            self.outcomes.append((outcome, detail))
            if outcome in (DONE, FAILED):
                self.jobs_done += 1

    def log(self, message: str) -> None:
        logs.say(f"tierflow worker {self.id}: {message}")


class Slot:
    """One job at a time on one device, with its own pipelines."""

    def __init__(self, worker: Worker, index: int, device: str, cache: PipelineCache):
        self.worker, self.index, self.device, self.cache = worker, index, device, cache
        self.connection = Connection(worker.deps)  # for its claims and reports
        self.claim: Claim | None = None
        self.busy_since: float | None = None
        self.busy_seconds = 0.0
        self.last_size: tuple[int, int] | None = None
        self.cancel = False

    def run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - a bug: the process stops and says why
            self.worker.crash = exc
        finally:
            self.connection.close()

    def _serve(self) -> None:
        worker = self.worker
        last_busy, pause = time.monotonic(), 0.2
        while not worker.stopping.is_set():
            try:
                with worker.deps.connect() as listen:
                    listen.execute(f"LISTEN {JOBS_CHANNEL}")
                    worker._database_back()
                    pause = 0.2
                    while not worker.stopping.is_set():
                        if not worker.take_ticket():
                            return
                        try:
                            claimed = self._claim()
                        except BaseException:
                            worker.return_ticket()  # nothing was claimed
                            raise
                        if claimed is None:
                            worker.return_ticket()
                            idle = time.monotonic() - last_busy
                            if worker.only_job or (worker.options.exit_when_idle is not None
                                                   and idle >= worker.options.exit_when_idle):
                                return
                            self._wait(listen)
                            continue
                        self._run(*claimed)
                        last_busy = time.monotonic()
            except DATABASE_DOWN as exc:
                worker._database_down(f"slot {self.index}: {exc}")
                worker.stopping.wait(pause)
                pause = min(2 * pause, 5.0)

    def _claim(self) -> tuple[int, dict, float] | None:
        worker, settings = self.worker, self.worker.settings
        with self.connection.transaction() as uow:
            job_id = lifecycle.claim_job(
                uow.conn, worker.id, lease_seconds=settings.job_lease_seconds, models=worker.options.models,
                loaded_models=self.cache.models, last_size=self.last_size,
                affinity_max_wait_seconds=settings.affinity_max_wait_seconds, job_id=worker.only_job)
            if job_id is None:
                return None
            document = worker.document or job_document(uow.conn, job_id)
        # Claimed once committed: from here the heartbeat renews its lease.
        held_since = worker.held_since if worker.only_job else time.monotonic()
        self.claim = Claim(self.connection, job_id, worker.id, cancelled=lambda: self.cancel)
        self.busy_since = held_since
        return job_id, document, held_since

    def _wait(self, listen: psycopg.Connection) -> None:
        due = lifecycle.seconds_until_claimable(listen, self.worker.options.models)
        timeout = IDLE_POLL_SECONDS if due is None else min(max(due, 0.05), IDLE_POLL_SECONDS)
        for _ in listen.notifies(timeout=timeout, stop_after=1):
            pass

    def _run(self, job_id: int, document: dict, held_since: float) -> None:
        worker, claim = self.worker, self.claim
        outcome, detail = FAILED, None
        try:
            try:
                job = parse_job(document)
            except InvalidInput as exc:
                claim.report(GenerationFailed(job_id=job_id, scene_id=document["scene_id"],
                                              segment_id=document["segment_id"], reason=str(exc), retryable=False,
                                              worker_id=worker.id), final=True)
                raise
            completed = run_job(worker.deps, job, claim, device=self.device, pipelines=self.cache,
                                held_since=held_since)
            self.last_size = (job.width, job.height)
            outcome, detail = DONE, completed
            worker.log(f"job {job_id} ({job.tier} {job.width}x{job.height}, scene {job.scene_id}): done, "
                       f"{completed.device_seconds:.2f} s rendering, {completed.held_seconds:.2f} s held, "
                       f"{completed.load_seconds:.2f} s loading")
        except LeaseLost as exc:
            outcome, detail = LOST, exc
            worker.log(f"{exc}; dropped its result")
        except Released as exc:
            outcome, detail = RELEASED, exc
            db.with_reconnect(lambda: self._release(job_id), for_seconds=worker.settings.report_retry_seconds)
            worker.log(f"job {job_id}: gave it back to the queue unfinished (stopping)")
        except ReportNotWritten as exc:
            outcome, detail = NOT_WRITTEN, exc
            worker.log(f"job {job_id}: {exc}; nothing was reported (its lease will expire)")
        except Exception as exc:  # noqa: BLE001 - reported as generation.failed already
            detail = exc
            worker.log(f"job {job_id} failed (reported): {exc}")
        finally:
            self.busy_seconds += time.monotonic() - held_since
            self.claim = self.busy_since = None
            worker.job_ended(outcome, detail)

    def _release(self, job_id: int) -> None:
        with self.connection.transaction() as uow:
            lifecycle.release_job(uow.conn, job_id, self.worker.id)
