"""The embedded default stack (infra.embedded) against the real servers: pgserver's PostgreSQL and
`rclone serve s3`, each test on its own home under tmp_path, every server stopped in teardown."""

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from pathlib import Path

import psutil
import psycopg
import pytest
from botocore.exceptions import ClientError

from infra import embedded
from shared.adapters import storage

pytestmark = pytest.mark.integration

PYTHON = sys.executable  # the project's venv interpreter (/work/main/.venv/bin/python)
REGION = "us-east-1"
BUCKET = "tierflow-test"
MIB = 1024 * 1024


def _clean_env() -> dict:
    """The environment without any TIERFLOW_* setting, so only explicit arguments count."""
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}


def _run_python(code: str, *args: str, timeout: float = 60) -> dict:
    """Run `code` in a new interpreter; it prints one JSON document, which is returned."""
    done = subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code), *args],
        env=_clean_env(), capture_output=True, text=True, timeout=timeout,
    )
    assert done.returncode == 0, f"child failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gone(pid: int) -> bool:
    """The process no longer runs (a zombie awaiting its parent's wait() counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and any(text in part for part in cmdline):
            found.append(proc)
    return found


def _listening_addresses(port: int) -> list[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on `port`."""
    addresses = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                addresses.append(address)
    return addresses


def _client(endpoint: embedded.S3Endpoint, secret: str | None = None):
    return storage.s3_client(endpoint.url, REGION, endpoint.access_key, secret or endpoint.secret_key)


@pytest.fixture(scope="module")
def shared_home(tmp_path_factory):
    """One running stack shared by the read-mostly tests of this module."""
    home = tmp_path_factory.mktemp("stack") / "home"
    yield home
    embedded.stop(home)


@pytest.fixture
def fresh_home(tmp_path):
    """A brand-new home for one test; whatever it started is stopped afterwards."""
    home = tmp_path / "home"
    yield home
    embedded.stop(home)


@pytest.fixture(scope="module")
def s3(shared_home):
    endpoint = embedded.s3_endpoint(shared_home)
    client = _client(endpoint)
    storage.ensure_bucket(client, BUCKET)
    return endpoint, client


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def test_postgres_is_started_once_and_reused(shared_home):
    first = embedded.postgres_url(shared_home)
    pid = embedded.status(shared_home)["postgres"]["pid"]
    second = embedded.postgres_url(shared_home)

    assert second == first
    assert embedded.status(shared_home)["postgres"]["pid"] == pid
    assert pid is not None and psutil.pid_exists(pid)

    # Another process on the same home finds the running server instead of starting one.
    other = _run_python(
        """
        import json, sys
        from pathlib import Path
        from infra import embedded
        home = Path(sys.argv[1])
        url = embedded.postgres_url(home)
        print(json.dumps({"url": url, "pid": embedded.status(home)["postgres"]["pid"]}))
        """,
        str(shared_home),
    )
    assert other == {"url": first, "pid": pid}

    with psycopg.connect(first) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "tierflow"
        assert conn.execute("SELECT 1 + 1").fetchone()[0] == 2
    # A unix socket only: no TCP port is opened.
    assert "?host=/" in first
    status = embedded.status(shared_home)["postgres"]
    assert status["running"] is True
    assert status["url"] == first


# ---------------------------------------------------------------------------------------------
# Two processes racing to initialise a new home


RACER = """
import json, sys, time
from pathlib import Path
from infra import embedded
home, ready, go = (Path(arg) for arg in sys.argv[1:4])
ready.touch()
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.002)
url = embedded.postgres_url(home)
endpoint = embedded.s3_endpoint(home)
print(json.dumps({"postgres": url, "s3": endpoint.url, "access_key": endpoint.access_key}))
"""


