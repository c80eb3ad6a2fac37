"""Slim installs per role: each role runs with only its extra, and a command that needs a missing
extra says which to install.

An install without an extra is simulated in a real process: a sitecustomize puts None in
sys.modules for the extras' modules, which makes Python refuse them as if they were not there
(importlib.util.find_spec says None, an import raises ModuleNotFoundError).
"""

import json
import os
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from infra.net import free_ports
from shared.domain import catalogue
from shared.media import models
from tests.conftest import TIERFLOW

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
# The top-level modules each extra brings (pyproject.toml), and the test tools.
WORKER = ["torch", "diffusers", "transformers", "safetensors"]
API = ["fastapi", "starlette", "uvicorn"]
EMBEDDED = ["pgserver"]
AWS = ["aws_lambda_powertools"]
OBSERVABILITY = ["prometheus_client", "opentelemetry.sdk", "opentelemetry.exporter"]  # (fastapi brings opentelemetry-api)
TEST = ["pytest", "hypothesis", "jsonschema", "moto", "cfnlint", "yaml", "httpx", "schemathesis", "selenium"]


def test_the_core_dependencies_hold_no_gpu_stack_no_servers_and_no_test_tools():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    for heavy in ("torch", "diffusers", "transformers", "pytest", "selenium", "moto", "pgserver", "rclone", "fastapi"):
        assert heavy not in core
    extras = project["optional-dependencies"]
    assert set(extras) == {"worker", "api", "embedded", "aws", "observability", "demo", "test"}
    assert extras["demo"] == ["tierflow[worker,embedded]"]
    assert extras["test"][0] == "tierflow[worker,api,embedded,aws,observability]"


def _without(tmp_path: Path, blocked: list[str], extra_env: dict | None = None) -> dict:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(
        "import os, sys\n"
        "for name in os.environ['TIERFLOW_TEST_WITHOUT'].split(','):\n"
        "    sys.modules[name] = None\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}
    env.update({"PYTHONPATH": str(site), "TIERFLOW_TEST_WITHOUT": ",".join(blocked),
                "TIERFLOW_HOME": str(tmp_path / "home"), **(extra_env or {})})
    return env


def _tierflow(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([TIERFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def test_a_core_only_install_runs_the_cli_and_says_which_extra_a_command_needs(tmp_path, database_url):
    env = _without(tmp_path, WORKER + API + EMBEDDED + AWS + OBSERVABILITY + TEST,
                   {"TIERFLOW_DATABASE_URL": database_url})
    assert _tierflow(env, "--help").returncode == 0
    status = _tierflow(env, "db", "status", "--json")
    assert status.returncode == 0, status.stderr
    assert all(m["applied_at"] for m in json.loads(status.stdout))

    served = _tierflow(env, "serve")
    assert (served.returncode, served.stderr.strip()) == (
        1, "tierflow serve: needs the 'api' extra (uvicorn is not installed): pip install 'tierflow[api]'")
    worker = _tierflow(env, "worker", "serve", "--max-jobs", "1")
    assert worker.returncode == 1
    assert worker.stderr.strip().endswith(
        "needs the 'worker' extra (torch is not installed): pip install 'tierflow[worker]'")

    # Told to export traces, a process that cannot refuses to run untraced.
    traced = _tierflow({**env, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, "db", "status")
    assert traced.returncode == 1
    assert traced.stderr.startswith("tierflow db: needs the 'observability' extra (opentelemetry")
    assert traced.stderr.strip().endswith("pip install 'tierflow[observability]'")

    embedded = _tierflow({k: v for k, v in env.items() if k != "TIERFLOW_DATABASE_URL"}, "db", "status")
    assert embedded.returncode == 1
    assert "the embedded PostgreSQL needs the 'embedded' extra: pip install 'tierflow[embedded]'" in embedded.stderr


def test_an_api_only_install_serves_the_api(tmp_path, database_url, moto_server, conn, tiny_model):
    keys = [{"name": "ana", "role": "artist", "key": "artist-key-0123456789abcdef"}]
    env = _without(tmp_path, WORKER + EMBEDDED + AWS + OBSERVABILITY + TEST, {
        "TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_S3_ENDPOINT_URL": moto_server,
        "TIERFLOW_API_KEYS": json.dumps(keys), "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    [port] = free_ports()
    server = subprocess.Popen([TIERFLOW, "serve", "--api-only", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as ready:
                    assert json.load(ready)["ready"] is True
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.monotonic() < deadline, "serve --api-only did not get ready"
                time.sleep(0.3)

        def call(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
            request = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body else None,
                                             headers={"X-API-Key": keys[0]["key"], "Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.load(response)
            except urllib.error.HTTPError as error:
                return error.code, json.load(error)

        status, tiers = call("GET", "/api/resolution-tiers")
        assert status == 200 and [t["name"] for t in tiers][:3] == ["draft", "preview", "production"]
        job = {"project": "p", "scene": "s", "aspect": "16:9", "segments": [{"prompt": "a harbour", "seed": 1}]}
        # No model yet, and the tiny one cannot be built without the worker extra: said so.
        status, problem = call("POST", "/api/jobs", job)
        assert status == 503 and "the default model 'tiny' is not in the model catalogue yet, and it cannot be " \
                                  "built here: needs the 'worker' extra" in problem["detail"]
        # With a catalogue model (added where the weights are), the job is accepted.
        catalogue.add(conn, "tiny", source=tiny_model, revision=None, pin=models.directory_pin(Path(tiny_model)))
        status, scene = call("POST", "/api/jobs", job)
        assert status == 202 and scene["segments"][0]["recipe"]["model"] == "tiny"
    finally:
        server.terminate()
        server.wait(30)
    assert "Traceback" not in server.stderr.read()
