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
    connections at once, as a database restarting or failing over does."""

    def __init__(self, database_url: str, refusals: int):
        params = conninfo_to_dict(database_url)
        self.socket_path = os.path.join(params["host"], f".s.PGSQL.{params.get('port') or 5432}")
        self.refusals, self.connections = refusals, 0
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
            if self.connections <= self.refusals:
                client.close()
                continue
            server = socket.socket(socket.AF_UNIX)
            server.connect(self.socket_path)
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

    def close(self) -> None:
        self.listener.close()


def _run_worker(gen_deps, conn, tmp_path, database_url: str, **env) -> subprocess.CompletedProcess:
    """Submit one Draft segment and run its job in a worker process of its own (nothing else runs it)."""
    scene_id = scenes.submit_scene(gen_deps, project="p", name="s", aspect="16:9", segments=QUICK)
    job_id = conn.execute("SELECT j.id FROM generation_jobs j JOIN segments g ON g.id = j.segment_id "
                          "WHERE g.scene_id = %s", [scene_id]).fetchone()["id"]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job_document(conn, job_id)))
    worker_env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")},
                  "TIERFLOW_HOME": str(gen_deps.settings.home), "TIERFLOW_DATABASE_URL": database_url, **env}
    return subprocess.run([sys.executable, "-m", "functions.worker", "--job", str(path)], env=worker_env,
                          capture_output=True, text=True, timeout=300)


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
    [closed_port] = free_ports()
    unreachable = make_conninfo(database_url, host="127.0.0.1", port=str(closed_port))
    lost = _run_worker(gen_deps, conn, tmp_path, unreachable, TIERFLOW_REPORT_RETRY_SECONDS="1")
    assert lost.returncode == 4
    assert "could not write generation.progress of job" in lost.stderr and "nothing was reported" in lost.stderr
    assert "failed (reported)" not in lost.stderr
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

    from shared.media.pipeline import _hub_refused

    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/name")
    missing = errors.RepositoryNotFoundError("404: no such repository", response=httpx2.Response(404, request=request))
    try:
        raise OSError("org/name is not a valid model identifier") from missing
    except OSError as wrapped:
        assert _hub_refused(wrapped)
    try:
        raise OSError("not fully cached locally") from ConnectionError("Name or service not known")
    except OSError as offline:
        assert not _hub_refused(offline)
    assert not _hub_refused(errors.LocalEntryNotFoundError("offline and not in the cache"))
