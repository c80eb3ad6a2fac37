"""`tierflow serve`: prints where it listens and where the admin key is, and serves with that key."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from infra.net import free_ports

pytestmark = pytest.mark.integration


def test_serve_prints_the_url_and_the_key_location_and_the_key_works(database_url, tmp_path):
    [port] = free_ports()
    env = {**os.environ, "TIERFLOW_HOME": str(tmp_path / "home"), "TIERFLOW_DATABASE_URL": database_url}
    server = subprocess.Popen([sys.executable, "-m", "functions.cli", "serve", "--port", str(port), "--api-only"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = [server.stdout.readline(), server.stdout.readline()]
        keys_file = tmp_path / "home" / "api-keys.json"
        assert lines[0] == (f"Tierflow at http://127.0.0.1:{port}/ (API under http://127.0.0.1:{port}/api, "
                            f"OpenAPI at http://127.0.0.1:{port}/openapi.json)\n")
        key = admin_key(lines[1], keys_file)
        assert key not in keys_file.read_text()  # shown once, kept as a hash
        url = f"http://127.0.0.1:{port}/api/session"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url)
            except urllib.error.HTTPError as refused:
                assert refused.code == 401
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the server did not answer"
                time.sleep(0.2)
        answer = urllib.request.urlopen(urllib.request.Request(url, headers={"X-API-Key": key}))
        assert json.loads(answer.read()) == {"name": "local-admin", "role": "admin"}
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
        assert "<title>" in page and "Tierflow" in page
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
    assert server.returncode == 0


def admin_key(output: str, keys_file) -> str:
    """The admin key `serve` created, from the one line that shows it."""
    found = re.search(rf"^API keys: {re.escape(str(keys_file.resolve()))} \(hashes only\); the admin key local-admin, "
                      r"shown only now: (\S+)$", output, re.MULTILINE)
    assert found, output
    return found[1]


def _until_serving(server: subprocess.Popen, port: int, log_path, timeout: float = 60) -> None:
    """Until the server answers /healthz (it prints its lines before it listens)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
            return
        except urllib.error.URLError:
            assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()
            time.sleep(0.2)


def _call(port: int, key: str, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, headers={
        "X-API-Key": key, "Content-Type": "application/json"}, data=json.dumps(body).encode() if body else None)
    return json.loads(urllib.request.urlopen(request, timeout=30).read())


def _ready(port: int) -> tuple[int, dict]:
    try:
        answer = urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=10)
        return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def _until_ready_is(port: int, wanted: int, timeout: float = 30) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    while (answer := _ready(port))[0] != wanted:
        assert time.monotonic() < deadline, answer
        time.sleep(0.2)
    return answer


def test_serve_keeps_generating_after_every_database_connection_dropped(database_url, postgres_server, tmp_path,
                                                                        tiny_model):
    """What a database restart or failover does: every session is cut, and for a while no new one
    is accepted. /readyz says so meanwhile; the embedded bus, the local worker and the lease
    sweeper reconnect, and a scene submitted afterwards is generated."""
    import psycopg

    from infra import embedded
    from tests.conftest import database_outage

    [port] = free_ports()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
           "TIERFLOW_HOME": str(tmp_path / "home"), "TIERFLOW_DATABASE_URL": database_url,
           "TIERFLOW_MODEL": tiny_model}
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "functions.cli", "serve", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    segment = {"prompt": "a fox", "seed": 1, "frames": 2, "steps": 2}
    try:
        _until_serving(server, port, tmp_path / "serve.log")
        key = admin_key((tmp_path / "serve.log").read_text(), tmp_path / "home" / "api-keys.json")

        def generate(name: str) -> dict:
            scene = _call(port, key, "POST", "/api/jobs",
                          {"project": "p", "scene": name, "aspect": "16:9", "segments": [segment]})
            deadline = time.monotonic() + 120
            while scene["status"] not in ("generated", "failed"):
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.3)
                scene = _call(port, key, "GET", f"/api/scenes/{scene['scene_id']}")
            return scene

        assert generate("before")["status"] == "generated"
        assert _ready(port) == (200, {"ready": True, "reasons": []})
        database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        with database_outage(postgres_server, database) as cut:
            assert cut >= 3  # the bus's, the worker's, ...
            _, body = _until_ready_is(port, 503)
            assert "database: unreachable (ServiceUnavailable)" in body["reasons"]
            # The bus says so once its next poll meets the outage (the probe may answer before).
            deadline = time.monotonic() + 30
            while not any(r.startswith("embedded bus: ") for r in body["reasons"]):
                assert time.monotonic() < deadline, body
                time.sleep(0.2)
                _, body = _until_ready_is(port, 503)
        _until_ready_is(port, 200)
        assert generate("after")["status"] == "generated"
        assert server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        embedded.stop(tmp_path / "home")
    assert server.returncode == 0
    text = (tmp_path / "serve.log").read_text()
    assert "embedded bus: OperationalError" in text and "embedded bus: back after" in text


