"""The HTTP API against real PostgreSQL, S3 and the tiny model: every route, role and error."""

import json
import threading
import time

import pytest

from tests.conftest import API_KEYS as KEYS
from tests.conftest import make_scene, run_until

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"


def as_(role: str) -> dict:
    return {"X-API-Key": KEYS[role]}


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def _count(conn, table: str) -> int:
    return conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()["n"]


JOB = {"project": "studio", "scene": "harbour", "aspect": "16:9", "segments": [{"prompt": "a harbour", "seed": 7}]}


# -- access ---------------------------------------------------------------------------------------


def test_without_a_key_or_with_a_wrong_one_nothing_is_served(client):
    body = _problem(client.get("/api/scenes"), 401)
    assert body["detail"] == "give a valid API key in the X-API-Key header"
    assert client.get("/api/scenes").headers["www-authenticate"] == "ApiKey"
    _problem(client.get("/api/resolution-tiers", headers={"X-API-Key": KEYS["admin"][:-1]}), 401)
    _problem(client.post("/api/jobs", json=JOB), 401)


WRITES = [  # (method, path, body, the least role that may)
    ("post", "/api/resolution-tiers", {"name": "ultra", "width": 2560, "height": 1440}, "admin"),
    ("patch", "/api/resolution-tiers/draft", {"speed_factor": 0.5}, "admin"),
    ("delete", "/api/resolution-tiers/draft", None, "admin"),
    ("post", "/api/jobs", JOB, "artist"),
    ("post", "/api/scenes/1/approve", None, "artist"),
    ("post", "/api/scenes/1/upscale", {"target_tier": "production"}, "artist"),
    ("post", "/api/deliveries", {"project": "studio", "scene_ids": [1]}, "artist"),
    ("post", "/api/deliveries/preflight", {"project": "studio", "scene_ids": [1]}, "artist"),
    ("post", "/api/models", {"name": "sdxl", "source": "org/name"}, "admin"),
    ("delete", "/api/models/tiny", None, "admin"),
]


@pytest.mark.parametrize("method,path,body,least", WRITES, ids=[f"{m} {p}" for m, p, _, _ in WRITES])
def test_a_role_below_the_one_needed_is_refused_and_nothing_changes(client, conn, method, path, body, least):
    before = {t: _count(conn, t) for t in ("resolution_tiers", "scenes", "outbox", "deliveries", "models")}
    for role in ("viewer", "artist"):
        if role == least:
            break
        response = client.request(method, path, json=body, headers=as_(role))
        problem = _problem(response, 403)
        assert problem["detail"] == f"the {role} role may not do this; it needs {least}"
    assert {t: _count(conn, t) for t in before} == before


def test_every_role_reads(client, conn):
    scene = make_scene(conn)
    for role in KEYS:
        assert client.get("/api/resolution-tiers", headers=as_(role)).status_code == 200
        assert [s["scene_id"] for s in client.get("/api/scenes", headers=as_(role)).json()] == [scene]
        assert client.get(f"/api/scenes/{scene}", headers=as_(role)).json()["tier_label"] == "Draft"
        assert client.get("/api/session", headers=as_(role)).json() == {"name": f"{role}-1", "role": role}


def test_the_browser_session_is_a_random_id_in_an_http_only_cookie_revoked_on_sign_out(client, api_deps):
    _problem(client.post("/api/session", json={"api_key": "not-a-key"}), 401)
    response = client.post("/api/session", json={"api_key": KEYS["artist"]})
    assert response.json() == {"name": "artist-1", "role": "artist"}
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie  # plain HTTP here
    session = client.cookies["tierflow_api_key"]
    assert KEYS["artist"] not in cookie and len(session) >= 40
    assert client.get("/api/session").json()["role"] == "artist"  # the cookie alone
    # Behind an HTTPS proxy the cookie is Secure.
    behind_tls = client.post("/api/session", json={"api_key": KEYS["viewer"]}, headers={"X-Forwarded-Proto": "https"})
    assert "Secure" in behind_tls.headers["set-cookie"]
    client.cookies.set("tierflow_api_key", session)
    assert client.delete("/api/session").status_code == 204
    _problem(client.get("/api/session"), 401)
    # Signed out means revoked: the copied session id is no good any more.
    client.cookies.set("tierflow_api_key", session)
    _problem(client.get("/api/session"), 401)
    # A key in the cookie is not a session.
    client.cookies.set("tierflow_api_key", KEYS["artist"])
    _problem(client.get("/api/session"), 401)