def test_two_processes_starting_a_new_home_at_once_share_one_stack(tmp_path, fresh_home):
    assert not fresh_home.exists()
    go = tmp_path / "go"
    racers = []
    for n in range(2):
        ready = tmp_path / f"ready-{n}"
        process = subprocess.Popen(
            [PYTHON, "-c", RACER, str(fresh_home), str(ready), str(go)],
            env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        racers.append((process, ready))
    try:
        # Release both at the same moment, once both have finished importing.
        deadline = time.monotonic() + 60
        while not all(ready.exists() for _, ready in racers):
            assert all(p.poll() is None for p, _ in racers), "a racer exited before the start signal"
            assert time.monotonic() < deadline, "racers never became ready"
            time.sleep(0.01)
        go.touch()
        results = []
        for process, _ in racers:
            out, err = process.communicate(timeout=90)
            assert process.returncode == 0, f"racer failed:\n{out}\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for process, _ in racers:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert results[0] == results[1]
    status = embedded.status(fresh_home)
    assert status["postgres"]["running"] and status["s3"]["running"]
    assert status["postgres"]["url"] == results[0]["postgres"]
    assert status["s3"]["url"] == results[0]["s3"]
    # Exactly one server of each kind runs on this home.
    postmasters = [p for p in _processes_mentioning(str(fresh_home.resolve() / "postgres"))
                   if "-D" in p.info["cmdline"]]
    assert [p.pid for p in postmasters] == [status["postgres"]["pid"]]
    s3_servers = _processes_mentioning(str(fresh_home.resolve() / "s3" / "data"))
    assert [p.pid for p in s3_servers] == [status["s3"]["pid"]]
    with psycopg.connect(results[0]["postgres"]) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "tierflow"


# ---------------------------------------------------------------------------------------------
# S3


def test_s3_endpoint_is_reused_and_binds_loopback_only(shared_home, s3):
    endpoint, _ = s3
    assert embedded.s3_endpoint(shared_home) == endpoint
    assert endpoint.url.startswith("http://127.0.0.1:")
    port = int(endpoint.url.rsplit(":", 1)[1])
    addresses = _listening_addresses(port)
    assert addresses, f"nothing listens on port {port}"
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert set(addresses) <= loopback, addresses
    assert embedded.status(shared_home)["s3"]["url"] == endpoint.url


def test_s3_put_get_list_copy(s3):
    _, client = s3
    prefix = f"objects-{uuid.uuid4().hex[:8]}/"
    body = b"Draft cheap, finish what is approved.\n" + os.urandom(64)
    client.put_object(Bucket=BUCKET, Key=prefix + "a.bin", Body=body)

    assert client.get_object(Bucket=BUCKET, Key=prefix + "a.bin")["Body"].read() == body

    client.copy_object(Bucket=BUCKET, Key=prefix + "b.bin", CopySource={"Bucket": BUCKET, "Key": prefix + "a.bin"})
    assert client.get_object(Bucket=BUCKET, Key=prefix + "b.bin")["Body"].read() == body

    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    assert sorted((o["Key"], o["Size"]) for o in listed["Contents"]) == [
        (prefix + "a.bin", len(body)), (prefix + "b.bin", len(body)),
    ]

    with pytest.raises(ClientError) as missing:
        client.get_object(Bucket=BUCKET, Key=prefix + "missing.bin")
    assert missing.value.response["Error"]["Code"] in ("NoSuchKey", "404")


def test_s3_multipart_upload(s3):
    _, client = s3
    key = f"multipart-{uuid.uuid4().hex[:8]}.bin"
    parts_data = [os.urandom(5 * MIB), os.urandom(5 * MIB), os.urandom(1234)]
    upload = client.create_multipart_upload(Bucket=BUCKET, Key=key)
    parts = []
    for number, data in enumerate(parts_data, start=1):
        answer = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=data)
        parts.append({"PartNumber": number, "ETag": answer["ETag"]})
    client.complete_multipart_upload(
        Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts},
    )

    expected = b"".join(parts_data)
    assert client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] == len(expected)
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].read() == expected


def test_s3_presigned_get_serves_the_bytes(s3):
    _, client = s3
    key = f"presigned-{uuid.uuid4().hex[:8]}.txt"
    body = b"fetched without credentials, by signature\n"
    client.put_object(Bucket=BUCKET, Key=key, Body=body)
    url = client.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=300)
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.read() == body


def test_s3_refuses_wrong_credentials(s3):
    endpoint, client = s3
    key = f"refused-{uuid.uuid4().hex[:8]}.txt"

    wrong_secret = _client(endpoint, secret=endpoint.secret_key + "x")
    with pytest.raises(ClientError):
        wrong_secret.put_object(Bucket=BUCKET, Key=key, Body=b"nope")

    unknown_key = storage.s3_client(endpoint.url, REGION, "intruder", endpoint.secret_key)
    with pytest.raises(ClientError):
        unknown_key.put_object(Bucket=BUCKET, Key=key, Body=b"nope")

    # An unsigned request is refused too.
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(f"{endpoint.url}/{BUCKET}/{key}", timeout=10)
    assert 400 <= unsigned.value.code < 500, unsigned.value.code
    assert b"Error" in unsigned.value.read()

    # Nothing was written.
    with pytest.raises(ClientError) as missing:
        client.head_object(Bucket=BUCKET, Key=key)
    assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound")


