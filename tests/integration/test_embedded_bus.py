"""The embedded bus: the same handlers and guarantees as on Kafka, fed from the Postgres outbox."""

import json
import re

import pytest

from events import SceneApproved, envelope_for
from functions.handlers.registry import FUNCTIONS
from shared.runtime import bus, outbox
from shared.runtime.consumer import Function
from tests.conftest import make_scene

pytestmark = pytest.mark.integration

ALL = list(FUNCTIONS.values())


def _outbox(conn, topic: str) -> list[dict]:
    return [r["payload"] for r in conn.execute("SELECT payload FROM outbox WHERE topic = %s ORDER BY id", [topic])]


def _publish(deps, event) -> str:
    with deps.uow() as uow:
        return uow.emit(event)


def test_approval_with_auto_upscale_requests_the_upscale(deps, conn):
    scene = make_scene(conn, auto_upscale_to="production")
    event_id = _publish(deps, SceneApproved(scene_id=scene))
    bus.drain(deps, ALL, ALL)

    row = conn.execute("SELECT status, approved_at FROM scenes WHERE id = %s", [scene]).fetchone()
    assert row["status"] == "approved" and row["approved_at"] is not None
    [requested] = _outbox(conn, "upscale.requested")
    assert requested["data"] == {"source_scene_id": scene, "target_tier": "production",
                                 "requested_by": "auto-upscale", "schema_version": 1}
    assert requested["subject"] == str(scene) and requested["source"] == "urn:tierflow:on_scene_approved"
    assert conn.execute("SELECT consumer FROM processed_events WHERE event_id = %s ORDER BY consumer",
                        [event_id]).fetchall() == [{"consumer": "on_event_webhooks"}, {"consumer": "on_scene_approved"}]
    assert conn.execute("SELECT count(*) AS n FROM bus_deliveries").fetchone()["n"] == 0


def test_without_a_policy_approval_requests_nothing(deps, conn):
    scene = make_scene(conn)
    _publish(deps, SceneApproved(scene_id=scene))
    bus.drain(deps, ALL, ALL)
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"
    assert _outbox(conn, "upscale.requested") == []


def test_a_redelivered_event_changes_nothing(deps, conn):
    scene = make_scene(conn, auto_upscale_to="preview")
    _publish(deps, SceneApproved(scene_id=scene))
    bus.drain(deps, ALL, ALL)
    # Deliver the very same outbox event again, as a crash before acknowledging would.
    conn.execute("INSERT INTO bus_deliveries (consumer, outbox_id) SELECT 'on_scene_approved', id FROM outbox "
                 "WHERE topic = 'scene.approved'")
    outcomes = []
    bus.drain(deps, ALL, ALL, on_outcome=lambda f, o: outcomes.append(o))
    assert [len(o.duplicates) for o in outcomes] == [1]
    assert len(_outbox(conn, "upscale.requested")) == 1


def test_a_second_approval_with_another_id_requests_nothing_twice(deps, conn):
    scene = make_scene(conn, auto_upscale_to="production")
    _publish(deps, SceneApproved(scene_id=scene, approved_by="ana"))
    _publish(deps, SceneApproved(scene_id=scene, approved_by="ben"))
    bus.drain(deps, ALL, ALL)
    assert len(_outbox(conn, "upscale.requested")) == 1
    assert conn.execute("SELECT count(*) AS n FROM processed_events WHERE consumer = 'on_scene_approved'"
                        ).fetchone()["n"] == 2


def test_malformed_and_refused_events_are_dead_lettered_and_the_next_one_is_applied(deps, conn):
    generating = make_scene(conn, status="generating")
    good = make_scene(conn)
    conn.execute("INSERT INTO outbox (event_id, topic, message_key, payload) VALUES "
                 "('bad-1', 'scene.approved', '1', '{\"specversion\": \"1.0\", \"type\": \"scene.approved\"}')")
    _publish(deps, SceneApproved(scene_id=999_999))
    _publish(deps, SceneApproved(scene_id=generating))
    _publish(deps, SceneApproved(scene_id=good))
    bus.drain(deps, ALL, ALL)

    reasons = [r["reason"] for r in conn.execute(
        "SELECT reason FROM dead_letters WHERE consumer = 'on_scene_approved' ORDER BY id")]
    assert len(reasons) == 3
    # Every consumer of the topic dead-letters the malformed event (the webhooks one too), and only that.
    assert [r["reason"] for r in conn.execute(
        "SELECT reason FROM dead_letters WHERE consumer = 'on_event_webhooks'")] == reasons[:1]
    assert reasons[0] == ("invalid scene.approved event: id: Field required; source: Field required; "
                          "subject: Field required; time: Field required; data: Field required")
    assert reasons[1] == "refused: scene 999999 does not exist"
    assert reasons[2] == f"refused: scene {generating} is generating; only a fully generated scene can be approved"
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [good]).fetchone()["status"] == "approved"
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [generating]).fetchone()["status"] == "generating"


