"""The HTTP API does what the CLI does: retry, usage, project settings, deliveries, workers and
dead letters, with cursor pagination (`limit`, `after`, a `Link: rel="next"` header) on every list."""

import json
import re
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from events import SceneApproved
from functions.handlers.registry import FUNCTIONS
from functions.http.app import create_app
from shared.domain import catalogue, fleet, usage, webhooks
from shared.runtime import bus
from tests.conftest import API_KEYS as KEYS
from tests.conftest import make_scene
from tests.integration.test_http_api import _count, _problem, as_

pytestmark = pytest.mark.integration

NEXT = re.compile(r'<(/api/[^>]*)>; rel="next"')
ALL = list(FUNCTIONS.values())


def _walk(client, url: str, role: str = "viewer") -> tuple[list[list], list[str]]:
    """Follow `Link: rel="next"` from `url` until a page has none: the pages and the links followed."""
    pages, links = [], []
    while True:
        response = client.get(url, headers=as_(role))
        assert response.status_code == 200, response.text
        pages.append(response.json())
        link = response.headers.get("link")
        if link is None:
            return pages, links
        url = NEXT.fullmatch(link).group(1)
        links.append(link)
        assert len(pages) < 20, "the links never end"


SUCCEEDED = f"status = 'succeeded', video_key = 'video.mp4', sha256 = '{'a' * 64}'"  # what the table asks of one


def _job(project: str, prompts: list[str]) -> dict:
    return {"project": project, "scene": "harbour", "aspect": "16:9",
            "segments": [{"prompt": p, "seed": 7 + i, "frames": 2, "steps": 1} for i, p in enumerate(prompts)]}


# -- pagination -----------------------------------------------------------------------------------


def test_scenes_page_newest_first_following_the_next_links_to_the_end(client, conn):
    fox = [make_scene(conn, project="fox") for _ in range(7)]
    others = [make_scene(conn, project="hare") for _ in range(2)]
    pages, links = _walk(client, "/api/scenes?project=fox&limit=3")

    assert [len(p) for p in pages] == [3, 3, 1]
    ids = [s["scene_id"] for p in pages for s in p]
    assert ids == sorted(fox, reverse=True) and len(set(ids)) == 7  # every one, once, newest first
    # The cursor is the last scene shown; the other parameters stay.
    assert links == [f'</api/scenes?after={ids[2]}&limit=3&project=fox>; rel="next"',
                     f'</api/scenes?after={ids[5]}&limit=3&project=fox>; rel="next"']
    # A page is the same scene JSON as the whole list.
    whole = client.get("/api/scenes", params={"project": "fox"}, headers=as_("viewer"))
    assert "link" not in whole.headers and [s for p in pages for s in p] == whole.json()
    # Exactly `limit` left: no link to an empty page.
    exact = client.get("/api/scenes", params={"limit": 9}, headers=as_("viewer"))
    assert "link" not in exact.headers and len(exact.json()) == 9
    # `after` alone: older than that id, whatever project.
    older = client.get("/api/scenes", params={"after": others[0]}, headers=as_("viewer")).json()
    assert [s["scene_id"] for s in older] == sorted(fox, reverse=True)


def _tiers(client, conn, api_deps):
    for name, size in (("ultra", 2560), ("imax", 4096)):
        assert client.post("/api/resolution-tiers", headers=as_("admin"),
                           json={"name": name, "width": size, "height": size}).status_code == 201
    return "/api/resolution-tiers", "name", ["draft", "preview", "production", "ultra", "imax"]


def _models(client, conn, api_deps):
    for name in ("delta", "alpha", "charlie", "bravo", "echo"):
        catalogue.add(conn, name, source=f"org/{name}", revision="main", pin="0" * 40)
    return "/api/models", "name", sorted(r["name"] for r in catalogue.rows(conn))


def _webhooks(client, conn, api_deps):
    made = [webhooks.add_endpoint(api_deps, f"https://hooks.example/{n}", ["scene.approved"])["id"] for n in range(5)]
    return "/api/webhooks", "id", made


