"""W3C trace context on every event: one trace follows a scene from its submission through
generation, approval and upscale, across the outbox, the consumers and the workers."""

import json

import pytest

from events import SceneApproved, envelope_for, tracing
from functions.handlers.registry import FUNCTIONS
from shared.domain import scenes, upscale
from shared.domain.recipe import SegmentSpec
from shared.runtime.consumer import Message, apply_batch
from tests.conftest import make_scene, wait_for_scene
from tests.integration.test_upscale import _approve_and_follow

pytestmark = pytest.mark.integration

TWO = [SegmentSpec(prompt="a lighthouse", seed=1, frames=2, steps=1),
       SegmentSpec(prompt="waves", seed=2, frames=2, steps=1)]


def _events(conn, *scene_ids: int) -> list[dict]:
    return [r["payload"] for r in conn.execute(
        "SELECT payload FROM outbox WHERE message_key = ANY(%s) ORDER BY id", [[str(s) for s in scene_ids]])]


def test_one_trace_follows_a_scene_from_submission_through_approval_and_upscale(gen_deps, conn, run_cli,
                                                                                database_url):
    draft = scenes.submit_scene(gen_deps, project="p", name="s", aspect="16:9", segments=TWO)
    assert wait_for_scene(gen_deps, draft)["status"] == "generated"
    upscale.set_auto_upscale(gen_deps, "p", "preview")
    target = _approve_and_follow(gen_deps, draft)
    assert wait_for_scene(gen_deps, target)["status"] == "generated"

    events = _events(conn, draft, target)
    types = {e["type"] for e in events}
    assert {"generation.requested", "generation.progress", "generation.completed", "scene.approved",
            "upscale.requested", "upscale.progress", "upscale.completed"} <= types
    parents = [e["traceparent"] for e in events]
    assert all(tracing.valid(p) for p in parents)
    assert len({tracing.trace_id(p) for p in parents}) == 1  # one trace, from submission to the upscale
    assert len(set(parents)) == len(parents)  # every event its own span

    # What `events tail --from-beginning --json` prints carries it too.
    tail = run_cli("events", "tail", "--from-beginning", "--json", "--timeout", "3",
                   env={"TIERFLOW_DATABASE_URL": database_url})
    printed = [json.loads(line) for line in tail.stdout.splitlines()]
    generation = [e for e in printed if e["type"].startswith("generation.") and e["subject"] == str(draft)]
    assert len(generation) >= 6 and {tracing.trace_id(e["traceparent"]) for e in generation} == {
        tracing.trace_id(parents[0])}

    # Another scene is another trace.
    other = scenes.submit_scene(gen_deps, project="p", name="t", aspect="16:9", segments=TWO[:1])
    assert tracing.trace_id(_events(conn, other)[0]["traceparent"]) != tracing.trace_id(parents[0])


def test_an_event_from_a_studio_tool_is_continued_in_its_own_trace(deps, conn):
    scene = make_scene(conn, auto_upscale_to="production", status="generated")
    theirs = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    approval = envelope_for(SceneApproved(scene_id=scene), source="urn:ftrack", extensions={"traceparent": theirs})
    with conn.transaction():
        outcome = apply_batch(conn, deps.ports, FUNCTIONS["on_scene_approved"],
                              [Message("scene.approved", approval.to_json(), str(scene).encode(), outbox_id=1)])
    assert len(outcome.applied) == 1
    [requested] = [e for e in _events(conn, scene) if e["type"] == "upscale.requested"]
    assert tracing.trace_id(requested["traceparent"]) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert requested["traceparent"] != theirs  # a span of its own


def test_a_bad_traceparent_starts_a_new_trace_instead_of_spreading():
    with tracing.scope("00-zz-00-01") as started:
        assert tracing.valid(started) and tracing.current() == started
    assert tracing.current() is None
    assert tracing.trace_id(tracing.child("00-" + "0" * 32 + "-00f067aa0ba902b7-01")) != "0" * 32
