"""The worker's reports: written through a database that refuses connections for a while, never
claimed when they could not be written, and failures classified so that only those a retry can
fix are retried. Real worker processes, PostgreSQL, S3 server and the tiny model."""

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from infra import embedded
from infra.net import free_ports
from shared.domain import scenes
from shared.domain.recipe import SegmentSpec
from shared.domain.scenes import job_document
from tests.conftest import generation_deps, wait_for_scene

QUICK = [SegmentSpec(prompt="a red fox in snow", seed=5, frames=2, steps=2)]


class RefusingProxy:
    """A TCP front for the test's PostgreSQL (a unix socket) that drops the first `refusals`
    connections at once, as a database restarting or failing over does, and, once `go_away()`
    is called, drops every live connection and refuses every new one."""

    def __init__(self, database_url: str, refusals: int = 0):
        params = conninfo_to_dict(database_url)
        self.socket_path = os.path.join(params["host"], f".s.PGSQL.{params.get('port') or 5432}")
        self.refusals, self.connections, self.refusing = refusals, 0, False
        self.live: list[socket.socket] = []
        [self.port] = free_ports()
        self.url = make_conninfo(database_url, host="127.0.0.1", port=str(self.port))
        self.listener = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            if self.connections <= self.refusals or self.refusing:
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
            self.live += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def go_away(self) -> None:
        self.refusing = True
        for end in self.live:
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def _start_worker(gen_deps, conn, tmp_path, database_url: str, segments=QUICK, **env) -> subprocess.Popen:
    """Submit one Draft segment and start a one-job worker process for it (nothing else runs it)."""
    scene_id = scenes.submit_scene(gen_deps, project="p", name="s", aspect="16:9", segments=segments)
    job_id = conn.execute("SELECT j.id FROM generation_jobs j JOIN segments g ON g.id = j.segment_id "
                          "WHERE g.scene_id = %s", [scene_id]).fetchone()["id"]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_document(conn, job_id)))
    worker_env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
                  "TIERFLOW_HOME": str(gen_deps.settings.home), "TIERFLOW_DATABASE_URL": database_url, **env}
    return subprocess.Popen([sys.executable, "-m", "functions.worker", "--job", str(path)], env=worker_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_worker(*args, **env) -> subprocess.CompletedProcess:
    worker = _start_worker(*args, **env)
    stdout, stderr = worker.communicate(timeout=300)
    return subprocess.CompletedProcess(worker.args, worker.returncode, stdout, stderr)


def _reports(conn) -> list[str]:
    return [r["topic"] for r in conn.execute("SELECT topic FROM outbox WHERE topic LIKE 'generation.%%' "
                                             "AND topic <> 'generation.requested' ORDER BY id")]


def test_reports_are_retried_while_the_database_refuses_connections(gen_deps, conn, database_url, tmp_path):
    proxy = RefusingProxy(database_url, refusals=3)
    try:
        done = _run_worker(gen_deps, conn, tmp_path, proxy.url)
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    assert proxy.connections >= 4  # three refused, then the reports went through
    assert _reports(conn) == ["generation.progress", "generation.progress", "generation.completed"]


def test_a_report_that_cannot_be_written_is_never_claimed(gen_deps, conn, database_url, tmp_path):
    proxy = RefusingProxy(database_url)
    slow = [SegmentSpec(prompt="a slow fox", seed=5, frames=2, steps=80)]
    try:
        worker = _start_worker(gen_deps, conn, tmp_path, proxy.url, slow, TIERFLOW_REPORT_RETRY_SECONDS="1")
        deadline = time.monotonic() + 120
        while conn.execute("SELECT status FROM generation_jobs").fetchone()["status"] != "running":
            assert time.monotonic() < deadline, "the worker did not claim its job"
            time.sleep(0.05)
        proxy.go_away()  # while it renders
        _, stderr = worker.communicate(timeout=300)
    finally:
        proxy.close()
    assert worker.returncode == 4, stderr
    assert "could not write generation.progress of job" in stderr and "nothing was reported" in stderr
    assert "failed (reported)" not in stderr
    assert not {"generation.completed", "generation.failed"} & set(_reports(conn))


def test_a_worker_that_cannot_reach_its_database_says_so_at_once(gen_deps, conn, database_url, tmp_path):
    [closed_port] = free_ports()
    unreachable = make_conninfo(database_url, host="127.0.0.1", port=str(closed_port))
    lost = _run_worker(gen_deps, conn, tmp_path, unreachable, TIERFLOW_REPORT_RETRY_SECONDS="1")
    assert lost.returncode == 1
    assert "cannot reach the database" in lost.stderr and "Connection refused" in lost.stderr
    assert _reports(conn) == []


def test_a_model_gone_from_its_directory_fails_at_once_not_after_every_retry(database_url, tmp_path, tiny_model):
    home = tmp_path / "home"
    deps = generation_deps(database_url, home, str(tmp_path / "model"), max_attempts=3)
    shutil.copytree(tiny_model, tmp_path / "model")
    try:
        scene_id = scenes.submit_scene(deps, project="p", name="s", aspect="16:9", segments=QUICK)
        shutil.rmtree(tmp_path / "model")  # e.g. a worker host without the model, or a deleted checkpoint
        scene = wait_for_scene(deps, scene_id)
    finally:
        deps.close()
        embedded.stop(home)
    assert scene["status"] == "failed"
    [segment] = scene["segments"]
    job = segment["job"]
    assert job["attempt"] == 1 and "not found" in job["error"] and str(tmp_path / "model") in job["error"]
    # The failed attempt held its worker too, and says so.
    assert job["held_seconds"] > 0 and job["render_seconds"] is None
    assert segment["attempts"] == [{"job_id": job["job_id"], "attempt": 1, "status": "failed", "error": job["error"],
                                    "worker_id": job["worker_id"]}]


def test_a_hub_model_that_cannot_be_fetched_is_retried_but_one_the_hub_refuses_is_not():
    import httpx2
    from huggingface_hub import errors

    from shared.media.models import hub_refused

    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/name")
    missing = errors.RepositoryNotFoundError("404: no such repository", response=httpx2.Response(404, request=request))
    try:
        raise OSError("org/name is not a valid model identifier") from missing
    except OSError as wrapped:
        assert hub_refused(wrapped)
    try:
        raise OSError("not fully cached locally") from ConnectionError("Name or service not known")
    except OSError as offline:
        assert not hub_refused(offline)
    assert not hub_refused(errors.LocalEntryNotFoundError("offline and not in the cache"))
