"""The model catalogue: jobs name a pinned model, workers refuse weights that changed, upscales
refuse a model whose pin moved, and the recipe hash covers the pin."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from events import Recipe
from functions.http.app import create_app
from infra import embedded
from shared.domain import catalogue, scenes, tiers, upscale
from shared.domain.dimensions import AspectRatio
from shared.domain.recipe import SegmentSpec, build_recipes, recipe_hash
from shared.errors import Conflict, InvalidInput
from shared.media import models
from tests.conftest import API_KEYS, generation_deps, wait_for_scene

pytestmark = pytest.mark.integration

QUICK = [SegmentSpec(prompt="a lighthouse", seed=5, frames=2, steps=1)]


def _flip_last_byte(path: Path) -> None:
    """Change one weight of a safetensors file and keep it a valid file (its last byte is data)."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def model_dir(tiny_model, tmp_path) -> Path:
    """A copy of the tiny model this test may change."""
    return Path(shutil.copytree(tiny_model, tmp_path / "lighthouse-model"))


@pytest.fixture
def home_deps(database_url, tmp_path, tiny_model):
    home = tmp_path / "home"
    deps = generation_deps(database_url, home, tiny_model, max_attempts=3)
    yield deps
    deps.close()
    embedded.stop(home)


def test_models_add_pins_a_directory_once_and_list_show_remove_say_what_is_there(run_cli, database_url, model_dir):
    env = {"TIERFLOW_DATABASE_URL": database_url}
    added = run_cli("models", "add", "lighthouse", str(model_dir), "--added-by", "ops", "--json", env=env)
    assert added.returncode == 0, added.stderr
    entry = json.loads(added.stdout)
    assert entry["pin"] == models.directory_pin(model_dir) and entry["source"] == str(model_dir)
    assert (entry["name"], entry["revision"], entry["added_by"]) == ("lighthouse", None, "ops")

    again = run_cli("models", "add", "lighthouse", str(model_dir), env=env)
    assert again.returncode == 0 and again.stdout.startswith("already in the catalogue, unchanged: lighthouse:")
    listed = json.loads(run_cli("models", "list", "--json", env=env).stdout)
    assert [m["name"] for m in listed] == ["lighthouse"]
    assert json.loads(run_cli("models", "show", "lighthouse", "--json", env=env).stdout) == entry

    _flip_last_byte(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    changed = run_cli("models", "add", "lighthouse", str(model_dir), env=env)
    assert changed.returncode == 1
    assert f"model 'lighthouse' is already in the catalogue as {model_dir} pinned to {entry['pin']}" in changed.stderr

    removed = run_cli("models", "remove", "lighthouse", env=env)
    assert removed.returncode == 0 and removed.stdout.strip() == "removed model lighthouse from the catalogue"
    gone = run_cli("models", "show", "lighthouse", env=env)
    assert gone.returncode == 1 and "model 'lighthouse' is not in the model catalogue (known: none)" in gone.stderr


@pytest.mark.parametrize(("name", "source", "revision", "message"), [
    ("a/b", "DIR", None, "model name 'a/b' must be 1-64 letters"),
    ("-x", "DIR", None, "model name '-x' must be 1-64 letters"),
    ("ok", "/no/such/dir", None, "no such directory, and not an org/name hub id"),
    ("ok", "DIR", "main", "--revision applies to hub models"),
])
def test_bad_additions_are_refused_and_add_nothing(deps, conn, model_dir, name, source, revision, message):
    with pytest.raises(Exception) as caught:
        deps.add_model(name, str(model_dir) if source == "DIR" else source, revision)
    assert message in str(caught.value)
    assert catalogue.rows(conn) == []


def test_a_directory_with_only_pickled_weights_is_refused(deps, conn, model_dir):
    weights = model_dir / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(InvalidInput, match=r"weights only in pickled formats .* in vae; workers load safetensors"):
        deps.add_model("pickled", str(model_dir))
    assert catalogue.rows(conn) == []


def test_a_hub_model_is_pinned_to_its_revisions_commit_from_the_local_hub_cache(run_cli, database_url, tmp_path):
    """No network here: the Hub does not answer, so the pin comes from the hub cache, laid out
    as huggingface_hub lays it out (refs name commits, snapshots hold the files)."""
    commit = "a" * 40
    repo = tmp_path / "hub" / "models--studio--lighthouse"
    snapshot = repo / "snapshots" / commit
    (snapshot / "unet").mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights")
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    env = {"TIERFLOW_DATABASE_URL": database_url, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}

    added = run_cli("models", "add", "lighthouse", "studio/lighthouse", "--revision", "v1", "--json", env=env)
    assert added.returncode == 0, added.stderr
    assert {k: json.loads(added.stdout)[k] for k in ("source", "revision", "pin")} == {
        "source": "studio/lighthouse", "revision": "v1", "pin": commit}

    unknown = run_cli("models", "add", "other", "studio/not-cached", env=env)
    assert unknown.returncode == 1
    assert "model 'studio/not-cached' could not be pinned: the Hugging Face Hub did not answer" in unknown.stderr


def test_a_job_naming_a_model_outside_the_catalogue_is_refused_with_the_known_ones(home_deps, conn):
    scenes.submit_scene(home_deps, project="p", name="s", aspect="16:9", segments=QUICK)  # adds the default
    before = conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"]
    for named in ("sdxl", "/srv/models/anything", "org/name"):
        with pytest.raises(InvalidInput) as caught:
            scenes.submit_scene(home_deps, project="p", name="s", aspect="16:9", segments=QUICK, model=named)
        assert str(caught.value) == (f"model {named!r} is not in the model catalogue (known: tiny); an admin adds "
                                     "it with `tierflow models add NAME SOURCE`")
    assert conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"] == before


def test_the_default_model_is_added_on_first_use_and_a_taken_name_is_not_taken_over(home_deps, conn, tiny_model,
                                                                                        model_dir):
    scene_id = scenes.submit_scene(home_deps, project="p", name="s", aspect="16:9", segments=QUICK)
    [entry] = catalogue.rows(conn)
    assert (entry["name"], entry["source"], entry["added_by"]) == ("tiny", tiny_model, "TIERFLOW_MODEL")
    assert wait_for_scene(home_deps, scene_id)["segments"][0]["recipe"]["model_pin"] == entry["pin"]

    # TIERFLOW_MODEL naming another directory called "tiny": refused, not silently the other one.
    other = model_dir.rename(model_dir.with_name("tiny"))
    deps = generation_deps(home_deps.settings.database_url.get_secret_value(), home_deps.settings.home, str(other))
    with pytest.raises(Conflict, match=rf"TIERFLOW_MODEL={other} is not in the model catalogue, and model 'tiny' "
                                       r"is already in the catalogue as .*; add it with `tierflow models add NAME"):
        scenes.submit_scene(deps, project="p", name="s", aspect="16:9", segments=QUICK)


def test_weights_changed_after_registration_fail_the_job_with_model_changed_and_no_retry(home_deps, model_dir):
    home_deps.add_model("lighthouse", str(model_dir))
    pin = models.directory_pin(model_dir)
    _flip_last_byte(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    scene_id = scenes.submit_scene(home_deps, project="p", name="s", aspect="16:9", segments=QUICK,
                                   model="lighthouse")
    scene = wait_for_scene(home_deps, scene_id)
    assert scene["status"] == "failed"
    job = scene["segments"][0]["job"]
    assert job["attempt"] == 1  # max_attempts is 3: MODEL_CHANGED is not retried
    assert job["error"].startswith(f"MODEL_CHANGED: the files of model 'lighthouse' in {model_dir} hash to sha256:")
    assert f"not to {pin}, which it was pinned to when it was added" in job["error"]


def test_the_recipe_hash_covers_the_pin_and_an_upscale_refuses_a_model_whose_pin_moved(home_deps, conn, model_dir):
    home_deps.add_model("lighthouse", str(model_dir))
    first = scenes.submit_scene(home_deps, project="p", name="s", aspect="16:9", segments=QUICK, model="lighthouse")
    assert wait_for_scene(home_deps, first)["status"] == "generated"

    # The same name, other weights: only after a remove, and the recipe hash tells them apart.
    catalogue.remove(conn, "lighthouse")
    _flip_last_byte(model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    home_deps.add_model("lighthouse", str(model_dir))
    second = scenes.submit_scene(home_deps, project="p", name="s", aspect="16:9", segments=QUICK, model="lighthouse")
    hashes = [conn.execute("SELECT recipe_hash FROM scenes WHERE id = %s", [i]).fetchone()["recipe_hash"]
              for i in (first, second)]
    assert hashes[0] != hashes[1]

    with home_deps.uow() as uow, pytest.raises(Conflict) as caught:
        upscale.upscale_scene(uow.conn, uow.emit, first, "preview")
    assert f"scene {first} cannot be upscaled: its model 'lighthouse' was pinned to " in str(caught.value)
    assert "but the catalogue's 'lighthouse' is now" in str(caught.value) and "other weights" in str(caught.value)


def test_a_model_with_unfinished_jobs_cannot_be_removed(deps, conn, tiny_model):
    deps.add_model("lighthouse", tiny_model)
    with deps.uow() as uow:  # queued jobs, and no worker to run them
        entry = catalogue.for_submission(uow.conn, "lighthouse")
        scenes.create_scene(uow.conn, uow.emit, project="p", name="s", aspect=AspectRatio(16, 9),
                            tier=tiers.get_tier(uow.conn, "draft"),
                            recipes=build_recipes(QUICK, "lighthouse", entry["pin"]))
    with pytest.raises(Conflict, match="model 'lighthouse' has 1 queued or running job"):
        catalogue.remove(conn, "lighthouse")
    assert catalogue.names(conn) == ["lighthouse"]


def test_a_recipe_from_before_the_catalogue_keeps_its_hash_and_cannot_be_upscaled(conn):
    legacy = Recipe(prompt="p", seed=1, frames=2, fps=8, steps=1, guidance=7.5, model="/models/tiny")
    before_the_catalogue = json.dumps({"aspect": "16:9", "segments": [{
        "prompt": "p", "negative_prompt": None, "seed": 1, "frames": 2, "fps": 8, "steps": 1, "guidance": 7.5,
        "model": "/models/tiny", "scheduler": None}]}, sort_keys=True, separators=(",", ":"))
    assert recipe_hash(AspectRatio(16, 9), [legacy]) == hashlib.sha256(before_the_catalogue.encode()).hexdigest()
    pinned = legacy.model_copy(update={"model_pin": "b" * 40})
    assert recipe_hash(AspectRatio(16, 9), [pinned]) != recipe_hash(AspectRatio(16, 9), [legacy])
    with pytest.raises(Conflict, match="was used before the model catalogue existed"):
        catalogue.check_still_pinned(conn, 7, "/models/tiny", None)


def test_the_api_lists_models_to_viewers_and_only_admins_add_or_remove_them(api_deps, conn, model_dir):
    with TestClient(create_app(api_deps)) as client:
        body = {"name": "lighthouse", "source": str(model_dir)}
        for role in ("viewer", "artist"):
            assert client.post("/api/models", json=body, headers={"X-API-Key": API_KEYS[role]}).status_code == 403
        assert catalogue.rows(conn) == []
        admin = {"X-API-Key": API_KEYS["admin"]}
        created = client.post("/api/models", json=body, headers=admin)
        assert created.status_code == 201 and created.json()["added_by"] == "admin-1"
        viewer = {"X-API-Key": API_KEYS["viewer"]}
        assert [m["name"] for m in client.get("/api/models", headers=viewer).json()] == ["lighthouse"]
        assert client.get("/api/models/lighthouse", headers=viewer).json()["pin"] == models.directory_pin(model_dir)
        missing = client.get("/api/models/nope", headers=viewer)
        assert missing.status_code == 404 and "known: lighthouse" in missing.json()["detail"]
        refused = client.post("/api/jobs", headers={"X-API-Key": API_KEYS["artist"]}, json={
            "project": "p", "scene": "s", "aspect": "16:9", "model": "/etc", "segments": [{"prompt": "x"}]})
        assert refused.status_code == 422 and "model '/etc' is not in the model catalogue" in refused.json()["detail"]
        assert client.delete("/api/models/lighthouse", headers=admin).json() == {"removed": "lighthouse"}
        assert catalogue.rows(conn) == []