# -- tiers ----------------------------------------------------------------------------------------


def test_bodies_over_the_limit_get_413_before_they_are_read_with_or_without_a_key(client, conn):
    big = b"{" + b" " * (5 * 1024 * 1024) + b"}"
    for headers in (as_("artist"), {}):
        refused = client.post("/api/jobs", headers={**headers, "Content-Type": "application/json"}, content=big)
        body = _problem(refused, 413)
        assert body["detail"] == "request bodies are limited to 1048576 bytes (TIERFLOW_MAX_BODY_BYTES)"

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(5):
            yield b" " * (1024 * 1024)

    assert _problem(client.post("/api/jobs", headers={**as_("artist"), "Content-Type": "application/json"},
                                content=chunks()), 413)
    assert _count(conn, "scenes") == 0
    assert client.get("/api/resolution-tiers", headers=as_("viewer")).status_code == 200


def test_a_deliverable_draft_is_refused(client, conn):
    refused = _problem(client.patch("/api/resolution-tiers/draft", headers=as_("admin"),
                                    json={"is_deliverable": True}), 409)
    assert "tier 'draft' cannot be deliverable: only production and tiers ranked at or above it" in refused["detail"]
    assert conn.execute("SELECT is_deliverable FROM resolution_tiers WHERE name = 'draft'").fetchone() == {
        "is_deliverable": False}


def test_admins_manage_tiers(client, conn):
    names = [t["name"] for t in client.get("/api/resolution-tiers", headers=as_("viewer")).json()]
    assert names == ["draft", "preview", "production"]

    created = client.post("/api/resolution-tiers", headers=as_("admin"),
                          json={"name": "ultra-hd", "width": 3840, "height": 2160, "is_deliverable": True})
    assert created.status_code == 201
    assert {k: created.json()[k] for k in ("name", "label", "width", "height", "is_deliverable", "is_builtin")} == {
        "name": "ultra-hd", "label": "Ultra-Hd", "width": 3840, "height": 2160, "is_deliverable": True,
        "is_builtin": False}
    assert _problem(client.post("/api/resolution-tiers", headers=as_("admin"),
                                json={"name": "ultra-hd", "width": 3840, "height": 2160}), 409)["detail"]

    changed = client.patch("/api/resolution-tiers/ultra-hd", headers=as_("admin"), json={"name": "uhd", "is_default": True})
    assert changed.status_code == 200 and changed.json()["name"] == "uhd" and changed.json()["is_default"]
    assert conn.execute("SELECT name FROM resolution_tiers WHERE is_default").fetchall() == [{"name": "uhd"}]

    assert client.delete("/api/resolution-tiers/uhd", headers=as_("admin")).status_code == 409  # the default
    client.patch("/api/resolution-tiers/draft", headers=as_("admin"), json={"is_default": True})
    assert client.delete("/api/resolution-tiers/uhd", headers=as_("admin")).json() == {"deleted": "uhd"}
    assert "built-in" in _problem(client.delete("/api/resolution-tiers/draft", headers=as_("admin")), 409)["detail"]
    assert _problem(client.delete("/api/resolution-tiers/nope", headers=as_("admin")), 404)["detail"]


def test_invalid_tiers_are_refused_with_every_problem_and_nothing_written(client, conn):
    before = _count(conn, "resolution_tiers")
    body = _problem(client.post("/api/resolution-tiers", headers=as_("admin"),
                                json={"name": "Bad Name", "width": 500, "height": 0}), 422)
    assert "name" in body["detail"] and "width" in body["detail"] and "height" in body["detail"]
    body = _problem(client.post("/api/resolution-tiers", headers=as_("admin"),
                                json={"name": "x", "width": "wide", "height": 8, "colour": "red"}), 422)
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "width"), ("body", "colour")}
    _problem(client.post("/api/resolution-tiers", headers={**as_("admin"), "content-type": "application/json"},
                         content=b"{not json"), 422)
    assert _count(conn, "resolution_tiers") == before