def _workers(client, conn, api_deps):
    for name in ("w1", "w2", "w3", "w4", "w5"):
        fleet.register_worker(conn, f"gpu:{name}", host="gpu", pid=7, device="cuda:0", concurrency=1, models=[])
    # Three started at the same moment: the id orders them, and the cursor still skips none.
    conn.execute("UPDATE workers SET started_at = now() - interval '1 minute' WHERE id IN ('gpu:w2', 'gpu:w3', 'gpu:w4')")
    return "/api/workers", "worker_id", ["gpu:w5", "gpu:w1", "gpu:w2", "gpu:w3", "gpu:w4"]


def _deliveries(client, conn, api_deps):
    make_scene(conn, project="fox")
    made = [conn.execute("INSERT INTO deliveries (project_id, requested_scene_ids) "
                         "SELECT id, '{1}' FROM projects WHERE name = 'fox' RETURNING id").fetchone()["id"]
            for _ in range(5)]
    return "/api/deliveries", "delivery_id", made[::-1]


def _dead_letters(client, conn, api_deps):
    made = [conn.execute("INSERT INTO dead_letters (consumer, topic, payload, reason) "
                         "VALUES ('on_scene_approved', 'scene.approved', '\\x7b7d', %s) RETURNING id",
                         [f"refused {n}"]).fetchone()["id"] for n in range(5)]
    return "/api/dead-letters", "id", made


def _projects(client, conn, api_deps):
    for name in ("otter", "badger", "fox", "elk", "crow"):
        make_scene(conn, project=name)
    return "/api/projects", "project", ["badger", "crow", "elk", "fox", "otter"]


LISTS = [_tiers, _models, _webhooks, _workers, _deliveries, _dead_letters, _projects]


