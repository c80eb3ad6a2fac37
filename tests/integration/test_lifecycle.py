"""The state machine (shared.domain.lifecycle) and the handlers that drive it, on real PostgreSQL:
every transition, and late, repeated and out-of-order reports. No rendering: workers' reports are
sent as the events they would send."""

import pytest

from events import GenerationCompleted, GenerationFailed, GenerationProgress, SceneApproved
from functions.handlers.registry import FUNCTIONS
from shared.domain import lifecycle, tiers
from shared.domain.dimensions import AspectRatio
from shared.domain.recipe import SegmentSpec, build_recipes
from shared.domain.scenes import create_scene
from shared.runtime import bus
from shared.runtime.ports import Ports
from tests.conftest import make_scene

SHA = "ab" * 32


class RecordingDispatcher:
    """The dispatcher port, recording what it was handed instead of starting workers: what is
    checked here is what the handler asks for (how often, after what pause), not the worker."""

    name = "recording"

    def __init__(self):
        self.submitted: list[tuple[int, int, float]] = []

    def submit(self, job: dict, delay_seconds: float = 0.0) -> str:
        self.submitted.append((job["job_id"], job["attempt"], delay_seconds))
        return f"recording:{len(self.submitted)}"


def _scene(conn, segments: int = 2) -> tuple[int, list]:
    """A pending Draft scene with one queued job per segment; returns its id and the requests."""
    requests = []
    recipes = build_recipes([SegmentSpec(prompt=f"shot {i}", seed=i, frames=2, steps=2) for i in range(segments)], "m")
    scene_id = create_scene(conn, requests.append, project="studio", name="s", aspect=AspectRatio(16, 9),
                            tier=tiers.get_tier(conn, "draft"), recipes=recipes)
    return scene_id, requests


def _progress(request, step: int, total: int = 4) -> GenerationProgress:
    return GenerationProgress(job_id=request.job_id, scene_id=request.scene_id, segment_id=request.segment_id,
                              step=step, total_steps=total)


def _completed(request, **extra) -> GenerationCompleted:
    fields = {"video_key": f"v/{request.job_id}.mp4", "poster_key": "p.png", "metadata_key": "m.json", "sha256": SHA,
              "width": 512, "height": 288, "frames": 2, "device": "cpu", "device_seconds": 0.5, **extra}
    return GenerationCompleted(job_id=request.job_id, scene_id=request.scene_id, segment_id=request.segment_id,
                               **fields)


def _failed(request, reason: str = "CUDA error", retryable: bool = True) -> GenerationFailed:
    return GenerationFailed(job_id=request.job_id, scene_id=request.scene_id, segment_id=request.segment_id,
                            reason=reason, retryable=retryable)


def _report(deps, event, **settings) -> list[dict]:
    """Apply one report with on_generation_result, as the runtime does; returns what it emitted."""
    ports = Ports(deps.settings.model_copy(update=settings), storage=None, dispatcher=None)
    with deps.uow() as uow:
        before = uow.conn.execute("SELECT COALESCE(max(id), 0) AS id FROM outbox").fetchone()["id"]
        FUNCTIONS["on_generation_result"].handle(event, uow, ports)
        return [r["payload"] for r in uow.conn.execute("SELECT payload FROM outbox WHERE id > %s ORDER BY id",
                                                       [before])]


def _state(conn, scene_id: int) -> dict:
    scene = conn.execute("SELECT status FROM scenes WHERE id = %s", [scene_id]).fetchone()["status"]
    rows = conn.execute(
        """SELECT g.position, g.status AS segment, j.attempt, j.status AS job, j.progress, j.error
           FROM segments g JOIN generation_jobs j ON j.segment_id = g.id WHERE g.scene_id = %s
           ORDER BY g.position, j.attempt""", [scene_id]).fetchall()
    return {"scene": scene, "jobs": [(r["position"], r["attempt"], r["segment"], r["job"]) for r in rows],
            "progress": [r["progress"] for r in rows], "errors": [r["error"] for r in rows]}


def test_a_new_scene_queues_attempt_one_of_every_segment(conn):
    scene_id, requests = _scene(conn)
    assert [(r.attempt, r.width, r.height, r.tier) for r in requests] == [(1, 512, 288, "draft")] * 2
    assert _state(conn, scene_id)["jobs"] == [(0, 1, "pending", "queued"), (1, 1, "pending", "queued")]


def test_progress_starts_job_segment_and_scene_and_only_ever_grows(deps, conn):
    scene_id, [first, _] = _scene(conn)
    _report(deps, _progress(first, 3))
    _report(deps, _progress(first, 1))  # out of order: an older report arrives late
    state = _state(conn, scene_id)
    assert state["scene"] == "generating"
    assert state["jobs"][0] == (0, 1, "generating", "running") and state["progress"][0] == 0.75
    assert state["jobs"][1] == (1, 1, "pending", "queued")


