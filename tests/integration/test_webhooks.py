"""Signed webhooks: each matching event is POSTed as a CloudEvent signed per Standard Webhooks,
retried with backoff from the delivery table, never lost while a receiver is down, and an
endpoint failing for too long is disabled with the reason."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook

from functions.cli.jobs import DEPLOYED
from functions.http.app import create_app
from infra.net import free_ports
from shared.bootstrap import Deps
from shared.config import Settings
from shared.domain import scenes, webhooks
from shared.errors import InvalidInput, NotFound
from shared.runtime import drive
from shared.runtime.supervise import Supervised
from tests.conftest import API_KEYS, make_scene

pytestmark = pytest.mark.integration


class Receiver(ThreadingHTTPServer):
    """A tracker's webhook receiver: keeps each POST (headers and body); answers 500 to the first
    `failures` of them."""

    def __init__(self, port: int = 0, failures: int = 0):
        self.posts: list[tuple[dict, bytes]] = []
        self.failures = failures
        super().__init__(("127.0.0.1", port), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/tierflow"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = 500 if len(self.server.posts) <= self.server.failures else 204
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.shutdown()
    server.server_close()


def _deps(database_url, tmp_path, **settings) -> Deps:
    return Deps(Settings(database_url=database_url, home=tmp_path / "home", **settings))


def _approve(deps, conn, project: str = "studio") -> tuple[int, str]:
    scene = make_scene(conn, project=project, status="generated")
    event_id = scenes.approve(deps, scene)
    drive.apply_unserved(deps, DEPLOYED, DEPLOYED)  # the handlers: the approval and its webhook rows
    return scene, event_id


def _verified(secret: str, post: tuple[dict, bytes]) -> dict:
    headers, body = post
    assert headers["content-type"] == "application/cloudevents+json; charset=utf-8"
    return Webhook(secret).verify(body, headers)  # raises unless the signature and timestamp hold


def test_a_receiver_registered_for_approvals_gets_one_signed_post_per_approval(receiver, run_cli, database_url,
                                                                               deps, conn):
    added = run_cli("webhooks", "add", receiver.url, "--events", "scene.approved", "--json",
                    env={"TIERFLOW_DATABASE_URL": database_url})
    assert added.returncode == 0, added.stderr
    endpoint = json.loads(added.stdout)
    secret = endpoint["secret"]
    assert secret.startswith("whsec_") and endpoint["event_types"] == ["scene.approved"]

    approvals = [_approve(deps, conn) for _ in range(2)]
    make_scene(conn, status="generated")  # not approved: nothing is sent for it
    assert webhooks.send_due(deps) == {"delivered": 2, "failures": []}
    assert webhooks.send_due(deps) == {"delivered": 0, "failures": []}  # each once

    assert len(receiver.posts) == 2
    for (scene, event_id), post in zip(approvals, receiver.posts, strict=True):
        event = _verified(secret, post)
        assert post[0]["webhook-id"] == event_id == event["id"]
        assert (event["specversion"], event["type"], event["subject"], event["data"]["scene_id"]) == (
            "1.0", "scene.approved", str(scene), scene)
        assert event["traceparent"]
    with pytest.raises(Exception, match="No matching signature"):
        Webhook("whsec_" + "A" * 44).verify(receiver.posts[0][1], receiver.posts[0][0])

    # A redelivered approval (the same event again) queues nothing twice.
    conn.execute("DELETE FROM processed_events WHERE consumer = 'on_event_webhooks'")
    conn.execute("INSERT INTO bus_deliveries (consumer, outbox_id) SELECT 'on_event_webhooks', id FROM outbox "
                 "WHERE topic = 'scene.approved'")
    drive.apply_unserved(deps, DEPLOYED, DEPLOYED)
    assert webhooks.send_due(deps)["delivered"] == 0 and len(receiver.posts) == 2

    listed = json.loads(run_cli("webhooks", "list", "--json", env={"TIERFLOW_DATABASE_URL": database_url}).stdout)
    assert [(e["id"], e["undelivered"], e["enabled"], "secret" in e) for e in listed] == [
        (endpoint["id"], 0, True, False)]


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_try(database_url, tmp_path, conn):
    receiver = Receiver(failures=2)
    deps = _deps(database_url, tmp_path, webhook_retry_seconds=0.1)
    try:
        endpoint = webhooks.add_endpoint(deps, receiver.url, ["scene.approved"])
        _, event_id = _approve(deps, conn)
        outcomes = []
        deadline = time.monotonic() + 10
        while not outcomes or not outcomes[-1]["delivered"]:
            assert time.monotonic() < deadline, outcomes
            outcomes.append(webhooks.send_due(deps))
            time.sleep(0.05)
        tries = [o for o in outcomes if o["delivered"] or o["failures"]]
        assert [len(o["failures"]) for o in tries] == [1, 1, 0]
        assert tries[0]["failures"][0] == (f"event {event_id} to webhook {endpoint['id']} ({receiver.url}) failed: "
                                           "HTTP 500 Internal Server Error; tried again in 0.1 s")
        assert tries[1]["failures"][0].endswith("tried again in 0.2 s")  # doubling
        assert [p[0]["webhook-id"] for p in receiver.posts] == [event_id] * 3  # one id: receivers de-duplicate
        for post in receiver.posts:
            _verified(endpoint["secret"], post)
        row = conn.execute("SELECT attempts, last_status, last_error, delivered_at FROM webhook_deliveries").fetchone()
        assert (row["attempts"], row["last_status"], row["last_error"]) == (3, 204, None) and row["delivered_at"]
        assert webhooks.get_endpoint(conn, endpoint["id"])["failing_since"] is None  # a success clears it
    finally:
        receiver.shutdown()
        receiver.server_close()
        deps.close()


def test_events_wait_while_the_receiver_is_down_and_a_day_of_failures_disables_it_with_the_reason(
        database_url, tmp_path, conn):
    [port] = free_ports()  # nothing listens there yet
    deps = _deps(database_url, tmp_path, webhook_retry_seconds=0.05, webhook_disable_after_seconds=1.0)
    url = f"http://127.0.0.1:{port}/hook"
    endpoint = webhooks.add_endpoint(deps, url, ["scene.approved", "delivery.completed"])
    first = _approve(deps, conn)[1]
    failures = webhooks.send_due(deps)["failures"]
    assert len(failures) == 1 and "failed: no answer: [Errno 111] Connection refused" in failures[0]

    deadline = time.monotonic() + 10
    while webhooks.get_endpoint(conn, endpoint["id"])["enabled"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
        webhooks.send_due(deps)
    disabled = webhooks.get_endpoint(conn, endpoint["id"])
    assert disabled["disabled_reason"].startswith("every try failed since ")
    assert disabled["disabled_reason"].endswith("the last: no answer: [Errno 111] Connection refused")

    second = _approve(deps, conn)[1]  # recorded while disabled, not sent
    assert webhooks.send_due(deps) == {"delivered": 0, "failures": []}
    assert webhooks.get_endpoint(conn, endpoint["id"])["undelivered"] == 2

    receiver = Receiver(port=port)  # the receiver is back
    try:
        assert webhooks.enable_endpoint(deps, endpoint["id"])["enabled"]
        assert webhooks.send_due(deps)["delivered"] == 2
        assert [_verified(endpoint["secret"], p)["id"] for p in receiver.posts] == [first, second]  # nothing lost
    finally:
        receiver.shutdown()
        receiver.server_close()
        deps.close()


def test_an_endpoint_for_one_project_gets_only_that_projects_events(receiver, deps, conn):
    make_scene(conn, project="other"), make_scene(conn, project="studio")  # the projects exist
    webhooks.add_endpoint(deps, receiver.url, ["scene.approved"], project="studio")
    ours = _approve(deps, conn, project="studio")[1]
    _approve(deps, conn, project="other")
    assert webhooks.send_due(deps)["delivered"] == 1
    assert [p[0]["webhook-id"] for p in receiver.posts] == [ours]


def test_the_sender_loop_of_the_runtime_posts_what_the_handlers_queue(receiver, deps, conn):
    endpoint = webhooks.add_endpoint(deps, receiver.url, ["scene.approved"])
    stop = threading.Event()
    sender = threading.Thread(target=drive.send_webhooks_until, args=(deps, stop.is_set, Supervised("webhook sender")))
    sender.start()
    try:
        _, event_id = _approve(deps, conn)
        deadline = time.monotonic() + 10
        while not receiver.posts:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _verified(endpoint["secret"], receiver.posts[0])["id"] == event_id
    finally:
        stop.set()
        sender.join(10)
    assert not sender.is_alive()


def test_bad_registrations_are_refused_with_the_reason_and_nothing_is_written(deps, conn, run_cli, database_url):
    with pytest.raises(InvalidInput, match=r"^webhook URL 'ftp://x' is not an http:// or https:// URL with a host$"):
        webhooks.add_endpoint(deps, "ftp://x", ["scene.approved"])
    with pytest.raises(InvalidInput, match=r"^not an event type a webhook can take: generation\.progress "):
        webhooks.add_endpoint(deps, "http://127.0.0.1/x", ["scene.approved", "generation.progress"])
    with pytest.raises(NotFound, match=r"^project 'nope' does not exist$"):
        webhooks.add_endpoint(deps, "http://127.0.0.1/x", ["scene.approved"], project="nope")
    refused = run_cli("webhooks", "add", "http://", "--events", "scene.approved",
                      env={"TIERFLOW_DATABASE_URL": database_url})
    assert (refused.returncode, refused.stderr.strip()) == (
        2, "tierflow: webhook URL 'http://' is not an http:// or https:// URL with a host")
    gone = run_cli("webhooks", "remove", "42", env={"TIERFLOW_DATABASE_URL": database_url})
    assert (gone.returncode, gone.stderr.strip()) == (1, "tierflow: webhook 42 does not exist")
    assert conn.execute("SELECT count(*) FROM webhook_endpoints").fetchone()["count"] == 0


def test_the_api_lets_admins_register_list_and_remove_endpoints(api_deps, conn, receiver):
    with TestClient(create_app(api_deps)) as client:
        admin, artist = {"X-API-Key": API_KEYS["admin"]}, {"X-API-Key": API_KEYS["artist"]}
        body = {"url": receiver.url, "events": ["scene.approved", "delivery.completed"]}
        assert client.post("/api/webhooks", json=body, headers=artist).status_code == 403
        assert client.get("/api/webhooks", headers=artist).status_code == 403
        bad = client.post("/api/webhooks", json={**body, "events": ["generation.progress"]}, headers=admin)
        assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"
        assert conn.execute("SELECT count(*) FROM webhook_endpoints").fetchone()["count"] == 0

        created = client.post("/api/webhooks", json=body, headers=admin)
        assert created.status_code == 201, created.text
        endpoint = created.json()
        assert endpoint["secret"].startswith("whsec_") and endpoint["created_by"] == "admin-1"
        listed = client.get("/api/webhooks", headers=admin).json()
        assert [(e["id"], e["event_types"], "secret" in e) for e in listed] == [
            (endpoint["id"], ["scene.approved", "delivery.completed"], False)]
        assert client.delete(f"/api/webhooks/{endpoint['id']}", headers=admin).json()["id"] == endpoint["id"]
        assert client.delete(f"/api/webhooks/{endpoint['id']}", headers=admin).status_code == 404
        assert "/api/webhooks" in client.get("/openapi.json").json()["paths"]