def test_s3_credentials_are_private(shared_home, s3):
    endpoint, _ = s3
    credentials = shared_home / "s3" / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    stored = json.loads(credentials.read_text())
    assert (stored["access_key"], stored["secret_key"]) == (endpoint.access_key, endpoint.secret_key)

    pid = embedded.status(shared_home)["s3"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"serve" in cmdline and str(shared_home.resolve() / "s3" / "data").encode() in cmdline
    assert not any(endpoint.secret_key.encode() in part for part in cmdline)
    assert not any(endpoint.access_key.encode() in part for part in cmdline)


# ---------------------------------------------------------------------------------------------
# stop, and data surviving a restart


READ_BACK = """
import json, sys
from pathlib import Path
import psycopg
from infra import embedded
from shared.adapters import storage
home, bucket, key = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
with psycopg.connect(embedded.postgres_url(home)) as conn:
    rows = [r[0] for r in conn.execute("SELECT note FROM survivors ORDER BY id").fetchall()]
endpoint = embedded.s3_endpoint(home)
client = storage.s3_client(endpoint.url, "us-east-1", endpoint.access_key, endpoint.secret_key)
body = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
print(json.dumps({"rows": rows, "body": body, "status": embedded.status(home)}))
"""


def test_stop_stops_both_and_data_survives_a_restart(fresh_home):
    assert embedded.stop(fresh_home) == {"postgres": False, "s3": False}  # nothing there yet

    url = embedded.postgres_url(fresh_home)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE survivors (id SERIAL PRIMARY KEY, note TEXT NOT NULL)")
        conn.execute("INSERT INTO survivors (note) VALUES ('written before stop')")
    endpoint = embedded.s3_endpoint(fresh_home)
    client = _client(endpoint)
    storage.ensure_bucket(client, BUCKET)
    client.put_object(Bucket=BUCKET, Key="kept/object.txt", Body=b"still here")

    before = embedded.status(fresh_home)
    assert before["postgres"]["running"] and before["s3"]["running"]
    pids = (before["postgres"]["pid"], before["s3"]["pid"])

    assert embedded.stop(fresh_home) == {"postgres": True, "s3": True}
    after = embedded.status(fresh_home)
    assert after["postgres"]["running"] is False and after["postgres"]["pid"] is None
    assert after["s3"]["running"] is False and after["s3"]["pid"] is None
    assert all(_gone(pid) for pid in pids), pids

    assert embedded.stop(fresh_home) == {"postgres": False, "s3": False}

    # The next start (a new process, as the next CLI command would be) finds the data.
    restarted = _run_python(READ_BACK, str(fresh_home), BUCKET, "kept/object.txt")
    assert restarted["rows"] == ["written before stop"]
    assert restarted["body"] == "still here"
    assert restarted["status"]["postgres"]["running"] and restarted["status"]["s3"]["running"]
    assert restarted["status"]["postgres"]["pid"] != pids[0]
    # Credentials are stable across restarts.
    assert json.loads((fresh_home / "s3" / "credentials.json").read_text())["secret_key"] == endpoint.secret_key


def test_postgres_restarts_in_the_same_process_after_stop(fresh_home):
    embedded.postgres_url(fresh_home)
    assert embedded.stop(fresh_home)["postgres"] is True

    url = embedded.postgres_url(fresh_home)  # "start the embedded PostgreSQL if needed"

    assert embedded.status(fresh_home)["postgres"]["running"] is True
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "tierflow"


# ---------------------------------------------------------------------------------------------
# The CLI end to end


@pytest.fixture
def cli_home(tmp_path):
    home = tmp_path / "home"  # the TIERFLOW_HOME that conftest's run_cli sets
    yield home
    embedded.stop(home)


def _json_status(run_cli) -> dict:
    done = run_cli("stack", "status", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_demo_status_stop_on_a_fresh_home(run_cli, cli_home):
    assert "TIERFLOW_DATABASE_URL" not in _clean_env()
    first = run_cli("demo")
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    out = first.stdout
    assert "512x288" in out or "512×288" in out, out
    assert "1920x1080" in out or "1920×1080" in out, out
    assert "s3://" in out, out
    assert "applied" in out and "schema up to date" not in out, out
    assert str(cli_home.resolve()) in out

    status = _json_status(run_cli)
    assert status["home"] == str(cli_home.resolve())
    for service in ("postgres", "s3"):
        assert status[service]["mode"] == "embedded"
        assert status[service]["running"] is True
        assert status[service]["pid"] == embedded.status(cli_home)[service]["pid"]

    stopped = run_cli("stack", "stop", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": {"postgres": True, "s3": True}}
    status = _json_status(run_cli)
    assert status["postgres"]["running"] is False and status["s3"]["running"] is False

    second = run_cli("demo")
    assert second.returncode == 0, f"{second.stdout}\n{second.stderr}"
    assert "schema up to date" in second.stdout, second.stdout
    assert "512×288" in second.stdout or "512x288" in second.stdout

    stopped = run_cli("stack", "stop", "--json")
    assert json.loads(stopped.stdout) == {"stopped": {"postgres": True, "s3": True}}
