"""apply_batch: a batch is claimed and handled at once, and falls back to one savepoint per event."""

import json

import pytest

from events import SceneApproved, envelope_for
from shared.runtime.consumer import Function, Message, RetryPolicy, apply_batch

pytestmark = pytest.mark.integration


def _message(event, event_id: str | None = None) -> Message:
    cloud_event = envelope_for(event, source="urn:test")
    body = cloud_event.model_dump(mode="json", exclude_none=True)
    if event_id:
        body["id"] = event_id
    return Message("scene.approved", json.dumps(body).encode())


@pytest.fixture
def recorder(conn):
    """A function that records each approval it handles in `seen`, and refuses `approved_by="refuse"`."""
    conn.execute("CREATE TABLE seen (approved_by text)")
    calls = []

    def record(event, uow, ports):
        calls.append(event.approved_by)
        uow.conn.execute("INSERT INTO seen VALUES (%s)", [event.approved_by])
        if event.approved_by == "refuse":
            raise ValueError("no")

    return calls, record


def _apply(conn, deps, function, messages):
    with conn.transaction():
        return apply_batch(conn, deps.ports, function, messages, RetryPolicy(attempts=1, transient_seconds=0))


def _seen(conn) -> list[str]:
    return [r["approved_by"] for r in conn.execute("SELECT approved_by FROM seen ORDER BY 1")]


def test_a_clean_batch_is_handled_once_each_and_copies_are_duplicates(deps, conn, recorder):
    calls, record = recorder
    function = Function("recorder", ("scene.approved",), record)
    _apply(conn, deps, function, [_message(SceneApproved(scene_id=1, approved_by="old"), "e-old")])
    batch = [_message(SceneApproved(scene_id=1, approved_by="a"), "e-a"),
             _message(SceneApproved(scene_id=1, approved_by="old"), "e-old"),  # applied in an earlier batch
             _message(SceneApproved(scene_id=1, approved_by="b"), "e-b"),
             _message(SceneApproved(scene_id=1, approved_by="a"), "e-a")]  # a second copy in this batch
    outcome = _apply(conn, deps, function, batch)
    assert outcome.applied == [batch[0], batch[2]]
    assert outcome.duplicates == [batch[1], batch[3]]
    assert calls == ["old", "a", "b"]
    assert _seen(conn) == ["a", "b", "old"]
    assert {r["event_id"] for r in conn.execute("SELECT event_id FROM processed_events")} == {"e-old", "e-a", "e-b"}


def test_one_failure_undoes_only_that_event(deps, conn, recorder):
    calls, record = recorder
    function = Function("recorder", ("scene.approved",), record)
    batch = [_message(SceneApproved(scene_id=1, approved_by=who)) for who in ["a", "refuse", "b"]]
    outcome = _apply(conn, deps, function, batch)
    assert outcome.applied == [batch[0], batch[2]]
    assert [(m, reason) for m, reason in outcome.dead] == [(batch[1], "failed 1 times over 0 s, last: ValueError: no")]
    assert _seen(conn) == ["a", "b"]  # the batch attempt that failed left nothing behind
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 2
    # The batch was tried whole first (a, refuse), then one event per savepoint.
    assert calls == ["a", "refuse", "a", "refuse", "b"]


def test_an_isolated_function_never_handles_an_event_twice_for_a_neighbour(deps, conn, recorder):
    calls, record = recorder
    function = Function("recorder", ("scene.approved",), record, isolated=True)
    batch = [_message(SceneApproved(scene_id=1, approved_by=who)) for who in ["a", "refuse", "b"]]
    outcome = _apply(conn, deps, function, batch)
    assert outcome.applied == [batch[0], batch[2]] and len(outcome.dead) == 1
    assert calls == ["a", "refuse", "b"]
    assert _seen(conn) == ["a", "b"]