@pytest.mark.parametrize("setup", LISTS, ids=[f.__name__.strip("_") for f in LISTS])
def test_every_list_pages_by_cursor_without_gaps_or_repeats(client, conn, api_deps, setup):
    path, key, expected = setup(client, conn, api_deps)
    pages, links = _walk(client, f"{path}?limit=2", role="admin")

    keys = [item[key] for p in pages for item in p]
    assert keys == expected
    assert [len(p) for p in pages] == [2] * (len(expected) // 2) + ([len(expected) % 2] if len(expected) % 2 else [])
    assert links[0] == f'<{path}?after={quote(str(keys[1]), safe="")}&limit=2>; rel="next"'
    everything = client.get(path, headers=as_("admin"))
    assert "link" not in everything.headers and [i[key] for i in everything.json()] == expected


def test_the_workers_link_keeps_all_and_an_unknown_cursor_is_named(client, conn):
    for name in ("a", "b", "c"):
        fleet.register_worker(conn, f"gpu:{name}", host="gpu", pid=7, device="cuda:0", concurrency=1, models=[])
    fleet.record_worker(conn, "gpu:b", state="stopped", job_ids=[], cached_models=[], jobs_done=1,
                        busy_seconds=1, idle_seconds=1)
    alive, _ = _walk(client, "/api/workers?limit=1")
    assert [w["worker_id"] for p in alive for w in p] == ["gpu:c", "gpu:a"]
    pages, links = _walk(client, "/api/workers?all=true&limit=1")
    assert [w["worker_id"] for p in pages for w in p] == ["gpu:c", "gpu:b", "gpu:a"]
    assert links[0] == '</api/workers?after=gpu%3Ac&limit=1&all=true>; rel="next"'
    body = _problem(client.get("/api/workers", params={"after": "gpu:zz"}, headers=as_("viewer")), 404)
    assert body["detail"] == "worker 'gpu:zz' is not in the register (any more); list from the first page"


def test_an_unknown_tier_cursor_is_a_404(client):
    body = _problem(client.get("/api/resolution-tiers", params={"after": "imax"}, headers=as_("viewer")), 404)
    assert "imax" in body["detail"]


LIST_PATHS = ["/api/scenes", "/api/deliveries", "/api/workers", "/api/dead-letters", "/api/models",
              "/api/resolution-tiers", "/api/webhooks", "/api/projects"]
BAD_PAGES = [({"limit": 0}, "limit"), ({"limit": 1001}, "limit"), ({"limit": "many"}, "limit")]
ID_CURSORS = ["/api/scenes", "/api/deliveries", "/api/dead-letters", "/api/webhooks"]


@pytest.mark.parametrize("path", LIST_PATHS)
def test_bad_paging_parameters_are_422_problems(client, path):
    for params, field in BAD_PAGES + ([({"after": -1}, "after"), ({"after": 0}, "after")] if path in ID_CURSORS
                                      else [({"after": ""}, "after")]):
        body = _problem(client.get(path, params=params, headers=as_("admin")), 422)
        assert [e["loc"] for e in body["errors"]] == [["query", field]], (params, body)


# -- scenes retry ---------------------------------------------------------------------------------


def test_retry_queues_a_new_attempt_of_the_failed_segments_only(client, conn):
    scene = client.post("/api/jobs", headers=as_("artist"), json=_job("fox", ["sea", "sky"])).json()["scene_id"]
    first, second = conn.execute(
        "SELECT j.id, j.segment_id FROM generation_jobs j JOIN segments g ON g.id = j.segment_id "
        "WHERE g.scene_id = %s ORDER BY g.position", [scene]).fetchall()
    body = _problem(client.post(f"/api/scenes/{scene}/retry", headers=as_("artist")), 409)
    assert body["detail"] == f"scene {scene} is pending and has no failed segment to retry"
    # The second segment ran out of attempts; the first succeeded.
    conn.execute("UPDATE generation_jobs SET status = 'failed', error = 'CUDA out of memory' WHERE id = %s",
                 [second["id"]])
    conn.execute(f"UPDATE generation_jobs SET {SUCCEEDED}, progress = 1 WHERE id = %s", [first["id"]])
    conn.execute("UPDATE segments SET status = CASE WHEN id = %s THEN 'failed' ELSE 'generated' END "
                 "WHERE scene_id = %s", [second["segment_id"], scene])
    conn.execute("UPDATE scenes SET status = 'failed' WHERE id = %s", [scene])
    before = {t: _count(conn, t) for t in ("generation_jobs", "outbox")}

    for role in ("viewer",):
        assert _problem(client.post(f"/api/scenes/{scene}/retry", headers=as_(role)), 403)["detail"] == (
            "the viewer role may not do this; it needs artist")
    assert {t: _count(conn, t) for t in before} == before

    response = client.post(f"/api/scenes/{scene}/retry", headers=as_("artist"))
    assert response.status_code == 202, response.text
    [job_id] = response.json()["job_ids"]
    assert response.json() == {"scene_id": scene, "job_ids": [job_id]}
    attempts = conn.execute("SELECT id, segment_id, attempt, status, error FROM generation_jobs "
                            "WHERE segment_id = %s ORDER BY attempt", [second["segment_id"]]).fetchall()
    assert attempts == [
        {"id": second["id"], "segment_id": second["segment_id"], "attempt": 1, "status": "failed",
         "error": "CUDA out of memory"},
        {"id": job_id, "segment_id": second["segment_id"], "attempt": 2, "status": "queued", "error": None}]
    assert _count(conn, "generation_jobs") == before["generation_jobs"] + 1  # the first segment: nothing new
    [requested] = conn.execute("SELECT payload FROM outbox WHERE topic = 'generation.requested' "
                               "ORDER BY id DESC LIMIT 1").fetchall()
    assert requested["payload"]["data"]["job_id"] == job_id
    shown = client.get(f"/api/scenes/{scene}", headers=as_("viewer")).json()
    assert shown["status"] == "generating" and [s["status"] for s in shown["segments"]] == ["generated", "pending"]

    again = _problem(client.post(f"/api/scenes/{scene}/retry", headers=as_("artist")), 409)
    assert again["detail"] == f"scene {scene} is generating and has no failed segment to retry"
    assert _problem(client.post("/api/scenes/999999/retry", headers=as_("artist")), 404)["detail"] == (
        "scene 999999 does not exist")


# -- usage ----------------------------------------------------------------------------------------


def _spend(conn, scene: int, render: float, held: float) -> None:
    conn.execute(f"UPDATE generation_jobs SET {SUCCEEDED}, device = 'cpu', device_seconds = %s, "
                 "held_seconds = %s WHERE segment_id IN (SELECT id FROM segments WHERE scene_id = %s)",
                 [render, held, scene])


def test_usage_is_the_cli_report_also_per_project(client, conn, run_cli, database_url):
    fox = client.post("/api/jobs", headers=as_("artist"), json=_job("fox", ["sea"])).json()["scene_id"]
    hare = client.post("/api/jobs", headers=as_("artist"), json=_job("hare", ["sky", "sun"])).json()["scene_id"]
    _spend(conn, fox, 1.25, 2.5)
    _spend(conn, hare, 0.5, 4.0)

    report = client.get("/api/usage", headers=as_("viewer")).json()
    cli = run_cli("usage", "--json", env={"TIERFLOW_DATABASE_URL": database_url})
    assert cli.returncode == 0, cli.stderr
    assert report == json.loads(cli.stdout)
    assert report["rows"] == [
        {"project": "fox", "tier": "draft", "jobs": 1, "device_seconds": 1.25, "render_seconds": 1.25,
         "held_seconds": 2.5},
        {"project": "hare", "tier": "draft", "jobs": 2, "device_seconds": 1.0, "render_seconds": 1.0,
         "held_seconds": 8.0}]

    only = client.get("/api/usage", params={"project": "hare"}, headers=as_("viewer")).json()
    assert only["rows"] == report["rows"][1:]
    assert (only["by_tier"], only["by_project"], only["total_device_seconds"], only["total_held_seconds"]) == (
        {"draft": 1.0}, {"hare": 1.0}, 1.0, 8.0)
    assert list(only["projects"]) == ["hare"] and only["fleet"] == report["fleet"]
    assert only == usage.device_seconds(conn, "hare")
    body = _problem(client.get("/api/usage", params={"project": "nope"}, headers=as_("viewer")), 404)
    assert body["detail"] == "project 'nope' does not exist"


# -- project settings -----------------------------------------------------------------------------


def _settings(conn, name: str) -> dict:
    return conn.execute(
        """SELECT a.name AS auto, p.max_segments_per_scene, p.max_frame_steps, m.name AS artist
           FROM projects p LEFT JOIN resolution_tiers a ON a.id = p.auto_upscale_to_tier_id
           LEFT JOIN resolution_tiers m ON m.id = p.max_artist_tier_id WHERE p.name = %s""", [name]).fetchone()


def test_project_settings_are_read_and_changed_as_the_cli_does(client, conn, run_cli, database_url):
    body = _problem(client.get("/api/projects/fox", headers=as_("viewer")), 404)
    assert body["detail"] == "project 'fox' does not exist"

    changed = client.put("/api/projects/fox", headers=as_("admin"),
                         json={"auto_upscale_to": "production", "max_segments": 3, "max_artist_tier": "preview"})
    assert changed.status_code == 200, changed.text
    assert changed.json() == {"project": "fox", "auto_upscale_to": "production", "max_segments": 3,
                              "max_frame_steps": None, "max_artist_tier": "preview"}
    assert client.get("/api/projects/fox", headers=as_("viewer")).json() == changed.json()
    assert _settings(conn, "fox") == {"auto": "production", "max_segments_per_scene": 3, "max_frame_steps": None,
                                      "artist": "preview"}

    # Absent: unchanged; null: cleared.
    cleared = client.put("/api/projects/fox", headers=as_("admin"), json={"max_segments": None, "max_frame_steps": 40})
    assert cleared.json() == {"project": "fox", "auto_upscale_to": "production", "max_segments": None,
                              "max_frame_steps": 40, "max_artist_tier": "preview"}
    # The CLI prints the same form for the same project.
    cli = run_cli("projects", "set", "fox", "--max-frame-steps", "40", "--json",
                  env={"TIERFLOW_DATABASE_URL": database_url})
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout) == cleared.json()

    # A new name is a new project; the list has both.
    assert client.put("/api/projects/elk", headers=as_("admin"), json={"auto_upscale_to": None}).json() == {
        "project": "elk", "auto_upscale_to": None, "max_segments": None, "max_frame_steps": None,
        "max_artist_tier": None}
    assert client.get("/api/projects", headers=as_("viewer")).json() == [
        client.get(f"/api/projects/{name}", headers=as_("viewer")).json() for name in ("elk", "fox")]


