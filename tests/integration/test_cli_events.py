"""`tierflow events`, `relay` and `consume` on the embedded bus, as an operator runs them."""

import json

import pytest

from tests.conftest import make_scene

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(run_cli, database_url):
    return lambda *args: run_cli(*args, env={"TIERFLOW_DATABASE_URL": database_url})


def _status(conn, scene_id: int) -> str:
    return conn.execute("SELECT status FROM scenes WHERE id = %s", [scene_id]).fetchone()["status"]


def test_publish_consume_and_tail(cli, conn):
    scene = make_scene(conn, auto_upscale_to="preview")
    published = cli("events", "publish", "scene.approved", "--data", json.dumps({"scene_id": scene}), "--json")
    assert published.returncode == 0, published.stderr
    receipt = json.loads(published.stdout)
    assert receipt["type"] == "scene.approved" and receipt["subject"] == str(scene)
    assert receipt["topic"] == "scene.approved"

    consumed = cli("consume", "--once")
    assert consumed.returncode == 0, consumed.stderr
    assert "on_scene_approved: applied 1, duplicates 0, dead-lettered 0" in consumed.stdout
    assert _status(conn, scene) == "approved"

    tail = cli("events", "tail", "--from-beginning", "--limit", "2", "--json")
    assert tail.returncode == 0, tail.stderr
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [e["type"] for e in events] == ["scene.approved", "upscale.requested"]
    assert events[0]["id"] == receipt["id"]
    assert events[1]["data"] == {"source_scene_id": scene, "target_tier": "preview",
                                 "requested_by": "auto-upscale", "schema_version": 1}
    human = cli("events", "tail", "upscale.requested", "--from-beginning", "--limit", "1")
    assert "upscale.requested" in human.stdout and f"subject={scene}" in human.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scene.approved", "--data", '{"scene_id": -1}'],
         "invalid scene.approved event: data.scene_id: Input should be greater than 0"),
        (["scene.approved", "--data", '{"scene": 1}'], "invalid scene.approved event"),
        (["scene.approved", "--data", "{oops"], "--data is not valid JSON"),
        (["scene.deleted", "--data", "{}"], "unknown event type 'scene.deleted'"),
    ],
)
def test_publish_refuses_bad_events_and_writes_nothing(cli, conn, args, message):
    result = cli("events", "publish", *args)
    assert result.returncode == 2, result.stdout
    [line] = result.stderr.strip().splitlines()
    assert message in line and "Traceback" not in result.stderr
    assert conn.execute("SELECT count(*) AS n FROM outbox").fetchone()["n"] == 0


def test_dead_letters_are_listed_and_replayed_after_a_fix(cli, conn):
    cli("events", "publish", "scene.approved", "--data", '{"scene_id": 4242}')
    consumed = cli("consume", "on_scene_approved", "--once")
    assert "dead-lettered 1" in consumed.stdout and "scene 4242 does not exist" in consumed.stdout

    [letter] = json.loads(cli("events", "dlq", "--json").stdout)
    assert letter["consumer"] == "on_scene_approved" and letter["topic"] == "scene.approved"
    assert letter["reason"] == "refused: scene 4242 does not exist"
    assert letter["value"]["data"]["scene_id"] == 4242

    make_scene(conn, scene_id=4242)  # the fix
    replay = cli("events", "dlq", "--replay")
    assert replay.returncode == 0 and "replayed 1 dead letter(s)" in replay.stdout
    assert json.loads(cli("events", "dlq", "--json").stdout) == []
    assert "applied 1" in cli("consume", "--once").stdout
    assert _status(conn, 4242) == "approved"


def test_unknown_function_is_refused(cli):
    result = cli("consume", "on_nothing")
    assert result.returncode == 1
    assert ("unknown function(s) on_nothing (known: on_scene_approved, on_upscale_requested, on_generation_requested, "
            "on_generation_result, on_delivery_requested, on_event_webhooks)") in result.stderr


def test_relay_once_on_the_embedded_bus(cli, conn):
    scene = make_scene(conn)
    cli("events", "publish", "scene.approved", "--data", json.dumps({"scene_id": scene}))
    relayed = cli("relay", "--once")
    assert relayed.returncode == 0 and "relayed 1 event(s)" in relayed.stdout
    assert conn.execute("SELECT consumer FROM bus_deliveries ORDER BY consumer").fetchall() == [
        {"consumer": "on_event_webhooks"}, {"consumer": "on_scene_approved"}]
