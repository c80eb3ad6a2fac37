"""Read your writes on the embedded default: a command that says it did something leaves the state
it reports. With no runtime process serving, `approve`, `upscale`, `retry` and `jobs submit`
apply their own events before they return; with one serving they return at once and it applies
them (and an upscale waits for the approval it needs)."""

import json
import subprocess
import sys
import time

import pytest

from functions.cli.jobs import APPLIED_HERE, DEPLOYED
from functions.handlers.registry import FUNCTIONS
from infra import embedded
from shared.domain import scenes, upscale
from shared.domain.recipe import SegmentSpec
from shared.errors import Conflict
from shared.runtime import bus, drive
from tests.conftest import make_scene

pytestmark = pytest.mark.integration


def test_from_a_fresh_home_approve_then_upscale_to_production_works_with_no_server(run_cli, tiny_model, tmp_path):
    env = {"TIERFLOW_MODEL": tiny_model}  # the embedded database and S3 server in a fresh home
    try:
        done = run_cli("jobs", "submit", "--project", "p", "--scene", "s", "--aspect", "16:9", "--prompt", "a lighthouse",
                       "--frames", "2", "--steps", "1", "--wait", "--json", env=env)
        assert done.returncode == 0, done.stderr
        scene = json.loads(done.stdout)["scene_id"]

        approved = run_cli("scenes", "approve", str(scene), env=env)
        assert approved.returncode == 0, approved.stderr
        assert approved.stdout.startswith(f"scene {scene} approved (event ")
        shown = json.loads(run_cli("scenes", "show", str(scene), "--json", env=env).stdout)
        assert shown["status"] == "approved"

        upscaled = run_cli("scenes", "upscale", str(scene), "--to", "production", "--wait", "--json", env=env)
        assert upscaled.returncode == 0, upscaled.stderr
        target = json.loads(upscaled.stdout)
        assert (target["tier"], target["status"], target["upscaled_from_scene_id"]) == ("production", "generated", scene)
    finally:
        embedded.stop(tmp_path / "home")


def test_an_approval_is_applied_with_its_automatic_upscale_but_no_worker_is_started(run_cli, database_url, conn,
                                                                                     deps):
    scene = scenes.submit_scene(deps, project="p", name="s", aspect="16:9",
                                segments=[SegmentSpec(prompt="a lighthouse", seed=1, frames=2, steps=1)])
    conn.execute("UPDATE scenes SET status = 'generated' WHERE id = %s", [scene])  # as if rendered
    upscale.set_auto_upscale(deps, "p", "preview")
    approved = run_cli("scenes", "approve", str(scene), "--json", env={"TIERFLOW_DATABASE_URL": database_url})
    assert approved.returncode == 0, approved.stderr
    result = json.loads(approved.stdout)
    assert result["applied"] is True
    target = result["upscale_target_scene_id"]
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"
    assert conn.execute("SELECT upscaled_from_scene_id FROM scenes WHERE id = %s", [target]).fetchone()[
        "upscaled_from_scene_id"] == scene
    # Generation runs where workers run: its request waits for `serve` (or a --wait).
    assert conn.execute("""SELECT count(*) FROM bus_deliveries d JOIN outbox o ON o.id = d.outbox_id
                           WHERE d.consumer = 'on_generation_requested' AND o.message_key = %s""",
                        [str(target)]).fetchone()["count"] == 1
    assert conn.execute("SELECT count(*) FROM workers").fetchone()["count"] == 0


def test_while_a_runtime_serves_the_command_returns_at_once_and_leaves_the_event_to_it(run_cli, database_url, conn,
                                                                                        deps):
    scene = make_scene(conn, status="generated")
    serving = deps.connect()  # what `serve` holds while it runs
    bus.hold_serving(serving, DEPLOYED)
    try:
        approved = run_cli("scenes", "approve", str(scene), env={"TIERFLOW_DATABASE_URL": database_url})
        assert approved.returncode == 0, approved.stderr
        assert "the running runtime applies it" in approved.stdout
        assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "generated"
        assert upscale.approval_pending(conn, scene)

        # An upscale to Production asked meanwhile waits for the approval, then goes ahead.
        asked = subprocess.Popen([sys.executable, "-m", "functions.cli", "scenes", "upscale", str(scene),
                                  "--to", "production", "--json"],
                                 env=_env(database_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert asked.poll() is None  # waiting
        bus.drain(deps, DEPLOYED, [FUNCTIONS["on_scene_approved"]])  # the runtime applies the approval
        out, err = asked.communicate(timeout=60)
        assert asked.returncode == 0, err
        assert json.loads(out)["tier"] == "production"
    finally:
        serving.close()


def _env(database_url: str) -> dict:
    import os

    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
            "TIERFLOW_DATABASE_URL": database_url}


def test_an_approval_nobody_applies_is_waited_for_a_while_then_the_upscale_is_refused_saying_why(deps, conn,
                                                                                                  monkeypatch):
    scene = make_scene(conn, status="generated")
    serving = deps.connect()
    bus.hold_serving(serving, DEPLOYED)
    try:
        scenes.approve(deps, scene)
        monkeypatch.setattr(upscale, "APPROVAL_WAIT_SECONDS", 0.5)
        started = time.monotonic()
        with pytest.raises(Conflict) as refused:
            upscale.request_upscale(deps, scene, "production")
        assert time.monotonic() - started >= 0.5
        assert str(refused.value).startswith(f"scene {scene} is not approved; approve it before upscaling to ")
        assert str(refused.value).endswith("its approval was published but no runtime process applied it within "
                                           "0.5 s (is `tierflow serve` or `tierflow consume` running?)")
        assert conn.execute("SELECT count(*) FROM scenes WHERE upscaled_from_scene_id = %s",
                            [scene]).fetchone()["count"] == 0
    finally:
        serving.close()
    # With no approval published at all, the refusal is immediate.
    other = make_scene(conn, status="generated")
    started = time.monotonic()
    with pytest.raises(Conflict, match=f"scene {other} is not approved"):
        upscale.request_upscale(deps, other, "production")
    assert time.monotonic() - started < 0.5


def test_a_runtime_that_serves_some_functions_leaves_the_others_to_the_command(deps, conn):
    serving = deps.connect()
    bus.hold_serving(serving, [FUNCTIONS["on_scene_approved"]])  # e.g. `consume --function on_scene_approved`
    try:
        assert [f.name for f in bus.unserved(conn, APPLIED_HERE)] == [
            f.name for f in APPLIED_HERE if f.name != "on_scene_approved"]
        scene = make_scene(conn, status="generated")
        event_id = scenes.approve(deps, scene)
        drive.apply_unserved(deps, DEPLOYED, APPLIED_HERE)
        assert not drive.approval_settled(conn, scene, event_id)  # its server's to apply
    finally:
        serving.close()
    assert [f.name for f in bus.unserved(conn, APPLIED_HERE)] == [f.name for f in APPLIED_HERE]


def test_a_killed_runtime_stops_counting_as_serving(database_url, conn):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from functions.handlers.registry import FUNCTIONS\n"
        "from shared.adapters import db\n"
        "from shared.runtime import bus\n"
        "conn = db.connect(sys.argv[1])\n"
        "bus.hold_serving(conn, list(FUNCTIONS.values()))\n"
        "print('holding', flush=True)\n"
        "time.sleep(600)\n"), database_url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        assert bus.unserved(conn, DEPLOYED) == []
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 10
    while bus.unserved(conn, DEPLOYED) != DEPLOYED:
        assert time.monotonic() < deadline, "the killed process's locks were not released"
        time.sleep(0.1)