# -- jobs and scenes ------------------------------------------------------------------------------


def test_a_job_gets_the_default_tier_or_the_chosen_one(client, conn):
    response = client.post("/api/jobs", headers=as_("artist"), json=JOB)
    assert response.status_code == 202
    scene = response.json()
    assert (scene["tier"], scene["tier_label"], scene["width"], scene["height"]) == ("draft", "Draft", 512, 288)
    assert scene["status"] in ("pending", "generating") and scene["segments"][0]["recipe"]["seed"] == 7

    client.patch("/api/resolution-tiers/preview", headers=as_("admin"), json={"is_default": True})
    chosen = client.post("/api/jobs", headers=as_("artist"), json={**JOB, "aspect": "9:16", "tier": "production"})
    defaulted = client.post("/api/jobs", headers=as_("artist"), json={**JOB, "segments": [{"prompt": "p"}]})
    assert (chosen.json()["tier"], chosen.json()["width"], chosen.json()["height"]) == ("production", 600, 1080)
    assert defaulted.json()["tier"] == "preview"
    assert isinstance(defaulted.json()["segments"][0]["recipe"]["seed"], int)  # random, and stored
    assert scene["segments"][0]["recipe"]["noise"] == "consistent-v1"  # the default of new scenes
    native = client.post("/api/jobs", headers=as_("artist"), json={**JOB, "noise": "native"})
    assert native.json()["segments"][0]["recipe"]["noise"] == "native"


@pytest.mark.parametrize("change,status,words", [
    ({"tier": "imax"}, 404, "imax"),
    ({"aspect": "wide"}, 422, "aspect"),
    ({"segments": []}, 422, "segments"),
    ({"segments": [{"prompt": "p", "steps": 0}]}, 422, "steps"),
    ({"project": " "}, 422, "project"),
    ({"colour": "red"}, 422, "colour"),
    ({"noise": "perlin"}, 422, "noise"),
    ({"project": "nul\u0000byte"}, 422, "PostgreSQL refused"),
])
def test_a_bad_job_is_refused_precisely_and_writes_nothing(client, conn, change, status, words):
    before = {t: _count(conn, t) for t in ("scenes", "segments", "generation_jobs", "outbox", "projects")}
    body = _problem(client.post("/api/jobs", headers=as_("artist"), json={**JOB, **change}), status)
    assert words in body["detail"]
    assert {t: _count(conn, t) for t in before} == before


def test_scene_refusals(client, conn):
    draft = make_scene(conn)  # generated, not approved
    body = _problem(client.post(f"/api/scenes/{draft}/upscale", headers=as_("artist")), 409)
    assert body["detail"].startswith(f"scene {draft} is not approved; approve it before upscaling to Production")
    _problem(client.post(f"/api/scenes/{draft}/upscale", headers=as_("artist"), json={"target_tier": "draft"}), 409)
    _problem(client.post(f"/api/scenes/{draft}/upscale", headers=as_("artist"), json={"target_tier": "imax"}), 404)
    generating = make_scene(conn, status="generating")
    assert "only a fully generated scene" in _problem(
        client.post(f"/api/scenes/{generating}/approve", headers=as_("artist")), 409)["detail"]
    _problem(client.get("/api/scenes/999999", headers=as_("viewer")), 404)
    _problem(client.get("/api/scenes/0", headers=as_("viewer")), 422)
    _problem(client.get(f"/api/scenes/{2**64}", headers=as_("viewer")), 422)
    _problem(client.get(f"/api/scenes/{draft}/segments/0/poster", headers=as_("viewer")), 404)
    _problem(client.get(f"/api/scenes/{draft}/segments/0/thumbnail", headers=as_("viewer")), 404)
    _problem(client.get("/api/nothing-here", headers=as_("viewer")), 404)
    assert conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"] == 2


