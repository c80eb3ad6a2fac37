"""`tierflow serve`: prints where it listens and where the admin key is, and serves with that key."""

import json
import os
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
        assert lines == [f"Tierflow at http://127.0.0.1:{port}/ (API under http://127.0.0.1:{port}/api, "
                         f"OpenAPI at http://127.0.0.1:{port}/openapi.json)\n",
                         f"API keys: {keys_file.resolve()} (the admin key is in it)\n"]
        key = json.loads(keys_file.read_text())["keys"][0]["key"]
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