def test_events_of_one_subject_are_applied_in_order_and_transient_failures_retried(deps, conn):
    conn.execute("CREATE TABLE seen (n serial, scene_id bigint, approved_by text)")
    failures = {"left": 2}

    def record(event, uow, ports):
        if event.approved_by == "flaky" and failures["left"]:
            failures["left"] -= 1
            raise ConnectionResetError("storage hiccup")
        uow.conn.execute("INSERT INTO seen (scene_id, approved_by) VALUES (%s, %s)",
                         [event.scene_id, event.approved_by])

    recorder = Function("recorder", ("scene.approved",), record)
    for who in ["a", "b", "flaky", "c", "d"]:
        _publish(deps, SceneApproved(scene_id=7, approved_by=who))
    bus.drain(deps, [recorder], [recorder])
    assert [r["approved_by"] for r in conn.execute("SELECT approved_by FROM seen ORDER BY n")] == [
        "a", "b", "flaky", "c", "d"]


def _broken(event, uow, ports):
    raise TimeoutError("GPU queue did not answer")


def _deps_retrying_for(database_url, home, seconds: float):
    from shared.bootstrap import Deps
    from shared.config import Settings

    return Deps(Settings(database_url=database_url, home=home, transient_retry_seconds=seconds))


def _drain_until(deps, functions, condition, timeout: float = 30) -> None:
    """Run the bus (deferred deliveries come back at their retry time) until `condition()`."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        bus.drain(deps, functions, functions)
        time.sleep(0.2)


def test_a_transient_failure_holds_back_its_subject_only_and_is_applied_once_it_passes(deps, conn):
    conn.execute("CREATE TABLE seen (n serial, scene_id bigint, approved_by text)")
    storage_down = {"now": True}

    def record(event, uow, ports):
        if event.approved_by == "flaky" and storage_down["now"]:
            raise ConnectionResetError("S3 said 503 Slow Down")
        uow.conn.execute("INSERT INTO seen (scene_id, approved_by) VALUES (%s, %s)", [event.scene_id, event.approved_by])

    recorder = Function("recorder", ("scene.approved",), record)
    for scene, who in [(7, "flaky"), (7, "behind"), (8, "other")]:
        _publish(deps, SceneApproved(scene_id=scene, approved_by=who))
    bus.drain(deps, [recorder], [recorder])

    def seen():
        return [r["approved_by"] for r in conn.execute("SELECT approved_by FROM seen ORDER BY n")]

    assert seen() == ["other"]  # scene 7's events wait behind the failing one; scene 8's do not
    [failure] = conn.execute("SELECT tries, last_error, retry_at > now() AS later FROM event_failures").fetchall()
    assert failure == {"tries": 1, "last_error": "ConnectionResetError: S3 said 503 Slow Down", "later": True}
    assert conn.execute("SELECT count(*) AS n FROM bus_deliveries WHERE consumer = 'recorder'").fetchone()["n"] == 2
    _drain_until(deps, [recorder], lambda: conn.execute("SELECT tries FROM event_failures").fetchone()["tries"] >= 2)
    assert seen() == ["other"]
    storage_down["now"] = False
    _drain_until(deps, [recorder], lambda: len(seen()) == 3)
    assert seen() == ["other", "flaky", "behind"]
    assert conn.execute("SELECT count(*) AS n FROM event_failures").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 0


def test_a_handler_that_keeps_failing_is_dead_lettered_once_the_transient_window_has_passed(database_url, tmp_path,
                                                                                             conn):
    function = Function("broken", ("scene.approved",), _broken)
    deps = _deps_retrying_for(database_url, tmp_path / "home", 2.5)
    _publish(deps, SceneApproved(scene_id=1))
    bus.drain(deps, [function], [function])
    assert conn.execute("SELECT count(*) AS n FROM dead_letters").fetchone()["n"] == 0
    _drain_until(deps, [function], lambda: conn.execute("SELECT 1 FROM dead_letters").fetchone() is not None)
    [letter] = conn.execute("SELECT consumer, reason FROM dead_letters").fetchall()
    assert letter["consumer"] == "broken"
    assert re.fullmatch(r"failed (\d+) times over [23] s, last: TimeoutError: GPU queue did not answer", letter["reason"])
    assert int(re.match(r"failed (\d+)", letter["reason"])[1]) >= 6  # two deferrals of three quick tries at least
    assert conn.execute("SELECT count(*) AS n FROM event_failures").fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM bus_deliveries").fetchone()["n"] == 0
    deps.close()


def test_with_no_transient_window_a_failing_handler_is_dead_lettered_after_its_quick_tries(database_url, tmp_path,
                                                                                           conn):
    function = Function("broken", ("scene.approved",), _broken)
    deps = _deps_retrying_for(database_url, tmp_path / "home", 0)
    _publish(deps, SceneApproved(scene_id=1))
    bus.drain(deps, [function], [function])
    [letter] = conn.execute("SELECT consumer, reason FROM dead_letters").fetchall()
    assert letter == {"consumer": "broken", "reason": "failed 3 times over 0 s, last: TimeoutError: GPU queue did not answer"}
    deps.close()


def test_a_crash_before_commit_loses_nothing_and_doubles_nothing(deps, conn):
    scene = make_scene(conn, auto_upscale_to="production")
    _publish(deps, SceneApproved(scene_id=scene))
    real = FUNCTIONS["on_scene_approved"]

    def crash_after_effects(event, uow, ports):
        real.handle(event, uow, ports)
        raise SystemExit("process killed")  # not an Exception: nothing catches it, as with a real crash

    crashing = Function(real.name, real.consumes, crash_after_effects)
    with pytest.raises(SystemExit):
        bus.drain(deps, [crashing], [crashing])
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "generated"
    assert conn.execute("SELECT count(*) AS n FROM bus_deliveries").fetchone()["n"] == 1

    bus.drain(deps, ALL, ALL)  # the restarted process
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"
    assert len(_outbox(conn, "upscale.requested")) == 1


def test_events_relayed_while_a_function_is_not_running_wait_for_it(deps, conn):
    scene = make_scene(conn)
    _publish(deps, SceneApproved(scene_id=scene))
    bus.drain(deps, ALL, [])  # only the relay runs
    assert conn.execute("SELECT consumer FROM bus_deliveries ORDER BY consumer").fetchall() == [
        {"consumer": "on_event_webhooks"}, {"consumer": "on_scene_approved"}]
    bus.drain(deps, ALL, ALL)
    assert conn.execute("SELECT status FROM scenes WHERE id = %s", [scene]).fetchone()["status"] == "approved"


def test_envelope_stored_in_the_outbox_is_a_valid_cloud_event(deps, conn):
    scene = make_scene(conn)
    event_id = _publish(deps, SceneApproved(scene_id=scene))
    [payload] = _outbox(conn, "scene.approved")
    assert payload["id"] == event_id and payload["specversion"] == "1.0" and payload["type"] == "scene.approved"
    assert payload["subject"] == str(scene) and payload["data"]["scene_id"] == scene
    reference = json.loads(envelope_for(SceneApproved(scene_id=scene), source="urn:tierflow:cli").to_json())
    assert set(payload) == set(reference) | {"traceparent"}  # the distributed tracing extension


def test_committed_events_wake_listening_relays(deps, database_url):
    from shared.adapters import db

    with db.connect(database_url) as listener:
        outbox.listen_for_outbox(listener)
        _publish(deps, SceneApproved(scene_id=1))
        [notification] = list(listener.notifies(timeout=10, stop_after=1))
        assert notification.channel == outbox.OUTBOX_CHANNEL
        # Nothing committed since: a wait now lasts its whole timeout and sees nothing.
        assert list(listener.notifies(timeout=0.2)) == []


def test_the_bus_outlives_dropped_connections_and_says_so_once(deps, conn, postgres_server):
    import threading
    import time

    from shared.runtime.supervise import Supervised
    from tests.conftest import database_outage

    lines, stop = [], threading.Event()
    approvals = [FUNCTIONS["on_scene_approved"]]
    supervision = Supervised("embedded bus", lines.append)
    runner = threading.Thread(target=bus.run_bus, args=(deps, approvals, approvals),
                              kwargs={"should_stop": stop.is_set, "idle_seconds": 0.2, "supervision": supervision})
    runner.start()
    try:
        first, second = make_scene(conn), make_scene(conn)
        _publish(deps, SceneApproved(scene_id=first))
        deadline = time.monotonic() + 30
        while conn.execute("SELECT status FROM scenes WHERE id = %s", [first]).fetchone()["status"] != "approved":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # A restart that takes a while: every session dropped, new ones refused for 1.5 s.
        with database_outage(postgres_server, conn.info.dbname, conn.info.backend_pid) as cut:
            assert cut
            time.sleep(1.5)
            assert runner.is_alive()
        _publish(deps, SceneApproved(scene_id=second))
        while conn.execute("SELECT status FROM scenes WHERE id = %s", [second]).fetchone()["status"] != "approved":
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive()
    outages = [line for line in lines if "retrying until it is back" in line]
    assert len(outages) == 1 and outages[0].startswith("embedded bus: OperationalError: ")
    assert len([line for line in lines if line.startswith("embedded bus: back after ")]) == 1
    assert conn.execute("SELECT count(*) AS n FROM processed_events").fetchone()["n"] == 2  # each applied once


def test_pruning_deletes_old_sent_events_and_records_but_nothing_still_needed(deps, conn, run_cli, database_url):
    from shared.runtime import outbox as outbox_module

    def event(age_days: float, sent: bool = True) -> int:
        with deps.uow() as uow:
            event_id = uow.emit(SceneApproved(scene_id=1))
        return conn.execute(
            "UPDATE outbox SET created_at = now() - make_interval(days => %s), "
            "sent_at = CASE WHEN %s THEN now() - make_interval(days => %s) END WHERE event_id = %s RETURNING id",
            [age_days, sent, age_days, event_id]).fetchone()["id"]

    old = [event(10) for _ in range(5)]
    recent, unsent, undelivered, dead = event(1), event(10, sent=False), event(10), event(10)
    conn.execute("INSERT INTO bus_deliveries (consumer, outbox_id) VALUES ('on_scene_approved', %s)", [undelivered])
    conn.execute("INSERT INTO dead_letters (consumer, topic, payload, reason, outbox_id) "
                 "VALUES ('on_scene_approved', 'scene.approved', '\\x7b7d', 'refused', %s)", [dead])
    conn.execute("INSERT INTO processed_events (consumer, event_id, processed_at) SELECT 'c', 'old-' || n, "
                 "now() - interval '8 days' FROM generate_series(1, 7) n")
    conn.execute("INSERT INTO processed_events (consumer, event_id) VALUES ('c', 'new')")
    conn.execute("INSERT INTO event_failures (consumer, ref, first_failed_at, last_error, retry_at) VALUES "
                 "('c', 'gone', now() - interval '8 days', 'x', now()), ('c', 'failing', now(), 'x', now())")

    assert outbox_module.prune(conn, 7, batch_size=2) == {"outbox": 5, "event_failures": 1, "processed_events": 7,
                                                          "webhook_deliveries": 0}
    left = {r["id"] for r in conn.execute("SELECT id FROM outbox")}
    assert left == {recent, unsent, undelivered, dead} and not left & set(old)
    assert [r["event_id"] for r in conn.execute("SELECT event_id FROM processed_events")] == ["new"]

    done = run_cli("db", "prune", "--json", env={"TIERFLOW_DATABASE_URL": database_url})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"older_than_days": 7.0,
                                       "deleted": {"outbox": 0, "event_failures": 0, "processed_events": 0,
                                                   "webhook_deliveries": 0}}
    assert [r["ref"] for r in conn.execute("SELECT ref FROM event_failures")] == ["failing"]
    refused = run_cli("db", "prune", "--older-than", "0", env={"TIERFLOW_DATABASE_URL": database_url})
    assert refused.returncode == 2 and "argument --older-than: 0 is not above 0" in refused.stderr
