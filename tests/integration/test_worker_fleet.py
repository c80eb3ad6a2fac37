"""Warm workers and leased jobs, with real worker processes, PostgreSQL, the S3 server and the tiny
model: one warm worker generates a scene loading its model once; a killed worker's job goes to the
next attempt and the supervisor replaces the worker; a hung worker that comes back after its lease
touches nothing; two workers never run one job twice; SIGTERM finishes or gives back the job in
hand; bad arguments and a worker that cannot start are refused with the reason."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra import embedded
from shared.adapters.dispatch import LocalDispatcher, worker_environment
from shared.domain import fleet, scenes
from shared.domain.recipe import SegmentSpec
from shared.runtime import drive
from tests.conftest import generation_deps, wait_for_scene

pytestmark = pytest.mark.integration

# Long enough (about a tenth of a second per step here) to be caught mid-render.
LONG = [SegmentSpec(prompt="a slow red fox", seed=3, frames=2, steps=80)]
QUICK = SegmentSpec(prompt="a quick fox", seed=1, frames=1, steps=1)


@pytest.fixture
def fleet_deps(database_url, tmp_path, tiny_model):
    """Short leases so that a lost worker is noticed in seconds; three attempts per job."""
    home = tmp_path / "home"
    deps = generation_deps(database_url, home, tiny_model, job_lease_seconds=2, max_attempts=3, local_workers=1)
    yield deps
    deps.close()
    embedded.stop(home)


def _serve(deps, tmp_path, *args: str) -> tuple[subprocess.Popen, object]:
    """A `worker serve` process of the test's own (no supervisor); returns it and its log path."""
    log = tmp_path / f"worker-{time.monotonic_ns()}.log"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}, **worker_environment(deps)}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "functions.worker", "serve", *args], env=env,
                                   stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    return process, log


