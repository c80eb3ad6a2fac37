"""The local dispatcher's queue lives in its process: jobs of a process that died are run again by
the next one, and a stopping process leaves its jobs unfinished (not failed) for it."""

import os
import socket
import subprocess
import time

import pytest

from infra import embedded
from shared.adapters.dispatch import LocalDispatcher, process_identity, redispatch_orphans
from shared.domain import scenes
from shared.domain.recipe import SegmentSpec
from shared.domain.scenes import job_document
from tests.conftest import generation_deps, run_until

pytestmark = pytest.mark.integration

QUICK = [SegmentSpec(prompt="a red fox in snow", seed=11, frames=2, steps=1)]


def _job_of(conn, scene_id: int) -> dict:
    return conn.execute("SELECT j.* FROM generation_jobs j JOIN segments g ON g.id = j.segment_id "
                        "WHERE g.scene_id = %s", [scene_id]).fetchone()


def _taken_by(conn, scene_id: int, owner: str) -> int:
    job = _job_of(conn, scene_id)
    conn.execute("UPDATE generation_jobs SET dispatcher = 'local', external_job_id = %s WHERE id = %s",
                 [f"local:{owner}:job-{job['id']}.json", job["id"]])
    return job["id"]


def test_jobs_of_a_dead_local_dispatcher_run_again_and_no_others(gen_deps, conn):
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid now names no process
    host = socket.gethostname()
    orphan_scene, live_scene, remote_scene, old_scene = (
        scenes.submit_scene(gen_deps, project="p", name=n, aspect="16:9", segments=QUICK) for n in "abcd")
    orphan = _taken_by(conn, orphan_scene, f"{host}:{dead.pid}:1")
    _taken_by(conn, live_scene, process_identity(os.getpid()))  # this process: alive
    _taken_by(conn, remote_scene, f"render-02:{dead.pid}:1")  # another machine: cannot be judged from here
    old = _job_of(conn, old_scene)["id"]  # an id of the form before owners were recorded: left alone too
    conn.execute("UPDATE generation_jobs SET dispatcher = 'local', external_job_id = %s WHERE id = %s",
                 [f"local:job-{old}.json", old])

    assert redispatch_orphans(gen_deps) == [orphan]
    assert _job_of(conn, orphan_scene)["external_job_id"] == f"local:{process_identity(os.getpid())}:job-{orphan}.json"
    assert redispatch_orphans(gen_deps) == []  # now owned by a live process

    run_until(gen_deps, lambda c: scenes.get_scene(c, orphan_scene)["status"] == "generated")
    assert _job_of(conn, orphan_scene)["status"] == "succeeded"
    assert {_job_of(conn, s)["status"] for s in (live_scene, remote_scene, old_scene)} == {"queued"}


@pytest.fixture
def one_slot_deps(database_url, tmp_path, tiny_model):
    yield generation_deps(database_url, tmp_path / "home", tiny_model, local_workers=1)
    embedded.stop(tmp_path / "home")


def test_closing_stops_workers_and_leaves_their_jobs_unfinished_not_failed(one_slot_deps, conn):
    gen_deps = one_slot_deps
    dispatcher = LocalDispatcher(gen_deps)  # one worker slot: the second job waits
    scene_ids = [scenes.submit_scene(gen_deps, project="p", name=n, aspect="16:9", segments=QUICK) for n in "ab"]
    for scene_id in scene_ids:
        dispatcher.submit(job_document(conn, _job_of(conn, scene_id)["id"]))
    deadline = time.monotonic() + 60
    while not dispatcher._workers:
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.05)
    [worker] = list(dispatcher._workers)

    dispatcher.close()
    deadline = time.monotonic() + 30
    while dispatcher.busy:
        assert time.monotonic() < deadline, "close() did not stop the dispatcher"
        time.sleep(0.05)
    assert worker.returncode is not None  # terminated, not waited for
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = 'generation.failed'").fetchone()["n"] == 0
    assert {_job_of(conn, s)["status"] for s in scene_ids} <= {"queued", "running"}
