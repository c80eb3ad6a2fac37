"""Shared fixtures: one real PostgreSQL (the embedded one, in a temporary home) per test session,
a migrated template database, and a fresh copy of it for every test that needs a database."""

import json
import os
import subprocess
import sys
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from infra import embedded
from shared.adapters import db

TIERFLOW = str(Path(sys.executable).parent / "tierflow")
TEMPLATE = "tierflow_template"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """URL of the `tierflow` database on a PostgreSQL started for this test session."""
    home = tmp_path_factory.mktemp("pg-home")
    url = embedded.postgres_url(home)
    yield url
    embedded.stop(home)


def _database_url(server_url: str, name: str) -> str:
    return make_conninfo(server_url, dbname=name)


@pytest.fixture(scope="session")
def template_database(postgres_server):
    """A database with every migration applied, copied for each test (much faster than migrating)."""
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    with db.connect(_database_url(postgres_server, TEMPLATE)) as conn:
        db.migrate(conn)
    return TEMPLATE


def _create_database(server_url: str, template: str = "template0") -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def _drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def module_database_url(postgres_server, template_database):
    """Like `database_url`, shared by one test module (for costly set-ups such as rendered scenes)."""
    name = _create_database(postgres_server, template_database)
    yield _database_url(postgres_server, name)
    _drop_database(postgres_server, name)


@pytest.fixture
def database_url(postgres_server, template_database):
    """URL of a fresh, fully migrated database, dropped after the test."""
    name = _create_database(postgres_server, template_database)
    yield _database_url(postgres_server, name)
    _drop_database(postgres_server, name)


@pytest.fixture
def empty_database_url(postgres_server):
    """URL of a fresh database with no schema at all, dropped after the test."""
    name = _create_database(postgres_server)
    yield _database_url(postgres_server, name)
    _drop_database(postgres_server, name)


@pytest.fixture
def conn(database_url):
    with db.connect(database_url) as connection:
        yield connection


