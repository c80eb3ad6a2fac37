"""The state machine (shared.domain.lifecycle) and the handlers that drive it, on real PostgreSQL:
every transition, claims and leases, and late, repeated and out-of-order reports. No rendering:
workers' claims and reports are made as a worker makes them."""

import threading

import pytest

from events import GenerationCompleted, GenerationFailed, GenerationProgress, SceneApproved
from functions.handlers.registry import FUNCTIONS
from shared.domain import lifecycle, reports, tiers
from shared.domain.dimensions import AspectRatio
from shared.domain.recipe import SegmentSpec, build_recipes
from shared.domain.scenes import create_scene
from shared.runtime import bus
from shared.runtime.ports import Ports
from tests.conftest import make_scene

SHA = "ab" * 32


WORKER = "host:1:w1"


class RecordingDispatcher:
    """The dispatcher port, counting the times it was asked for workers instead of starting any."""

    name = "recording"

    def __init__(self):
        self.asked = 0

    def ensure_workers(self, conn) -> None:
        self.asked += 1


def _claim(conn, request, worker: str = WORKER, lease_seconds: float = 60) -> int | None:
    return lifecycle.claim_job(conn, worker, lease_seconds=lease_seconds, job_id=request.job_id)


def _scene(conn, segments: int = 2, claimed: bool = True, tier: str = "draft") -> tuple[int, list]:
    """A pending Draft scene with one job per segment, claimed by WORKER unless `claimed` is
    false (then queued); returns its id and the requests."""
    requests = []
    recipes = build_recipes([SegmentSpec(prompt=f"shot {i}", seed=i, frames=2, steps=2) for i in range(segments)], "m")
    scene_id = create_scene(conn, requests.append, project="studio", name="s", aspect=AspectRatio(16, 9),
                            tier=tiers.get_tier(conn, tier), recipes=recipes)
    if claimed:
        for request in requests:
            assert _claim(conn, request) == request.job_id
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
    scene_id, requests = _scene(conn, claimed=False)
    assert [(r.attempt, r.width, r.height, r.tier) for r in requests] == [(1, 512, 288, "draft")] * 2
    assert _state(conn, scene_id)["jobs"] == [(0, 1, "pending", "queued"), (1, 1, "pending", "queued")]


def test_progress_starts_job_segment_and_scene_and_only_ever_grows(deps, conn):
    scene_id, [first, second] = _scene(conn)
    _report(deps, _progress(first, 3))
    _report(deps, _progress(first, 1))  # out of order: an older report arrives late
    state = _state(conn, scene_id)
    assert state["scene"] == "generating"
    assert state["jobs"][0] == (0, 1, "generating", "running") and state["progress"][0] == 0.75
    assert state["jobs"][1] == (1, 1, "pending", "running") and state["progress"][1] == 0


def test_only_a_claim_starts_a_job(deps, conn):
    """A report of a job nobody holds (never claimed, or given back to the queue) moves nothing:
    a queued job marked running with no worker would never be claimed again."""
    scene_id, [only] = _scene(conn, segments=1, claimed=False)
    assert _report(deps, _progress(only, 1)) == [] and _report(deps, _completed(only)) == []
    assert _state(conn, scene_id) == {"scene": "pending", "jobs": [(0, 1, "pending", "queued")], "progress": [0],
                                      "errors": [None]}
    assert _claim(conn, only) == only.job_id
    assert _claim(conn, only, worker="host:2:w2") is None  # claimed once
    assert lifecycle.release_job(conn, only.job_id, WORKER)  # a stopping worker gives it back
    assert _report(deps, _progress(only, 2)) == []  # its late report
    assert _state(conn, scene_id)["jobs"] == [(0, 1, "pending", "queued")]
    assert _claim(conn, only, worker="host:2:w2") == only.job_id  # the same attempt, for another worker


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


@pytest.mark.parametrize("order", ["failure first", "success first"])
def test_a_success_wins_over_a_failure_report_of_the_same_attempt_in_either_order(deps, conn, order):
    """The reports of one attempt travel on two topics: whichever arrives first, the attempt ends
    succeeded, the segment and scene generated, and no other attempt of the segment is left to run."""
    scene_id, [only] = _scene(conn, segments=1)
    reports_in_order = [_failed(only, "worker lost"), _completed(only)]
    if order == "success first":
        reports_in_order.reverse()
    for report in reports_in_order:
        _report(deps, report, max_attempts=3)
    state = _state(conn, scene_id)
    assert state["scene"] == "generated"
    if order == "failure first":  # the failure had queued attempt 2: superseded, never run
        assert state["jobs"] == [(0, 1, "generated", "succeeded"), (0, 2, "generated", "failed")]
        assert state["errors"] == [None, f"superseded: job {only.job_id} of this segment succeeded after its "
                                         "failure report"]
        assert _claim(conn, only.model_copy(update={"job_id": only.job_id + 1})) is None
    else:
        assert state["jobs"] == [(0, 1, "generated", "succeeded")] and state["errors"] == [None]


