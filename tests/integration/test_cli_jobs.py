"""`tierflow jobs submit`, `scenes show/list` as a user types them."""

import json

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(run_cli, database_url, tiny_model):
    return lambda *args: run_cli(*args, env={"TIERFLOW_DATABASE_URL": database_url, "TIERFLOW_MODEL": tiny_model})


def test_each_prompt_starts_a_segment_with_its_own_options(cli):
    result = cli("jobs", "submit", "--project", "fox", "--scene", "opening", "--aspect", "2.39:1", "--tier", "preview",
                 "--prompt", "a fox", "--seed", "7", "--frames", "3",
                 "--prompt", "the fox runs", "--steps", "2", "--guidance", "5", "--negative-prompt", "blurry", "--json")
    assert result.returncode == 0, result.stderr
    scene = json.loads(result.stdout)
    assert (scene["tier"], scene["width"], scene["height"], scene["aspect"], scene["status"]) == (
        "preview", 768, 320, "2.39:1", "pending")
    first, second = (s["recipe"] for s in scene["segments"])
    assert (first["prompt"], first["seed"], first["frames"], first["steps"]) == ("a fox", 7, 3, 25)
    assert (second["prompt"], second["steps"], second["guidance"], second["negative_prompt"], second["frames"]) == (
        "the fox runs", 2, 5.0, "blurry", 16)
    assert isinstance(second["seed"], int)
    # A scene submitted today draws its noise so that every tier keeps the composition.
    assert first["noise"] == second["noise"] == "consistent-v1"

    listed = json.loads(cli("scenes", "list", "--json").stdout)
    assert [s["scene_id"] for s in listed] == [scene["scene_id"]]
    shown = cli("scenes", "show", str(scene["scene_id"]))
    assert "tier preview at 768×320" in shown.stdout and "seed 7" in shown.stdout


def test_a_spec_file_submits_the_same(cli, tmp_path):
    spec = tmp_path / "scene.json"
    spec.write_text(json.dumps({"project": "fox", "scene": "s", "aspect": "16:9",
                                "segments": [{"prompt": "a", "seed": 1}, {"prompt": "b", "seed": 2, "frames": 4}]}))
    scene = json.loads(cli("jobs", "submit", "--spec", str(spec), "--json").stdout)
    assert [(s["recipe"]["seed"], s["recipe"]["frames"]) for s in scene["segments"]] == [(1, 16), (2, 4)]
    assert (scene["tier"], scene["width"], scene["height"]) == ("draft", 512, 288)
    assert {s["recipe"]["noise"] for s in scene["segments"]} == {"consistent-v1"}


def test_the_noise_scheme_is_chosen_by_option_or_spec_the_option_winning(cli, tmp_path):
    native = json.loads(cli("jobs", "submit", "--project", "fox", "--scene", "n", "--aspect", "16:9",
                            "--noise", "native", "--prompt", "a", "--json").stdout)
    assert native["segments"][0]["recipe"]["noise"] == "native"
    spec = tmp_path / "scene.json"
    spec.write_text(json.dumps({"project": "fox", "scene": "s", "aspect": "16:9", "noise": "native",
                                "segments": [{"prompt": "a", "seed": 1}]}))
    from_spec = json.loads(cli("jobs", "submit", "--spec", str(spec), "--json").stdout)
    assert from_spec["segments"][0]["recipe"]["noise"] == "native"
    overridden = json.loads(cli("jobs", "submit", "--spec", str(spec), "--noise", "consistent-v1", "--json").stdout)
    assert overridden["segments"][0]["recipe"]["noise"] == "consistent-v1"
    # Equal recipes but for the noise are different pictures: their hashes differ.
    assert from_spec["recipe_hash"] != overridden["recipe_hash"]


def test_an_unknown_noise_scheme_in_a_spec_is_refused_and_writes_nothing(cli, conn, tmp_path):
    spec = tmp_path / "scene.json"
    spec.write_text(json.dumps({"project": "fox", "scene": "s", "aspect": "16:9", "noise": "perlin",
                                "segments": [{"prompt": "a"}]}))
    result = cli("jobs", "submit", "--spec", str(spec))
    assert result.returncode == 2
    assert "unknown noise scheme 'perlin': use one of consistent-v1, native" in result.stderr
    assert conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"] == 0


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--seed", "3", "--prompt", "x"], 2, "--seed applies to a segment: put it after that segment's --prompt"),
        (["--prompt", "x", "--tier", "ultra"], 1, "unknown tier 'ultra'"),
        (["--prompt", "x", "--frames", "0"], 2, "segment 1: frames"),
        (["--prompt", "x", "--seed", "abc"], 2, "invalid int value: 'abc'"),
        ([], 2, "at least one segment"),
        (["--prompt", "x", "--noise", "perlin"], 2, "argument --noise: invalid choice: 'perlin'"),
    ],
)
def test_bad_submissions_are_one_line_and_write_nothing(cli, conn, args, code, message):
    result = cli("jobs", "submit", "--project", "p", "--scene", "s", "--aspect", "16:9", *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    [line] = result.stderr.strip().splitlines()
    assert message in line
    assert conn.execute("SELECT count(*) AS n FROM scenes").fetchone()["n"] == 0


def test_missing_scene_is_not_found(cli):
    result = cli("scenes", "show", "999")
    assert result.returncode == 1 and "scene 999 does not exist" in result.stderr