def test_a_scene_is_generated_when_its_last_segment_is(deps, conn):
    scene_id, requests = _scene(conn)
    _report(deps, _completed(requests[0]))
    assert _state(conn, scene_id)["scene"] == "generating"
    _report(deps, _completed(requests[1]))
    state = _state(conn, scene_id)
    assert state["scene"] == "generated" and state["progress"] == [1.0, 1.0]
    assert state["jobs"] == [(0, 1, "generated", "succeeded"), (1, 1, "generated", "succeeded")]


def test_reports_after_completion_change_nothing(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    _report(deps, _completed(only))
    done = _state(conn, scene_id)
    assert _report(deps, _progress(only, 2)) == []  # a progress report that lost the race
    assert _report(deps, _completed(only, device_seconds=99)) == []  # the same result twice
    assert _report(deps, _failed(only)) == []  # a failure of a job that succeeded
    assert _state(conn, scene_id) == done
    assert conn.execute("SELECT device_seconds FROM generation_jobs WHERE id = %s", [only.job_id]
                        ).fetchone()["device_seconds"] == 0.5


def test_a_retryable_failure_queues_the_next_attempt_and_keeps_the_failed_one(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    [request] = _report(deps, _failed(only, "worker lost"))
    assert request["type"] == "generation.requested" and request["data"]["attempt"] == 2
    state = _state(conn, scene_id)
    assert state["jobs"] == [(0, 1, "pending", "failed"), (0, 2, "pending", "queued")]
    assert state["errors"] == ["worker lost", None] and state["scene"] == "pending"
    assert request["data"]["recipe"] == only.recipe.model_dump(mode="json")
    # The failed attempt's late success changes nothing: only the newer attempt counts now.
    assert _report(deps, _completed(only)) == []
    assert _state(conn, scene_id)["jobs"][0] == (0, 1, "pending", "failed")


def test_attempts_run_out_then_segment_and_scene_fail_with_the_reason(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    [second] = _report(deps, _failed(only, "first"), max_attempts=2)
    retry = type(only).model_validate(second["data"])
    assert _report(deps, _failed(retry, "second"), max_attempts=2) == []
    state = _state(conn, scene_id)
    assert state["scene"] == "failed" and state["errors"] == ["first", "second"]
    assert state["jobs"] == [(0, 1, "failed", "failed"), (0, 2, "failed", "failed")]


def test_a_permanent_failure_is_not_retried(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    assert _report(deps, _failed(only, "model not found", retryable=False)) == []
    assert _state(conn, scene_id)["jobs"] == [(0, 1, "failed", "failed")]
    assert _state(conn, scene_id)["scene"] == "failed"


def test_a_scene_failed_by_one_segment_stays_failed_until_that_segment_is_retried(deps, conn):
    scene_id, [bad, good] = _scene(conn)
    _report(deps, _failed(bad, "no", retryable=False))
    _report(deps, _completed(good))  # finishing late does not make a failed scene generated
    assert _state(conn, scene_id)["scene"] == "failed"
    retry = lifecycle.queue_attempt(conn, bad.segment_id)
    assert lifecycle.reset_failed_segments(conn, [bad.segment_id, good.segment_id]) == [bad.segment_id]
    assert lifecycle.reopen_scene(conn, scene_id) and not lifecycle.reopen_scene(conn, scene_id)
    assert _state(conn, scene_id)["scene"] == "generating"
    _report(deps, _completed(retry))
    assert _state(conn, scene_id)["scene"] == "generated"


@pytest.mark.parametrize(("ssim", "flagged"), [(0.9, False), (0.3, True), (None, None)])
def test_similarity_below_the_threshold_is_flagged(deps, conn, ssim, flagged):
    scene_id, [only] = _scene(conn, segments=1)
    extra = {} if ssim is None else {"ssim": ssim, "psnr": 30.0, "comparison_key": "c.png"}
    _report(deps, _completed(only, **extra), similarity_threshold=0.5)
    row = conn.execute("SELECT ssim, similarity_flagged FROM segments WHERE id = %s", [only.segment_id]).fetchone()
    assert (row["ssim"], row["similarity_flagged"]) == (ssim, flagged)


def test_approval_goes_from_generated_only_and_once(conn):
    generated, generating = make_scene(conn), make_scene(conn, status="generating")
    assert not lifecycle.approve_scene(conn, generating)
    assert lifecycle.approve_scene(conn, generated)
    assert not lifecycle.approve_scene(conn, generated)
    assert conn.execute("SELECT approved_at IS NOT NULL AS stamped FROM scenes WHERE id = %s", [generated]
                        ).fetchone()["stamped"]


def test_a_second_approval_is_applied_as_a_no_op_not_dead_lettered(deps, conn):
    scene = make_scene(conn, auto_upscale_to="production")
    approvals = [FUNCTIONS["on_scene_approved"]]
    for who in ("ana", "ben"):
        with deps.uow() as uow:
            uow.emit(SceneApproved(scene_id=scene, approved_by=who))
    outcomes = []
    bus.drain(deps, approvals, approvals, on_outcome=lambda f, o: outcomes.append(o))
    assert sum(len(o.applied) for o in outcomes) == 2 and not any(o.dead for o in outcomes)
    assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM outbox WHERE topic = 'upscale.requested'").fetchone()["n"] == 1


def test_deliveries_are_decided_once(conn):
    scene = make_scene(conn, tier="production", project="p")
    project = conn.execute("SELECT project_id FROM scenes WHERE id = %s", [scene]).fetchone()["project_id"]
    ids = [conn.execute("INSERT INTO deliveries (project_id, requested_scene_ids) VALUES (%s, %s) RETURNING id",
                        [project, [scene]]).fetchone()["id"] for _ in range(2)]
    conn.execute("INSERT INTO delivery_scenes (delivery_id, scene_id) VALUES (%s, %s)", [ids[0], scene])
    reasons = [{"code": "FILE_MISSING", "scene_id": scene, "tier": "production", "message": "No file."}]
    assert lifecycle.complete_delivery(conn, ids[0], "deliveries/1/manifest.json")
    assert not lifecycle.reject_delivery(conn, ids[0], reasons)
    assert lifecycle.reject_delivery(conn, ids[1], reasons)
    assert not lifecycle.complete_delivery(conn, ids[1], "deliveries/2/manifest.json")
    rows = conn.execute("SELECT status, reasons, manifest_key FROM deliveries ORDER BY id").fetchall()
    assert [(r["status"], r["reasons"], r["manifest_key"]) for r in rows] == [
        ("completed", None, "deliveries/1/manifest.json"), ("rejected", reasons, None)]


def test_the_retry_policy():
    assert [lifecycle.retry_delay_seconds(attempt, 1.5) for attempt in (1, 2, 3, 4)] == [0.0, 1.5, 3.0, 6.0]
    assert lifecycle.should_retry(2, 3, retryable=True)
    assert not lifecycle.should_retry(3, 3, retryable=True)
    assert not lifecycle.should_retry(1, 3, retryable=False)


def test_a_retry_is_dispatched_after_the_backoff(deps, conn):
    dispatcher = RecordingDispatcher()
    ports = Ports(deps.settings.model_copy(update={"retry_backoff_seconds": 1.5}), storage=None,
                  dispatcher=lambda: dispatcher)
    _, [only] = _scene(conn, segments=1)
    requests = [only]
    while True:
        for _ in range(2):  # a redelivered request is dispatched once
            with deps.uow() as uow:
                FUNCTIONS["on_generation_requested"].handle(requests[-1], uow, ports)
        if len(requests) == 3:
            break
        [retry] = _report(deps, _failed(requests[-1]))  # attempts 1 and 2 fail: 2 and 3 are queued
        requests.append(type(only).model_validate(retry["data"]))
    assert dispatcher.submitted == [(r.job_id, r.attempt, delay) for r, delay in zip(requests, [0.0, 1.5, 3.0])]
    assert [r["external_job_id"] for r in conn.execute(
        "SELECT external_job_id FROM generation_jobs ORDER BY attempt")] == ["recording:1", "recording:2", "recording:3"]


def test_one_failing_dispatch_never_dispatches_its_neighbours_twice(deps, conn):
    dispatcher = RecordingDispatcher()
    deps.__dict__["dispatcher"] = dispatcher  # the port this process's handlers are given
    _, requests = _scene(conn, segments=2)
    missing = requests[0].model_copy(update={"job_id": 999_999})
    with deps.uow() as uow:
        for request in (requests[0], missing, requests[1]):
            uow.emit(request)
    dispatch = [FUNCTIONS["on_generation_requested"]]
    outcomes = []
    bus.drain(deps, dispatch, dispatch, on_outcome=lambda f, o: outcomes.append(o))
    assert [job for job, _, _ in dispatcher.submitted] == [requests[0].job_id, requests[1].job_id]
    assert [reason for o in outcomes for _, reason in o.dead] == ["refused: generation job 999999 does not exist"]