def test_live_streams_are_limited_per_key_and_given_back_when_they_end(client, conn):
    scene = make_scene(conn, status="generated")  # settled: its stream ends after one event
    streams, most = client.app.state.streams, client.app.state.deps.settings.max_streams_per_key
    for _ in range(most):  # what the viewer's key already holds open elsewhere
        assert streams.open("viewer-1", most)
    refused = _problem(client.get(f"/api/scenes/{scene}/events", headers=as_("viewer")), 429)
    assert refused["detail"] == (f"key 'viewer-1' has {most} live streams open (TIERFLOW_MAX_STREAMS_PER_KEY); "
                                 "close one first")
    assert client.get(f"/api/scenes/{scene}/events", headers=as_("artist")).status_code == 200  # another key
    streams.close("viewer-1")
    for _ in range(3):  # each stream gives its place back when it ends
        assert client.get(f"/api/scenes/{scene}/events", headers=as_("viewer")).status_code == 200
    assert streams.open("viewer-1", most) and not streams.open("viewer-1", most)  # one place left, as before


def test_the_event_stream_follows_a_scene_until_it_settles(client, conn):
    scene = make_scene(conn, status="generating")

    def finish():
        time.sleep(1.2)
        conn.execute("UPDATE scenes SET status = 'generated' WHERE id = %s", [scene])

    threading.Thread(target=finish).start()
    with client.stream("GET", f"/api/scenes/{scene}/events", headers=as_("viewer")) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block]
    assert [json.loads(e.split("data: ", 1)[1])["status"] for e in events] == ["generating", "generated"]
    assert all(e.startswith("event: scene\n") for e in events)
    _problem(client.get("/api/scenes/999999/events", headers=as_("viewer")), 404)


# -- the whole flow, rendered ---------------------------------------------------------------------


