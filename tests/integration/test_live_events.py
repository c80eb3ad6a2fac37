"""GET /api/events: one live stream per page, fed by one LISTEN per server process and fanned out
in memory, filtered by scene or project, resumable with Last-Event-ID; against a real uvicorn."""

import json
import threading
import time

import httpx
import pytest
import uvicorn

from functions.cli.jobs import DEPLOYED
from functions.http.app import create_app
from infra.net import free_ports
from shared.domain import scenes
from shared.runtime import drive
from tests.conftest import API_KEYS, make_scene

pytestmark = pytest.mark.integration

VIEWER = {"X-API-Key": API_KEYS["viewer"]}


@pytest.fixture
def served(api_deps):
    """The API on a free port in this process; yields (base URL, app)."""
    app = create_app(api_deps)
    [port] = free_ports()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    app.state.stopping.set()
    server.should_exit = True
    thread.join(15)
    assert not thread.is_alive(), "open streams held the server up"


class Reader:
    """Reads one event stream in a thread: each message as (id, event, data)."""

    def __init__(self, url: str, headers: dict | None = None):
        self.messages: list[tuple[int, str, dict]] = []
        self.opened = threading.Event()
        self.client = httpx.Client(timeout=httpx.Timeout(30, read=None))
        self.thread = threading.Thread(target=self._read, args=(url, {**VIEWER, **(headers or {})}), daemon=True)
        self.thread.start()
        assert self.opened.wait(10), "the stream did not open"

    def _read(self, url: str, headers: dict) -> None:
        fields: dict = {}
        try:
            with self.client.stream("GET", url, headers=headers) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if line.startswith(": live"):
                        self.opened.set()
                    elif line == "" and fields:
                        self.messages.append((int(fields["id"]) if "id" in fields else None, fields["event"],
                                              json.loads(fields["data"])))
                        fields = {}
                    elif ":" in line and not line.startswith(":"):
                        name, _, value = line.partition(":")
                        fields[name] = value.strip()
        except httpx.HTTPError:
            pass  # closed by the test

    def wait_for(self, count: int, timeout: float = 15, event: str | None = None) -> list[tuple[int, str, dict]]:
        """The first `count` messages (of type `event` only if given; by default the CloudEvents, not `scene`)."""
        deadline = time.monotonic() + timeout
        while len(picked := [m for m in self.messages if m[1] == event or (event is None and m[0] is not None)]) < count:
            assert time.monotonic() < deadline, f"{len(picked)} of {count} events: {self.messages}"
            time.sleep(0.05)
        return picked

    def close(self) -> None:
        self.client.close()


def _connections(conn) -> int:
    return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()").fetchone()["count"]


def test_each_stream_gets_what_its_filter_asks_for_and_ten_streams_cost_one_connection(served, api_deps, conn):
    base, app = served
    ours, theirs = make_scene(conn, project="fox", status="generated"), make_scene(conn, project="owl", status="generated")
    before = _connections(conn)
    everything = Reader(f"{base}/api/events")
    by_scene = Reader(f"{base}/api/events?scene={ours}")
    by_project = Reader(f"{base}/api/events?project=owl")
    idle = [Reader(f"{base}/api/events?scene=999999") for _ in range(7)]
    try:
        first, second = scenes.approve(api_deps, ours), scenes.approve(api_deps, theirs)
        got = everything.wait_for(2)
        assert [(event, data["id"], data["data"]["scene_id"]) for _, event, data in got] == [
            ("scene.approved", first, ours), ("scene.approved", second, theirs)]
        assert got[0][0] < got[1][0]  # outbox ids, in order
        assert [data["id"] for _, _, data in by_scene.wait_for(1)] == [first]
        assert [data["id"] for _, _, data in by_project.wait_for(1)] == [second]
        time.sleep(0.5)
        assert len(by_scene.messages) == len(by_project.messages) == 1 and all(not r.messages for r in idle)
        # The approvals applied (by the handler, after the events): each filtered stream says the new status.
        drive.apply_unserved(api_deps, DEPLOYED, DEPLOYED)
        assert [data for _, _, data in by_scene.wait_for(1, event="scene")] == [
            {"scene_id": ours, "project": "fox", "status": "approved"}]
        assert [data["scene_id"] for _, _, data in by_project.wait_for(1, event="scene")] == [theirs]
        assert all(not r.messages for r in idle)
        # One LISTEN for the process, however many streams are open (the hub's, and no more).
        assert len(app.state.hub.streams) == 10
        assert _connections(conn) - before <= 1
    finally:
        for reader in [everything, by_scene, by_project, *idle]:
            reader.close()


def test_a_reconnecting_stream_gets_what_it_missed_after_last_event_id(served, api_deps, conn):
    base, _ = served
    a, b, c = (make_scene(conn, status="generated") for _ in range(3))
    reader = Reader(f"{base}/api/events")
    try:
        events = [scenes.approve(api_deps, s) for s in (a, b)]
        first_id = reader.wait_for(2)[0][0]
    finally:
        reader.close()
    events.append(scenes.approve(api_deps, c))  # while no stream is open
    resumed = Reader(f"{base}/api/events", headers={"Last-Event-ID": str(first_id)})
    try:
        assert [data["id"] for _, _, data in resumed.wait_for(2)] == events[1:]
        later = make_scene(conn, status="generated")
        events.append(scenes.approve(api_deps, later))  # and then live
        assert [data["id"] for _, _, data in resumed.wait_for(3)] == events[1:]
    finally:
        resumed.close()


def test_an_event_committed_after_a_later_one_is_not_missed(served, api_deps, conn, deps):
    base, _ = served
    slow_scene, fast_scene = make_scene(conn, status="generated"), make_scene(conn, status="generated")
    reader = Reader(f"{base}/api/events")
    try:
        slow = deps.connect()
        slow.execute("BEGIN")
        slow.execute("INSERT INTO outbox (event_id, topic, message_key, payload) VALUES ('slow-1', 'scene.approved', "
                     "%s, %s)", [str(slow_scene), json.dumps({"type": "scene.approved", "id": "slow-1",
                                                               "data": {"scene_id": slow_scene}})])
        fast = scenes.approve(api_deps, fast_scene)  # a higher id, committed first
        assert [data["id"] for _, _, data in reader.wait_for(1)] == [fast]
        slow.execute("COMMIT")
        slow.close()
        assert [data["id"] for _, _, data in reader.wait_for(2)] == [fast, "slow-1"]
    finally:
        reader.close()


def test_bad_filters_are_refused(served):
    base, _ = served
    answer = httpx.get(f"{base}/api/events?scene=0", headers=VIEWER)
    assert answer.status_code == 422 and answer.headers["content-type"] == "application/problem+json"
    assert httpx.get(f"{base}/api/events").status_code == 401


def test_the_hub_outlives_a_dropped_database_connection_and_loses_nothing(served, api_deps, conn):
    base, app = served
    a, b = make_scene(conn, status="generated"), make_scene(conn, status="generated")
    reader = Reader(f"{base}/api/events")
    try:
        first = scenes.approve(api_deps, a)
        reader.wait_for(1)
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        second = scenes.approve(api_deps, b)  # committed while the hub reconnects
        assert [data["id"] for _, _, data in reader.wait_for(2, timeout=30)] == [first, second]
        assert app.state.hub.thread.is_alive()
    finally:
        reader.close()