def test_a_late_success_of_an_attempt_whose_retry_succeeded_changes_nothing(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    [second] = _report(deps, _failed(only, "worker lost"), retry_backoff_seconds=0)
    retry = type(only).model_validate(second["data"])
    assert _claim(conn, retry) == retry.job_id
    _report(deps, _completed(retry))
    done = _state(conn, scene_id)
    assert _report(deps, _completed(only)) == []  # one success per segment
    assert _state(conn, scene_id) == done and done["jobs"] == [(0, 1, "generated", "failed"),
                                                                (0, 2, "generated", "succeeded")]


def test_a_late_success_revives_a_scene_its_failure_report_had_failed(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    _report(deps, _failed(only, "worker lost"), max_attempts=1)
    assert _state(conn, scene_id)["scene"] == "failed"
    _report(deps, _completed(only), max_attempts=1)
    assert _state(conn, scene_id) == {"scene": "generated", "jobs": [(0, 1, "generated", "succeeded")],
                                      "progress": [1.0], "errors": [None]}


def test_attempts_run_out_then_segment_and_scene_fail_with_the_reason(deps, conn):
    scene_id, [only] = _scene(conn, segments=1)
    [second] = _report(deps, _failed(only, "first"), max_attempts=2)
    retry = type(only).model_validate(second["data"])
    _claim(conn, retry)
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
    _claim(conn, retry)
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


def test_the_retry_policy_waits_in_the_queue_not_in_a_worker(deps, conn):
    assert lifecycle.should_retry(2, 3, retryable=True)
    assert not lifecycle.should_retry(3, 3, retryable=True)
    assert not lifecycle.should_retry(1, 3, retryable=False)
    _, [only] = _scene(conn, segments=1)
    requests = [only]
    for _ in range(2):  # attempts 1 and 2 fail: 2 and 3 are queued, each after its pause
        [retry] = _report(deps, _failed(requests[-1]), retry_backoff_seconds=30)
        requests.append(type(only).model_validate(retry["data"]))
        assert _claim(conn, requests[-1]) is None  # not before its time
        conn.execute("UPDATE generation_jobs SET not_before = now() WHERE id = %s", [requests[-1].job_id])
        assert _claim(conn, requests[-1]) == requests[-1].job_id
    pauses = [r["pause"] for r in conn.execute(
        "SELECT EXTRACT(EPOCH FROM not_before - created_at)::float8 AS pause FROM generation_jobs ORDER BY attempt")]
    assert pauses[0] == pytest.approx(0, abs=0.5)  # attempt 1 queued at once (its not_before set above for the rest)
    assert lifecycle.queue_attempt(conn, only.segment_id, 30).attempt == 4
    last = conn.execute("SELECT EXTRACT(EPOCH FROM not_before - created_at)::float8 AS pause FROM generation_jobs "
                        "WHERE attempt = 4").fetchone()["pause"]
    assert last == pytest.approx(120, abs=1)  # 30 s for attempt 2, 60 s for 3, 120 s for 4


def test_generation_requested_asks_for_workers_and_changes_no_job(deps, conn):
    dispatcher = RecordingDispatcher()
    ports = Ports(deps.settings, storage=None, dispatcher=lambda: dispatcher)
    scene_id, [only] = _scene(conn, segments=1, claimed=False)
    for _ in range(2):  # a redelivery asks again, which is harmless
        with deps.uow() as uow:
            FUNCTIONS["on_generation_requested"].handle(only, uow, ports)
    assert dispatcher.asked == 2
    assert _state(conn, scene_id)["jobs"] == [(0, 1, "pending", "queued")]


def test_concurrent_claims_take_every_job_exactly_once(deps, conn):
    for _ in range(10):
        _scene(conn, segments=10, claimed=False)
    claimed: dict[str, list[int]] = {}

    def work(worker: str) -> None:
        mine = claimed.setdefault(worker, [])
        with deps.connect() as own:
            while (job := lifecycle.claim_job(own, worker, lease_seconds=60)) is not None:
                mine.append(job)

    threads = [threading.Thread(target=work, args=(f"host:{i}:w",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [job for jobs in claimed.values() for job in jobs]
    assert len(every) == len(set(every)) == 100
    rows = conn.execute("SELECT status, worker_id, lease_expires_at > now() AS leased FROM generation_jobs").fetchall()
    assert {(r["status"], r["leased"]) for r in rows} == {("running", True)}
    assert {r["worker_id"] for r in rows} <= set(claimed)


def test_a_worker_prefers_its_loaded_model_and_last_size_but_no_job_starves(deps, conn):
    def scene(model: str, tier: str) -> int:
        requests = []
        create_scene(conn, requests.append, project="studio", name=f"{model}-{tier}", aspect=AspectRatio(16, 9),
                     tier=tiers.get_tier(conn, tier), recipes=build_recipes([SegmentSpec(prompt="p", seed=1)], model))
        return requests[0].job_id

    old_other, other_draft, mine_preview, mine_draft = (
        scene("other", "draft"), scene("other", "draft"), scene("mine", "preview"), scene("mine", "draft"))
    conn.execute("UPDATE generation_jobs SET not_before = now() - interval '1 hour' WHERE id = %s", [old_other])

    def claim(**prefs) -> int:
        return lifecycle.claim_job(conn, WORKER, lease_seconds=60, affinity_max_wait_seconds=600, **prefs)

    assert claim(loaded_models=["mine"], last_size=(512, 288)) == old_other  # waited past the limit: first
    assert claim(loaded_models=["mine"], last_size=(512, 288)) == mine_draft  # loaded model and last size
    assert claim(loaded_models=["mine"], last_size=(512, 288), models=["other", "mine"]) == mine_preview
    assert claim(models=["mine"]) is None  # only jobs of the models it serves
    assert claim() == other_draft


def test_an_expired_lease_fails_the_attempt_and_queues_the_next(deps, conn):
    scene_id, [lost, kept] = _scene(conn)
    # The worker of `lost` went silent 4 s after its claim, and its lease has run out since.
    conn.execute("UPDATE generation_jobs SET claimed_at = heard_at - interval '4 seconds', "
                 "lease_expires_at = now() - interval '1 second' WHERE id = %s", [lost.job_id])
    emitted = []
    with deps.uow() as uow:
        swept = reports.sweep_expired_leases(uow.conn, emitted.append, max_attempts=3, retry_backoff_seconds=0,
                                             similarity_threshold=0.5)
    assert swept == [lost.job_id]
    assert [e.type for e in emitted] == ["generation.requested", "generation.failed"]
    [failed] = [r for r in conn.execute("SELECT * FROM generation_jobs WHERE id = %s", [lost.job_id])]
    assert failed["status"] == "failed" and failed["lease_expires_at"] is None
    assert failed["error"].startswith("worker lost: lease expired, last heard at ") and WORKER in failed["error"]
    assert failed["held_seconds"] == pytest.approx(4, abs=0.1)
    assert _state(conn, scene_id)["jobs"] == [(0, 1, "pending", "failed"), (0, 2, "pending", "queued"),
                                              (1, 1, "pending", "running")]
    with deps.uow() as uow:  # nothing twice
        assert reports.sweep_expired_leases(uow.conn, emitted.append, max_attempts=3, retry_backoff_seconds=0,
                                            similarity_threshold=0.5) == []
    # The lost worker comes back: it holds nothing any more, so it may report nothing of it.
    assert lifecycle.renew_leases(conn, WORKER, [lost.job_id, kept.job_id], 60) == [kept.job_id]
    assert not lifecycle.hand_in(conn, lost.job_id, WORKER)
    assert lifecycle.hand_in(conn, kept.job_id, WORKER)  # a written result ends the lease: it cannot be lost now
    assert lifecycle.expired_jobs(conn) == [] and lifecycle.renew_leases(conn, WORKER, [kept.job_id], 60) == []


def test_usage_reports_the_saving_drafting_realised_on_held_seconds(deps, conn):
    from shared.domain.usage import device_seconds

    _, drafts = _scene(conn, segments=3)
    _, [final] = _scene(conn, segments=1, tier="production")
    for request, held in [*((d, 1.0) for d in drafts), (final, 10.0)]:
        _report(deps, _completed(request, held_seconds=held, load_seconds=0.0, worker_id=WORKER))
    report = device_seconds(conn)
    # Spent 3 x 1 + 10 held seconds; the four generated segments at Production, priced at the
    # measured 10 s a Production job held, would have held 40.
    assert report["projects"] == {"studio": {"final_tier": "production", "held_seconds": 13.0,
                                             "at_final_tier_seconds": 40.0, "saving": 0.675, "saving_reason": None}}
    assert report["fleet"] == {"workers": 0, "busy_seconds": 0.0, "alive_seconds": 0.0, "utilisation": None}
    # A job that did not say what it held leaves the saving unknown rather than flattered.
    _, [unmeasured] = _scene(conn, segments=1)
    _report(deps, _completed(unmeasured))
    assert device_seconds(conn)["projects"]["studio"]["saving"] is None
