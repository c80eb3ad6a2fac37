"""Prometheus metrics: what a process did (counters, histograms) and what the database holds (read
at each scrape, so a restarted process reports it too), at /metrics and --metrics-port."""

import re
import subprocess
import time
import urllib.request

import pytest
from fastapi.testclient import TestClient

from functions.http.app import create_app
from infra.net import free_ports
from shared.domain import scenes
from shared.domain.recipe import SegmentSpec
from tests.conftest import TIERFLOW, wait_for_scene
from tests.integration.test_packaging import _without

pytestmark = pytest.mark.integration

TWO = [SegmentSpec(prompt="a harbour at dawn", seed=3, frames=2, steps=1),
       SegmentSpec(prompt="gulls take off", seed=4, frames=2, steps=1)]


def _value(text: str, name: str, **labels) -> float:
    """The sample `name{labels}` of a Prometheus text exposition (labels in any order)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
        if match:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
            if found == {k: str(v) for k, v in labels.items()}:
                return float(match.group(2))
    raise AssertionError(f"no {name}{labels} in the exposition")


def test_serve_shows_what_it_applied_and_what_the_database_holds(api_deps):
    scene_id = scenes.submit_scene(api_deps, project="harbour", name="s", aspect="16:9", segments=TWO)
    assert wait_for_scene(api_deps, scene_id)["status"] == "generated"
    with TestClient(create_app(api_deps)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert _value(text, "tierflow_events_total", function="on_generation_result", outcome="applied") >= 4
    assert _value(text, "tierflow_handler_seconds_count", function="on_generation_result") >= 4
    assert _value(text, "tierflow_jobs", tier="draft", status="succeeded") == 2
    assert _value(text, "tierflow_render_seconds_count", tier="draft") == 2
    assert _value(text, "tierflow_render_seconds_bucket", tier="draft", le="+Inf") == 2
    assert _value(text, "tierflow_held_seconds_sum", tier="draft") > 0
    assert _value(text, "tierflow_device_seconds_total", project="harbour", tier="draft") > 0
    assert _value(text, "tierflow_outbox_unsent") >= 0 and _value(text, "tierflow_database_up") == 1


def _scrape(url: str, server: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, f"nothing answered at {url}"
            time.sleep(0.3)


def test_a_fresh_consume_process_reports_the_stored_figures(gen_deps, database_url, tmp_path):
    scene_id = scenes.submit_scene(gen_deps, project="harbour", name="s", aspect="16:9", segments=TWO)
    assert wait_for_scene(gen_deps, scene_id)["status"] == "generated"
    [port] = free_ports()
    env = _without(tmp_path, [], {"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_HOME": str(gen_deps.settings.home)})
    consumer = subprocess.Popen([TIERFLOW, "consume", "on_scene_approved", "--metrics-port", str(port)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        text = _scrape(f"http://127.0.0.1:{port}/metrics", consumer)
    finally:
        consumer.terminate()
        consumer.wait(30)
    assert _value(text, "tierflow_jobs", tier="draft", status="succeeded") == 2  # from the database
    assert _value(text, "tierflow_device_seconds_total", project="harbour", tier="draft") > 0
    assert "tierflow_events_total{" not in text  # what this new process did: nothing yet


def test_without_the_observability_extra_metrics_say_which_to_install(tmp_path, database_url):
    env = _without(tmp_path, ["prometheus_client"], {"TIERFLOW_DATABASE_URL": database_url})
    refused = subprocess.run([TIERFLOW, "consume", "--metrics-port", str(free_ports()[0])], env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert "/metrics needs the 'observability' extra (prometheus_client is not installed): pip install " \
           "'tierflow[observability]'" in refused.stderr
