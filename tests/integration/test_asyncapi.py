"""events/asyncapi.yaml: generated from the event models, in step with them, and valid for the
AsyncAPI parser (npm's @asyncapi/parser, installed once into ~/.cache by the test)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from events import ALL_TOPICS, dlq_topic
from events.asyncapi import ASYNCAPI_PATH, render

pytestmark = pytest.mark.integration

CHECK_DIR = Path(__file__).resolve().parents[1] / "asyncapi"


def test_the_document_is_up_to_date_and_lists_every_topic_and_its_dead_letters():
    assert ASYNCAPI_PATH.read_text() == render(), "stale: run `python -m events.asyncapi` and commit the result"
    document = yaml.safe_load(ASYNCAPI_PATH.read_text())
    assert document["asyncapi"] == "3.0.0"
    assert set(document["channels"]) == {*ALL_TOPICS, *(dlq_topic(t) for t in ALL_TOPICS)}
    approved = document["components"]["messages"]["scene_approved"]
    assert approved["payload"] == {"$ref": "./schemas/scene.approved.json"}
    assert approved["bindings"]["kafka"]["key"]["description"] == "The CloudEvents subject: data.scene_id."
    assert approved["headers"]["properties"]["content-type"]["const"] == "application/cloudevents+json"


@pytest.fixture(scope="session")
def asyncapi_parser() -> Path:
    """A directory with the parser installed and the validating script, reused across runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tierflow" / "asyncapi-check"
    cache.mkdir(parents=True, exist_ok=True)
    for name in ("package.json", "validate.mjs"):
        shutil.copy(CHECK_DIR / name, cache / name)
    installed = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=cache,
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return cache


def _validate(parser_dir: Path, document: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["node", "validate.mjs", str(document)], cwd=parser_dir, capture_output=True, text=True,
                          timeout=120)


def test_the_asyncapi_parser_validates_the_document_with_every_schema_it_references(asyncapi_parser, tmp_path):
    checked = _validate(asyncapi_parser, ASYNCAPI_PATH)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"valid: {2 * len(ALL_TOPICS)} channels, {2 * len(ALL_TOPICS)} messages" in checked.stdout

    # The parser does fail: the same document without the schemas it references.
    broken = tmp_path / "asyncapi.yaml"
    broken.write_text(ASYNCAPI_PATH.read_text())
    refused = _validate(asyncapi_parser, broken)
    assert refused.returncode == 1 and "error" in refused.stdout