@pytest.mark.parametrize("change,status,detail", [
    ({"max_segments": 0}, 422, "max segments per scene must be a whole number from 1, not 0"),
    ({"auto_upscale_to": "preview", "max_frame_steps": 2**31}, 422,
     f"max frame steps must be a whole number from 1, not {2**31}"),
    ({"auto_upscale_to": "preview", "max_artist_tier": "imax"}, 404, None),
    ({"auto_upscale_to": "imax"}, 404, None),
    ({}, 422, "give at least one of auto_upscale_to, max_segments, max_frame_steps, max_artist_tier"),
    ({"max_segments": "3"}, 422, None),
    ({"colour": "red"}, 422, None),
])
def test_a_refused_project_change_changes_nothing(client, conn, change, status, detail):
    client.put("/api/projects/fox", headers=as_("admin"), json={"auto_upscale_to": "production", "max_segments": 2})
    before = _settings(conn, "fox")
    body = _problem(client.put("/api/projects/fox", headers=as_("admin"), json=change), status)
    if detail is not None:
        assert body["detail"] == detail
    if status == 404:
        assert "imax" in body["detail"]
    assert _settings(conn, "fox") == before


def test_only_admins_change_project_settings(client, conn):
    make_scene(conn, project="fox")
    before = _settings(conn, "fox")
    for role in ("viewer", "artist"):
        body = _problem(client.put("/api/projects/fox", headers=as_(role), json={"max_segments": 1}), 403)
        assert body["detail"] == f"the {role} role may not do this; it needs admin"
    assert _settings(conn, "fox") == before
    _problem(client.put("/api/projects/%20", headers=as_("admin"), json={"max_segments": 1}), 422)
    _problem(client.put("/api/projects/" + "x" * 201, headers=as_("admin"), json={"max_segments": 1}), 422)
    assert _count(conn, "projects") == 1


