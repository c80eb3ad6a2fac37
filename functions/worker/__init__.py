"""The GPU worker: `tierflow worker serve` (long-lived, warm) and `tierflow worker --job FILE` (one job).

Both claim their jobs from PostgreSQL under a lease and report back with events (see
`functions.worker.serve` and `functions.worker.job`). The one-shot form is for debugging and for
the benchmark's cold mode: it holds its device from its own start, imports and model load included.

Exit status of `serve`: 0 when stopped (signal, --exit-when-idle, --max-jobs), 1 when it could not
go on (database unreachable at start, a bug), 2 bad arguments. Of `--job`: 0 done, 3 failed and
reported, 2 the job document is unreadable, 4 a report could not be written, 5 the job is not
this worker's to run (not queued, or given up on while it ran).
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from events import tracing
from infra.process import age_seconds
from shared import logs
from shared.extras import missing_extra

JOB_FAILED, REPORT_NOT_WRITTEN, NOT_THIS_WORKERS = 3, 4, 5


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _at_least(minimum: float, kind=int):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {'whole number' if kind is int else 'number'}: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is less than {minimum:g}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker's options, on `tierflow worker` and on `python -m functions.worker` alike."""
    from shared.runtime.health import address_argument

    source = parser.add_mutually_exclusive_group()
    source.add_argument("--job", metavar="JOB.json", help="run this one job (a job document file) and exit")
    source.add_argument("--job-json", metavar="JSON", help="run this one job (the job document itself) and exit")
    modes = parser.add_subparsers(dest="worker_mode", metavar="serve", parser_class=type(parser))
    serve = modes.add_parser("serve", help="claim and run queued jobs until stopped, on warm pipelines",
                             description="Claim and run queued generation jobs until stopped, keeping pipelines "
                                         "loaded. SIGTERM: finish or give back the job in hand, then exit 0.")
    serve.add_argument("--concurrency", type=_at_least(1), metavar="N",
                       help="jobs at once (default: one per GPU, 1 on CPU)")
    serve.add_argument("--exit-when-idle", type=_at_least(0, float), metavar="SECONDS",
                       help="exit after this long without a job (AWS Batch, scale to zero; default: never)")
    serve.add_argument("--max-jobs", type=_at_least(1), metavar="N", help="exit after claiming this many jobs")
    serve.add_argument("--models", nargs="+", metavar="MODEL", help="only claim jobs of these models")
    serve.add_argument("--grace", type=_at_least(0, float), default=30.0, metavar="SECONDS",
                       help="on SIGTERM, how long the job in hand may take to finish before it is given back "
                            "(default 30)")
    serve.add_argument("--id", metavar="WORKER_ID", help="this worker's id (default HOST:PID:RANDOM)")
    serve.add_argument("--parent", type=_at_least(1), metavar="PID",
                       help="stop (as on SIGTERM) when process PID is gone: a supervisor's workers never outlive it")
    serve.add_argument("--health-port", metavar="[HOST:]PORT", type=address_argument,
                       help="answer GET /healthz and /readyz on this port (host 127.0.0.1 unless given, "
                            "e.g. 0.0.0.0:8081 in a container)")
    serve.add_argument("--metrics-port", metavar="[HOST:]PORT", type=address_argument,
                       help="answer GET /metrics (Prometheus text; the observability extra) on this port")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tierflow worker", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return parser


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    """Run what the parsed arguments ask for."""
    # A process per job holds its device from its start: starting Python and the imports count.
    started = time.monotonic() - (age_seconds(os.getpid()) or 0.0)
    import psycopg

    from functions.worker.serve import DONE, FAILED, NOT_WRITTEN, Options, Worker
    from shared.adapters import db
    from shared.bootstrap import Deps
    from shared.config import load_settings
    from shared.errors import InvalidInput, TierflowError

    prog = parser.prog if parser else "tierflow worker"
    one_job = args.job or args.job_json
    if bool(one_job) == (args.worker_mode == "serve"):
        print(f"{prog}: error: give either --job FILE, --job-json JSON, or serve (see {prog} --help)", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except TierflowError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return exc.exit_code
    logs.configure(settings.log_format)
    try:
        tracing.start_export("tierflow-worker")
    except ModuleNotFoundError as exc:
        print(f"{prog}: {missing_extra(exc)}", file=sys.stderr)
        return 1
    # A worker stopped mid-transaction (SIGSTOP, a hung host) must not keep its job's row locked
    # past its lease: the lease sweeper skips locked rows.
    deps = Deps(settings, source="urn:tierflow:worker", idle_transaction_timeout=settings.job_lease_seconds)
    try:  # before torch is imported: a worker that cannot reach its database says so at once
        db.with_reconnect(lambda: deps.connect().close(), for_seconds=settings.report_retry_seconds)
    except (psycopg.OperationalError, TierflowError) as exc:
        print(f"{prog}: cannot reach the database: {exc}", file=sys.stderr)
        return 1
    absent = [name for name in ("torch", "diffusers", "transformers") if importlib.util.find_spec(name) is None]
    if absent:  # before a job is claimed, which would then fail
        print(f"{prog}: {missing_extra(ModuleNotFoundError(name=absent[0]))}", file=sys.stderr)
        return 1
    if not one_job:
        return Worker(deps, Options(concurrency=args.concurrency, exit_when_idle=args.exit_when_idle,
                                    max_jobs=args.max_jobs, models=args.models, grace_seconds=args.grace,
                                    worker_id=args.id, parent_pid=args.parent,
                                    health_port=args.health_port, metrics_port=args.metrics_port)).run()
    from functions.worker.job import parse_job

    try:
        document = json.loads(Path(args.job).read_text() if args.job else args.job_json)
        job = parse_job(document)
    except (OSError, ValueError, InvalidInput) as exc:
        print(f"{prog}: cannot read the job: {exc}", file=sys.stderr)
        return 2
    worker = Worker(deps, Options(concurrency=1, max_jobs=1), only_job=job.job_id, document=document,
                    held_since=started)
    if worker.run() != 0:
        return 1
    if not worker.outcomes:
        print(f"{prog}: job {job.job_id} is not queued (taken by another worker, finished, or waiting for its "
              "retry time): nothing to do", file=sys.stderr)
        return NOT_THIS_WORKERS
    [(outcome, detail)] = worker.outcomes
    if outcome == DONE:
        print(json.dumps(detail.model_dump(mode="json")))
        return 0
    return {FAILED: JOB_FAILED, NOT_WRITTEN: REPORT_NOT_WRITTEN}.get(outcome, NOT_THIS_WORKERS)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m functions.worker serve [...] | --job FILE | --job-json JSON`."""
    parser = build_parser()
    return run(parser.parse_args(argv), parser)