def _until(condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def _mid_render(conn, attempt: int = 1) -> dict:
    """Wait until the segment's attempt is claimed and its worker has reported a step."""
    def rendering():
        return conn.execute(
            """SELECT j.* FROM generation_jobs j WHERE j.attempt = %s AND j.status = 'running' AND EXISTS (
                   SELECT 1 FROM outbox WHERE topic = 'generation.progress'
                   AND (payload -> 'data' ->> 'job_id')::bigint = j.id)""", [attempt]).fetchone()
    return _until(rendering, f"attempt {attempt} to be rendering")


def test_a_six_segment_draft_is_generated_by_one_warm_worker(run_cli, database_url, tiny_model, tmp_path):
    prompts = [arg for i in range(6) for arg in ("--prompt", f"shot {i}", "--frames", "2", "--steps", "2")]
    env = {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_MODEL": tiny_model}
    try:
        done = run_cli("jobs", "submit", "--project", "p", "--scene", "six", "--aspect", "16:9", *prompts, "--wait",
                       "--json", env=env)
        assert done.returncode == 0, done.stderr
        jobs = [segment["job"] for segment in json.loads(done.stdout)["segments"]]
        assert len(jobs) == 6 and {job["status"] for job in jobs} == {"succeeded"}
        assert len({job["worker_id"] for job in jobs}) == 1  # one warm worker
        assert sum(job["load_seconds"] == 0 for job in jobs) >= 5  # loaded once
        assert all(job["held_seconds"] >= job["render_seconds"] > 0 for job in jobs)
        listed = json.loads(run_cli("workers", "list", "--all", "--json", env=env).stdout)
        assert [(w["worker_id"], w["jobs_done"], w["state"]) for w in listed] == [(jobs[0]["worker_id"], 6, "stopped")]
        assert listed[0]["busy_seconds"] >= sum(job["held_seconds"] for job in jobs) - 0.1
        assert listed[0]["cached_models"] == ["tiny"]  # catalogue names
    finally:
        embedded.stop(tmp_path / "home")


def test_a_killed_worker_loses_its_job_to_the_next_attempt_and_is_replaced(fleet_deps, conn):
    scene_id = scenes.submit_scene(fleet_deps, project="p", name="s", aspect="16:9", segments=LONG)
    dispatcher = fleet_deps.dispatcher
    dispatcher.ensure_workers()
    first = _mid_render(conn)
    [worker] = dispatcher.workers
    killed_pid, killed_id = worker.process.pid, worker.worker_id
    assert first["worker_id"] == killed_id
    worker.process.kill()

    scene = wait_for_scene(fleet_deps, scene_id)
    assert scene["status"] == "generated"
    [segment] = scene["segments"]
    lost, done = segment["attempts"]
    assert (lost["attempt"], lost["status"], lost["worker_id"]) == (1, "failed", killed_id)
    assert lost["error"].startswith("worker lost: lease expired, last heard at ")
    assert (done["attempt"], done["status"]) == (2, "succeeded")
    assert done["worker_id"] == worker.worker_id != killed_id and worker.process.pid != killed_pid


def test_a_hung_worker_back_after_its_lease_expired_changes_nothing(fleet_deps, conn, tmp_path):
    scene_id = scenes.submit_scene(fleet_deps, project="p", name="s", aspect="16:9", segments=LONG)
    hung, hung_log = _serve(fleet_deps, tmp_path, "--id", "hung")
    try:
        first = _mid_render(conn)
        hung.send_signal(signal.SIGSTOP)
        time.sleep(fleet_deps.settings.job_lease_seconds + 2)  # its lease, and the idle-transaction timeout, run out
        state = conn.execute("SELECT status, lease_expires_at, now() AS now, heard_at, progress FROM generation_jobs").fetchall()
        assert drive.sweep_lost_jobs(fleet_deps) == [first["id"]], (state, hung_log.read_text())
        fresh, _ = _serve(fleet_deps, tmp_path, "--id", "fresh", "--max-jobs", "1")
        assert fresh.wait(120) == 0
        second = conn.execute("SELECT * FROM generation_jobs WHERE attempt = 2").fetchone()
        assert second["worker_id"] == "fresh"
        bucket = fleet_deps.bucket
        newer_key = scenes.job_document(conn, second["id"])["output_prefix"] + "video.mp4"
        newer = fleet_deps.s3.get_object(Bucket=bucket, Key=newer_key)["Body"].read()

        hung.send_signal(signal.SIGCONT)
        _until(lambda: "dropped its result" in hung_log.read_text(), "the hung worker to give up its job", 30)
    finally:
        hung.send_signal(signal.SIGCONT)
        hung.terminate()
        hung.wait(60)
    scene = wait_for_scene(fleet_deps, scene_id)
    [segment] = scene["segments"]
    assert [(a["attempt"], a["status"], a["worker_id"]) for a in segment["attempts"]] == [
        (1, "failed", "hung"), (2, "succeeded", "fresh")]
    assert segment["attempts"][0]["error"].startswith("worker lost: lease expired")
    # The late finisher wrote nothing: not under its own prefix, not over the newer attempt's files.
    prefix = scenes.job_document(conn, first["id"])["output_prefix"]
    assert fleet_deps.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []) == []
    assert segment["outputs"]["video"] == newer_key
    assert fleet_deps.s3.get_object(Bucket=bucket, Key=newer_key)["Body"].read() == newer
    reports = [r["payload"]["data"].get("worker_id") for r in conn.execute(
        "SELECT payload FROM outbox WHERE topic = 'generation.completed'")]
    assert reports == ["fresh"]


def test_two_workers_claim_twenty_jobs_exactly_once(fleet_deps, conn, tmp_path):
    scene_id = scenes.submit_scene(fleet_deps, project="p", name="many", aspect="1:1", segments=[QUICK] * 20)
    workers = [_serve(fleet_deps, tmp_path, "--id", name, "--exit-when-idle", "2")[0] for name in ("one", "two")]
    assert [w.wait(300) for w in workers] == [0, 0]
    scene = wait_for_scene(fleet_deps, scene_id)
    assert scene["status"] == "generated"
    assert [len(s["attempts"]) for s in scene["segments"]] == [1] * 20
    completed = [r["job_id"] for r in conn.execute(
        "SELECT (payload -> 'data' ->> 'job_id')::bigint AS job_id FROM outbox WHERE topic = 'generation.completed'")]
    assert sorted(completed) == sorted(s["job"]["job_id"] for s in scene["segments"])  # each once
    listed = fleet.list_workers(conn, silent_after_seconds=60, everyone=True)
    assert sorted(w["worker_id"] for w in listed) == ["one", "two"]
    assert sum(w["jobs_done"] for w in listed) == 20 and {w["state"] for w in listed} == {"stopped"}


def test_sigterm_gives_back_a_job_the_grace_period_cannot_cover(fleet_deps, conn, tmp_path):
    scenes.submit_scene(fleet_deps, project="p", name="s", aspect="16:9", segments=LONG)
    worker, log = _serve(fleet_deps, tmp_path, "--id", "leaving", "--grace", "0")
    job = _mid_render(conn)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0
    after = conn.execute("SELECT * FROM generation_jobs WHERE id = %s", [job["id"]]).fetchone()
    assert (after["status"], after["attempt"], after["worker_id"], after["lease_expires_at"]) == (
        "queued", 1, None, None)
    assert "gave it back to the queue" in log.read_text()
    assert conn.execute("SELECT state FROM workers WHERE id = 'leaving'").fetchone()["state"] == "stopped"


def test_sigterm_lets_the_job_in_hand_finish_within_the_grace_period(fleet_deps, conn, tmp_path):
    scene_id = scenes.submit_scene(fleet_deps, project="p", name="s", aspect="16:9",
                                   segments=[SegmentSpec(prompt="a fox", seed=3, frames=2, steps=30)])
    worker, _ = _serve(fleet_deps, tmp_path, "--id", "finisher", "--grace", "120")
    _mid_render(conn)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(120) == 0
    assert wait_for_scene(fleet_deps, scene_id)["segments"][0]["job"]["worker_id"] == "finisher"


@pytest.mark.parametrize(("args", "message"), [
    (["serve", "--concurrency", "0"], "argument --concurrency: 0 is less than 1"),
    (["serve", "--exit-when-idle", "-1"], "argument --exit-when-idle: -1 is less than 0"),
    (["serve", "--max-jobs", "many"], "argument --max-jobs: invalid whole number: 'many'"),
    (["serve", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "give either --job FILE, --job-json JSON, or serve"),
    (["--job", "x.json", "serve"], "give either --job FILE, --job-json JSON, or serve"),
])
def test_bad_worker_arguments_are_refused_in_one_line(run_cli, args, message):
    for command in (["worker", *args], None):
        done = (run_cli(*command) if command else
                subprocess.run([sys.executable, "-m", "functions.worker", *args], capture_output=True, text=True,
                               timeout=60))
        assert done.returncode == 2, done.stderr
        [line] = done.stderr.strip().splitlines()
        assert message in line and line.startswith("tierflow")


def test_workers_that_cannot_start_are_given_up_on_with_the_reason(tmp_path, tiny_model):
    from infra.net import free_ports

    [closed] = free_ports()
    deps = generation_deps(f"postgresql://tierflow@127.0.0.1:{closed}/nowhere", tmp_path / "home", tiny_model,
                           report_retry_seconds=0)
    dispatcher = LocalDispatcher(deps)
    try:
        dispatcher.ensure_workers()
        _until(lambda: dispatcher.failure, "the supervisor to give up", 120)
    finally:
        dispatcher.close()
    assert "local worker 0 exited 5 times right after starting (last status 1)" in dispatcher.failure
    assert "cannot reach the database" in dispatcher.failure
    with pytest.raises(Exception, match="exited 5 times"):
        dispatcher.ensure_workers()


def test_a_worker_in_the_worker_role_renders_and_may_touch_nothing_else(fleet_deps, conn, tmp_path, database_url):
    import psycopg
    from psycopg.conninfo import make_conninfo

    conn.execute((Path(__file__).resolve().parents[2] / "infra" / "sql" / "worker_role.sql").read_text())
    conn.execute("DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'gpu_node_7') THEN "
                 "CREATE ROLE gpu_node_7 LOGIN IN ROLE tierflow_worker; END IF; END $$")
    scene_id = scenes.submit_scene(fleet_deps, project="p", name="least privilege", aspect="1:1", segments=[QUICK] * 2)
    as_worker = make_conninfo(database_url, user="gpu_node_7")
    deps = generation_deps(as_worker, fleet_deps.settings.home, fleet_deps.settings.model, job_lease_seconds=2)
    process, log = _serve(deps, tmp_path, "--id", "least", "--exit-when-idle", "2")
    assert process.wait(300) == 0, log.read_text()
    assert wait_for_scene(fleet_deps, scene_id)["status"] == "generated"
    with psycopg.connect(as_worker, autocommit=True) as worker:
        for statement in ("UPDATE resolution_tiers SET is_deliverable = true", "DELETE FROM generation_jobs",
                          "UPDATE deliveries SET status = 'completed'", "SELECT * FROM api_sessions",
                          "INSERT INTO processed_events (consumer, event_id) VALUES ('x', 'y')"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                worker.execute(statement)