def test_draft_approve_upscale_and_deliver_over_http(client, api_deps, conn):
    def settle(done):
        run_until(api_deps, done)

    def scene(scene_id):
        return client.get(f"/api/scenes/{scene_id}", headers=as_("viewer")).json()

    # 1. a Draft, rendered, with its files
    quick = [{"prompt": "a harbour", "seed": 7, "frames": 2, "steps": 1}]  # a Production render on a CPU is slow
    draft = client.post("/api/jobs", headers=as_("artist"), json={**JOB, "tier": "draft", "segments": quick}
                        ).json()["scene_id"]
    settle(lambda c: scene(draft)["status"] == "generated")
    shown = scene(draft)
    assert shown["progress"] == 100.0 and shown["segments"][0]["urls"]["comparison"] is None
    poster = client.get(shown["segments"][0]["urls"]["poster"], headers=as_("viewer"))
    video = client.get(shown["segments"][0]["urls"]["video"], headers=as_("viewer"))
    assert poster.headers["content-type"] == "image/png" and poster.content.startswith(b"\x89PNG")
    assert video.headers["content-type"] == "video/mp4" and video.content[4:8] == b"ftyp"
    part = client.get(shown["segments"][0]["urls"]["video"], headers={**as_("viewer"), "Range": "bytes=4-7"})
    assert (part.status_code, part.content) == (206, b"ftyp")
    assert part.headers["content-range"] == f"bytes 4-7/{len(video.content)}"
    _problem(client.get(shown["segments"][0]["urls"]["video"],
                        headers={**as_("viewer"), "Range": f"bytes={len(video.content) + 10}-"}), 416)

    # 2. approve, then one click: the same target every time
    assert client.post(f"/api/scenes/{draft}/approve", headers=as_("artist")).status_code == 202
    settle(lambda c: scene(draft)["status"] == "approved")
    first = client.post(f"/api/scenes/{draft}/upscale", headers=as_("artist"))
    again = client.post(f"/api/scenes/{draft}/upscale", headers=as_("artist"), json={"target_tier": "production"})
    assert first.status_code == again.status_code == 202
    target = first.json()["scene_id"]
    assert again.json() == {"scene_id": target, "source_scene_id": draft, "target_tier": "production"}
    settle(lambda c: scene(target)["status"] == "generated")
    production = scene(target)
    assert (production["tier_label"], production["width"], production["height"]) == ("Production", 1920, 1080)
    assert [step["scene_id"] for step in production["lineage"]] == [draft, target]
    assert scene(draft)["upscale_targets"] == [{"scene_id": target, "tier": "production", "tier_label": "Production"}]
    comparison = client.get(production["segments"][0]["urls"]["comparison"], headers=as_("viewer"))
    assert comparison.content.startswith(b"\x89PNG") and production["segments"][0]["ssim"] is not None

    # 3. delivery: the Draft is refused with its reason, the Production version is delivered
    check = client.post("/api/deliveries/preflight", headers=as_("artist"),
                        json={"project": "studio", "scene_ids": [draft, target]}).json()
    assert check["deliverable"] is False
    assert [(r["code"], r["scene_id"]) for r in check["reasons"]] == [("TIER_NOT_DELIVERABLE", draft)]
    assert check["summary"].startswith("Delivery refused: 1 problem(s) with scene(s)")
    assert client.post("/api/deliveries/preflight", headers=as_("artist"),
                       json={"project": "studio", "scene_ids": [target]}).json() == {
        "deliverable": True, "summary": None, "reasons": []}
    assert _count(conn, "deliveries") == 0  # a preflight records nothing

    rejected = client.post("/api/deliveries", headers=as_("artist"), json={"project": "studio", "scene_ids": [draft]})
    accepted = client.post("/api/deliveries", headers=as_("artist"), json={"project": "studio", "scene_ids": [target]})
    assert rejected.status_code == accepted.status_code == 202 and accepted.json()["status"] == "requested"
    ids = [rejected.json()["delivery_id"], accepted.json()["delivery_id"]]
    settle(lambda c: all(client.get(f"/api/deliveries/{i}", headers=as_("viewer")).json()["status"] != "requested"
                         for i in ids))
    refused, delivered = (client.get(f"/api/deliveries/{i}", headers=as_("viewer")).json() for i in ids)
    assert refused["status"] == "rejected" and refused["reasons"][0]["code"] == "TIER_NOT_DELIVERABLE"
    assert delivered["status"] == "completed" and delivered["manifest_url"].startswith("http")
    _problem(client.get("/api/deliveries/999999", headers=as_("viewer")), 404)
    _problem(client.post("/api/deliveries", headers=as_("artist"), json={"project": "nope", "scene_ids": [target]}), 404)
    _problem(client.post("/api/deliveries", headers=as_("artist"), json={"project": "studio", "scene_ids": []}), 422)


# -- workers --------------------------------------------------------------------------------------


def test_workers_are_listed_alive_by_default_and_all_on_request(client, conn):
    from shared.domain import fleet

    for name in ("busy", "gone", "silent"):
        fleet.register_worker(conn, f"gpu:{name}", host="gpu", pid=7, device="cuda:0", concurrency=1, models=[])
    fleet.record_worker(conn, "gpu:busy", state="busy", job_ids=[41], cached_models=["m"], jobs_done=3,
                        busy_seconds=9.5, idle_seconds=0.5)
    fleet.record_worker(conn, "gpu:gone", state="stopped", job_ids=[], cached_models=[], jobs_done=1,
                        busy_seconds=1, idle_seconds=1)
    conn.execute("UPDATE workers SET heard_at = now() - interval '1 hour' WHERE id = 'gpu:silent'")
    _problem(client.get("/api/workers"), 401)
    [busy] = client.get("/api/workers", headers=as_("viewer")).json()
    assert {k: busy[k] for k in ("worker_id", "state", "job_id", "cached_models", "jobs_done", "busy_seconds")} == {
        "worker_id": "gpu:busy", "state": "busy", "job_id": 41, "cached_models": ["m"], "jobs_done": 3,
        "busy_seconds": 9.5}
    everyone = client.get("/api/workers", params={"all": "true"}, headers=as_("viewer")).json()
    assert sorted((w["worker_id"], w["state"]) for w in everyone) == [
        ("gpu:busy", "busy"), ("gpu:gone", "stopped"), ("gpu:silent", "lost")]