@pytest.fixture
def run_cli(tmp_path):
    """Run the installed `tierflow` command; returns the CompletedProcess (text mode)."""

    def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
        full_env["TIERFLOW_HOME"] = str(tmp_path / "home")
        full_env.update(env or {})
        # A guard against hangs, not a speed target: the demo renders real video on a shared CPU.
        return subprocess.run([TIERFLOW, *args], env=full_env, capture_output=True, text=True, timeout=900)

    return run


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """The tiny random-weight text-to-video pipeline, built once per test session."""
    from shared.media.tiny import build_tiny_model

    return str(build_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


def generation_deps(database_url: str, home, tiny_model: str, **overrides):
    """Deps for tests that render: the tiny model, local workers, quick retries."""
    from shared.bootstrap import Deps
    from shared.config import Settings

    settings = {"max_attempts": 1, "retry_backoff_seconds": 0, **overrides}
    return Deps(Settings(database_url=database_url, home=home, model=tiny_model, **settings))


@pytest.fixture
def gen_deps(database_url, tmp_path, tiny_model):
    """`generation_deps` on the test's database; its local workers and embedded S3 server are
    stopped afterwards."""
    home = tmp_path / "home"
    deps = generation_deps(database_url, home, tiny_model)
    yield deps
    deps.close()
    embedded.stop(home)


# One key per role, for HTTP API tests (`api_deps`).
API_KEYS = {"admin": "admin-key-0123456789abcdef", "artist": "artist-key-0123456789abcdef",
            "viewer": "viewer-key-0123456789abcdef"}


@pytest.fixture
def api_deps(database_url, tmp_path, tiny_model):
    """`generation_deps` with API_KEYS configured (named "<role>-1")."""
    home = tmp_path / "home"
    keys = json.dumps([{"name": f"{role}-1", "role": role, "key": key} for role, key in API_KEYS.items()])
    deps = generation_deps(database_url, home, tiny_model, api_keys=keys)
    yield deps
    deps.close()
    embedded.stop(home)


@pytest.fixture
def client(api_deps):
    """The API over `api_deps`, in this process (FastAPI's TestClient)."""
    from fastapi.testclient import TestClient

    from functions.http.app import create_app

    with TestClient(create_app(api_deps)) as test_client:
        yield test_client


@pytest.fixture
def deps(database_url, tmp_path):
    """Deps on the test's database (embedded bus: no Kafka configured); its embedded S3 server,
    if a test starts it, is stopped afterwards."""
    from shared.bootstrap import Deps
    from shared.config import Settings

    home = tmp_path / "home"
    deps = Deps(Settings(database_url=database_url, home=home))
    yield deps
    deps.close()
    embedded.stop(home)


def make_scene(conn, *, status: str = "generated", tier: str = "draft", project: str = "studio",
               auto_upscale_to: str | None = None, scene_id: int | None = None) -> int:
    """A scene row in the given state (the generation pipeline is not needed to test events)."""
    project_id = conn.execute(
        """INSERT INTO projects (name, auto_upscale_to_tier_id)
           VALUES (%s, (SELECT id FROM resolution_tiers WHERE name = %s))
           ON CONFLICT (name) DO UPDATE SET auto_upscale_to_tier_id = EXCLUDED.auto_upscale_to_tier_id
           RETURNING id""",
        [project, auto_upscale_to],
    ).fetchone()["id"]
    columns = "project_id, name, aspect_width, aspect_height, width, height, status, resolution_tier_id"
    values = "%s, 'scene', 16, 9, 512, 288, %s, (SELECT id FROM resolution_tiers WHERE name = %s)"
    params = [project_id, status, tier]
    if scene_id is not None:
        columns, values, params = "id, " + columns, "%s, " + values, [scene_id, *params]
    if status == "approved":
        columns, values = columns + ", approved_at", values + ", now()"
    return conn.execute(f"INSERT INTO scenes ({columns}) VALUES ({values}) RETURNING id", params).fetchone()["id"]


@pytest.fixture
def kafka_broker(tmp_path_factory):
    """A real single-node Kafka broker (KRaft) for one test: topics and offsets start empty."""
    from infra.kafka import start_broker

    with start_broker(tmp_path_factory.mktemp("kafka"), partitions=4) as broker:
        yield broker


@pytest.fixture
def kafka_bootstrap(kafka_broker):
    """`kafka_broker`'s bootstrap address."""
    return kafka_broker.bootstrap


@pytest.fixture
def kafka_deps(database_url, kafka_bootstrap, tmp_path):
    """Deps on the test's database with Kafka configured."""
    from shared.bootstrap import Deps
    from shared.config import Settings

    return Deps(Settings(database_url=database_url, home=tmp_path / "home", kafka_bootstrap=kafka_bootstrap,
                         kafka_partitions=4))


@pytest.fixture
def moto_server(monkeypatch, tmp_path):
    """A moto server on 127.0.0.1 (the test double for AWS APIs with no local server); its URL.

    Batch jobs there are marked succeeded without running (no Docker); the recorder, when a
    test starts it, writes to the test's own directory."""
    import time
    import urllib.request

    from infra.net import free_ports

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    [port] = free_ports()
    env = {**os.environ, "MOTO_RECORDER_FILEPATH": str(tmp_path / "moto-recording")}
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        request = urllib.request.Request(url + "/moto-api/config", method="POST",
                                         data=b'{"batch": {"use_docker": false}}',
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def run_until(deps, done, **options) -> None:
    """`drive.run_until` with every deployed function (what the CLI's `--wait` runs)."""
    from functions.handlers.registry import FUNCTIONS
    from shared.runtime import drive

    drive.run_until(deps, list(FUNCTIONS.values()), done, **options)


def wait_for_scene(deps, scene_id: int) -> dict:
    """Run every deployed function until the scene is generated or failed; returns its JSON form."""
    from functions.handlers.registry import FUNCTIONS
    from shared.runtime import drive

    return drive.follow_scene(deps, list(FUNCTIONS.values()), scene_id)


@contextmanager
def database_outage(server_url: str, database: str, spare_pid: int = 0):
    """What a database restart or failover does to `database`: every session but `spare_pid`'s is
    cut, and new ones are refused until the block ends. Yields how many sessions were cut."""
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            yield len(admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                    "WHERE datname = %s AND pid <> %s", [database, spare_pid]).fetchall())
        finally:
            admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')


@contextmanager
def s3_outage(home, seconds: float):
    """The embedded S3 server of `home` is gone for `seconds` from entering (connections refused),
    then serves again on its port with the same data, while the body runs."""
    home = Path(home).resolve()
    state = embedded._running_s3(home)
    assert state is not None, "the embedded S3 server is not running"
    access_key, secret_key = embedded._credentials(home / "s3")
    embedded._stop_s3(home)
    back = threading.Timer(seconds, embedded._start_s3, args=(home / "s3", access_key, secret_key, state["port"]))
    back.start()
    try:
        yield
    finally:
        back.join()