def test_sigterm_ends_live_streams_starts_no_job_and_exits_within_the_grace_period(database_url, tmp_path,
                                                                                    tiny_model, conn):
    import threading

    from infra import embedded

    [port] = free_ports()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
           "TIERFLOW_HOME": str(tmp_path / "home"), "TIERFLOW_DATABASE_URL": database_url,
           "TIERFLOW_MODEL": tiny_model, "TIERFLOW_SHUTDOWN_GRACE_SECONDS": "3"}
    log_path = tmp_path / "serve.log"
    server = subprocess.Popen([sys.executable, "-m", "functions.cli", "serve", "--port", str(port)],
                              env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT, text=True)
    try:
        keys_file = tmp_path / "home" / "api-keys.json"
        deadline = time.monotonic() + 60
        _until_serving(server, port, log_path)
        key = admin_key(log_path.read_text(), keys_file)
        slow = {"prompt": "a slow fox", "seed": 1, "frames": 2, "steps": 400}  # far longer than the grace
        rendering, waiting = (_call(port, key, "POST", "/api/jobs", {"project": "p", "scene": name, "aspect": "16:9",
                                                                      "segments": [slow]})["scene_id"]
                              for name in ("rendering", "waiting"))
        streams = []
        for scene_id in (rendering, waiting):  # the page's live progress, left open
            response = urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{port}/api/scenes/{scene_id}/events", headers={"X-API-Key": key}), timeout=60)
            threading.Thread(target=lambda r=response: streams.append(r.read()), daemon=True).start()
        while not conn.execute("SELECT 1 FROM generation_jobs WHERE status = 'running' AND EXISTS (SELECT 1 FROM "
                               "outbox WHERE topic = 'generation.progress')").fetchone():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        signalled = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0, log_path.read_text()
        took = time.monotonic() - signalled
    finally:
        if server.poll() is None:
            server.kill()
        embedded.stop(tmp_path / "home")
    assert took < 3 + 8, f"exited {took:.1f} s after SIGTERM"
    ended = time.monotonic() + 5
    while len(streams) < 2 and time.monotonic() < ended:
        time.sleep(0.05)
    assert len(streams) == 2  # both streams were ended by the server
    jobs = {r["scene_id"]: r for r in conn.execute(
        "SELECT g.scene_id, j.status, j.worker_id, j.claimed_at, j.attempt FROM generation_jobs j "
        "JOIN segments g ON g.id = j.segment_id")}
    # The job in hand could not finish in 3 s: given back, the same attempt. The other was never started.
    assert (jobs[rendering]["status"], jobs[rendering]["worker_id"], jobs[rendering]["attempt"]) == ("queued", None, 1)
    assert (jobs[waiting]["status"], jobs[waiting]["claimed_at"]) == ("queued", None)


@pytest.mark.parametrize("command", [["consume"], ["relay"], ["worker", "serve"]])
def test_long_running_commands_answer_probes_on_their_health_port(command, database_url, postgres_server, tmp_path,
                                                                  tiny_model):
    """consume, relay and worker serve: /healthz while up, /readyz 503 with the reasons while the
    database is out of reach and 200 once it is back; SIGTERM still ends them cleanly."""
    import psycopg

    from infra import embedded
    from tests.conftest import database_outage

    [port] = free_ports()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
           "TIERFLOW_HOME": str(tmp_path / "home"), "TIERFLOW_DATABASE_URL": database_url,
           "TIERFLOW_MODEL": tiny_model}
    log_path = tmp_path / "process.log"
    process = subprocess.Popen([sys.executable, "-m", "functions.cli", *command, "--health-port", str(port)],
                               env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    try:
        _until_serving(process, port, log_path)
        assert _until_ready_is(port, 200)[1] == {"ready": True, "reasons": []}
        database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        with database_outage(postgres_server, database):
            _, body = _until_ready_is(port, 503)
            assert "database: unreachable (ServiceUnavailable)" in body["reasons"], body
        _until_ready_is(port, 200, timeout=60)
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        embedded.stop(tmp_path / "home")
    assert process.returncode == 0, log_path.read_text()


def test_a_bad_health_port_is_a_usage_error(run_cli):
    for command in (["consume"], ["relay"], ["worker", "serve"]):
        refused = run_cli(*command, "--health-port", "70000")
        assert refused.returncode == 2, refused.stderr
        assert "argument --health-port: a port is PORT or HOST:PORT with a port from 1 to 65535, not '70000'" in refused.stderr