# -- deliveries -----------------------------------------------------------------------------------


def test_deliveries_are_listed_newest_first_by_project_and_status(client, conn):
    make_scene(conn, project="fox")
    make_scene(conn, project="hare")

    def deliver(project: str, rejected: bool = False) -> int:
        return conn.execute(
            "INSERT INTO deliveries (project_id, requested_scene_ids, status, reasons) "
            "SELECT id, '{1}', %s, %s FROM projects WHERE name = %s RETURNING id",
            ["rejected" if rejected else "requested",
             json.dumps([{"code": "tier_not_deliverable", "scene_id": 1, "tier": "draft", "message": "Draft"}])
             if rejected else None, project]).fetchone()["id"]

    a, b, c, d = deliver("fox"), deliver("fox", rejected=True), deliver("hare"), deliver("fox")
    listed = client.get("/api/deliveries", headers=as_("viewer")).json()
    assert [x["delivery_id"] for x in listed] == [d, c, b, a]
    # Each in the form of GET /api/deliveries/{id}.
    assert listed == [client.get(f"/api/deliveries/{x}", headers=as_("viewer")).json() for x in (d, c, b, a)]
    assert listed[2]["reasons"][0]["code"] == "tier_not_deliverable"

    def ids(**params) -> list[int]:
        response = client.get("/api/deliveries", params=params, headers=as_("viewer"))
        assert response.status_code == 200, response.text
        return [x["delivery_id"] for x in response.json()]

    assert ids(project="fox") == [d, b, a]
    assert ids(project="fox", status="requested") == [d, a]
    assert ids(status="rejected") == [b]
    assert ids(project="nope") == []
    pages, links = _walk(client, "/api/deliveries?project=fox&status=requested&limit=1")
    assert [x["delivery_id"] for p in pages for x in p] == [d, a]
    assert links == [f'</api/deliveries?after={d}&limit=1&project=fox&status=requested>; rel="next"']

    body = _problem(client.get("/api/deliveries", params={"status": "bogus"}, headers=as_("viewer")), 422)
    assert body["errors"][0]["loc"] == ["query", "status"]
    assert "'requested', 'completed' or 'rejected'" in body["detail"]


# -- dead letters ---------------------------------------------------------------------------------


def test_a_dead_letter_is_listed_and_replayed_after_the_fix_by_an_admin_only(client, conn, api_deps):
    with api_deps.uow() as uow:
        uow.emit(SceneApproved(scene_id=4242))
    bus.drain(api_deps, ALL, ALL)
    [letter] = client.get("/api/dead-letters", headers=as_("admin")).json()
    row = conn.execute("SELECT id, outbox_id, failed_at FROM dead_letters").fetchone()
    assert {k: letter[k] for k in ("id", "topic", "dlq", "consumer", "origin", "reason", "key", "failed_at")} == {
        "id": row["id"], "topic": "scene.approved", "dlq": f"dead_letters/{row['id']}",
        "consumer": "on_scene_approved", "origin": f"outbox-{row['outbox_id']}",
        "reason": "refused: scene 4242 does not exist", "key": "4242", "failed_at": row["failed_at"].isoformat()}
    assert letter["value"]["data"]["scene_id"] == 4242
    assert client.get("/api/dead-letters", params={"consumer": "on_upscale_requested"},
                      headers=as_("admin")).json() == []
    assert client.get("/api/dead-letters", params={"consumer": "on_scene_approved"},
                      headers=as_("admin")).json() == [letter]

    for role in ("viewer", "artist"):
        assert _problem(client.get("/api/dead-letters", headers=as_(role)), 403)["detail"] == (
            f"the {role} role may not do this; it needs admin")
        _problem(client.post(f"/api/dead-letters/{row['id']}/replay", headers=as_(role)), 403)
    assert conn.execute("SELECT replayed_at FROM dead_letters").fetchone()["replayed_at"] is None
    assert _count(conn, "bus_deliveries") == 0

    make_scene(conn, scene_id=4242)  # the fix
    replayed = client.post(f"/api/dead-letters/{row['id']}/replay", headers=as_("admin"))
    assert replayed.status_code == 202, replayed.text
    assert replayed.json() == letter
    assert conn.execute("SELECT consumer, outbox_id FROM bus_deliveries").fetchall() == [
        {"consumer": "on_scene_approved", "outbox_id": row["outbox_id"]}]
    assert client.get("/api/dead-letters", headers=as_("admin")).json() == []
    replayed_at = conn.execute("SELECT replayed_at FROM dead_letters").fetchone()["replayed_at"]
    again = _problem(client.post(f"/api/dead-letters/{row['id']}/replay", headers=as_("admin")), 409)
    assert again["detail"] == (f"dead letter {row['id']} was replayed at {replayed_at.isoformat()}; "
                               "a failure after that is a new dead letter")
    assert _problem(client.post("/api/dead-letters/999999/replay", headers=as_("admin")), 404)["detail"] == (
        "dead letter 999999 does not exist")

    bus.drain(api_deps, ALL, ALL)
    assert conn.execute("SELECT status FROM scenes WHERE id = 4242").fetchone()["status"] == "approved"


def test_dead_letters_over_http_are_refused_on_kafka(database_url, tmp_path):
    from shared.bootstrap import Deps
    from shared.config import Settings

    keys = json.dumps([{"name": "admin-1", "role": "admin", "key": KEYS["admin"]}])
    deps = Deps(Settings(database_url=database_url, home=tmp_path / "home", api_keys=keys,
                         kafka_bootstrap="127.0.0.1:9"))
    try:
        with TestClient(create_app(deps)) as kafka_client:
            for response in (kafka_client.get("/api/dead-letters", headers=as_("admin")),
                             kafka_client.post("/api/dead-letters/1/replay", headers=as_("admin"))):
                assert _problem(response, 409)["detail"].startswith("on Kafka dead letters are messages on the")
    finally:
        deps.close()


# -- the OpenAPI document -------------------------------------------------------------------------


def test_openapi_documents_each_route_its_errors_and_the_next_link(client):
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        ("post", "/api/scenes/{scene_id}/retry"): {"202", "404", "409"},
        ("get", "/api/usage"): {"200", "404"},
        ("get", "/api/projects"): {"200"},
        ("get", "/api/projects/{name}"): {"200", "404"},
        ("put", "/api/projects/{name}"): {"200", "404", "422"},
        ("get", "/api/deliveries"): {"200", "422"},
        ("get", "/api/workers"): {"200", "404"},
        ("get", "/api/dead-letters"): {"200", "409"},
        ("post", "/api/dead-letters/{letter_id}/replay"): {"202", "404", "409"},
    }
    for (method, path), statuses in expected.items():
        responses = paths[path][method]["responses"]
        assert statuses | {"401", "403", "422"} <= set(responses), (method, path, set(responses))
        for status in statuses - {"200", "202"}:
            assert "application/problem+json" in responses[status]["content"], (path, status)
    for path in LIST_PATHS:
        operation = paths[path]["get"]
        assert "rel=\\\"next\\\"" in json.dumps(operation["responses"]["200"]["headers"]["Link"]), path
        params = {p["name"]: p["schema"] for p in operation["parameters"]}
        limit = params["limit"]
        assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 1000, 100), path
        assert "after" in params, path
