"""Delivery masters: ProRes and DNxHR tiers render .mov files that probe as their codec, profile and
start timecode; their delivery lists them in the manifest and writes an ASC MHL history that the
reference tool verifies; a file that is not what its tier's quality settings give is refused.

The MHL is checked with the real `ascmhl` 1.2 in a virtual environment of its own, installed once
into ~/.cache/tierflow/ascmhl-check: it cannot be installed beside the suite's libraries (every
ascmhl from 0.9.1 pins Click below 8.2, the worker's huggingface-hub needs 8.4.2 or newer), which
is also why Tierflow writes the MHL itself (shared/domain/delivery_mhl.py)."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from shared.domain import delivery, scenes, tiers
from shared.domain.recipe import SegmentSpec
from shared.errors import Conflict, InvalidInput
from shared.media.video import probe_video
from tests.conftest import generation_deps, run_until, wait_for_scene

pytestmark = pytest.mark.integration

ASCMHL_VERSION = "1.2"
SEGMENTS = [SegmentSpec(prompt="a red fox in snow", seed=41, frames=2, steps=1),
            SegmentSpec(prompt="the fox jumps", seed=42, frames=2, steps=1)]
PRORES = {"codec": "prores", "profile": "hq", "fps": 8, "timecode": "01:00:00:00"}
DNXHR = {"codec": "dnxhr", "profile": "hqx"}


@pytest.fixture(scope="session")
def ascmhl(tmp_path_factory) -> dict[str, Path]:
    """The reference ASC MHL tool (`ascmhl-debug`) and its XSD schemas, reused across runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tierflow" / "ascmhl-check"
    tool, xsd = cache / "venv" / "bin" / "ascmhl-debug", cache / "xsd"
    if not (tool.exists() and (xsd / "ASCMHL.xsd").exists() and (cache / f"ascmhl-{ASCMHL_VERSION}").exists()):
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True)
        subprocess.run([sys.executable, "-m", "venv", str(cache / "venv")], check=True, timeout=300)
        pip = [str(cache / "venv" / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
        installed = subprocess.run([*pip, "install", f"ascmhl=={ASCMHL_VERSION}"], capture_output=True, text=True,
                                   timeout=600)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        # The schemas are only in the source distribution.
        fetched = subprocess.run([*pip, "download", "--no-deps", "--no-binary", ":all:", "-d", str(cache / "sdist"),
                                  f"ascmhl=={ASCMHL_VERSION}"], capture_output=True, text=True, timeout=600)
        assert fetched.returncode == 0, fetched.stdout + fetched.stderr
        [sdist] = (cache / "sdist").glob("ascmhl-*.tar.gz")
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.endswith(".xsd") and "/xsd/" in member.name and \
                        "/examples/" not in member.name:
                    xsd.mkdir(exist_ok=True)
                    (xsd / Path(member.name).name).write_bytes(archive.extractfile(member).read())
        (cache / f"ascmhl-{ASCMHL_VERSION}").touch()
    return {"tool": tool, "xsd": xsd}


def _ascmhl(tool: Path, *args: str) -> subprocess.CompletedProcess:
    # Its CLI asks GitHub for a newer release on every run; a closed proxy answers that at once.
    env = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    return subprocess.run([str(tool), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def gen_deps(module_database_url, tmp_path_factory, tiny_model):
    from infra import embedded

    home = tmp_path_factory.mktemp("masters-home")
    deps = generation_deps(module_database_url, home, tiny_model)
    yield deps
    deps.close()
    embedded.stop(home)


@pytest.fixture(scope="module")
def masters(gen_deps):
    """A ProRes 422 HQ tier (512×512 box, 8 fps, from 01:00:00:00) and a DNxHR HQX one (256×256),
    both deliverable (ranked above production), and a generated 16:9 scene at each."""
    with gen_deps.connect() as conn:
        tiers.create_tier(conn, "masters", 512, 512, is_deliverable=True, quality_settings=PRORES)
        tiers.create_tier(conn, "dnx", 256, 256, is_deliverable=True, quality_settings=DNXHR)
    made = {name: scenes.submit_scene(gen_deps, project="fox", name=name, aspect="16:9", segments=SEGMENTS, tier=name)
            for name in ("masters", "dnx")}
    for scene_id in made.values():
        assert wait_for_scene(gen_deps, scene_id)["status"] == "generated"
    return made


def _deliver(deps, scene_ids: list[int]) -> dict:
    delivery_id = delivery.request_delivery(deps, "fox", scene_ids)
    run_until(deps, lambda conn: conn.execute(
        "SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] != "requested")
    with deps.connect() as conn:
        return delivery.get_delivery(conn, delivery_id, deps.s3, deps.bucket)


def _delivered_objects(deps, delivery_id: int) -> list[str]:
    listed = deps.s3.list_objects_v2(Bucket=deps.bucket, Prefix=f"deliveries/{delivery_id}/")
    return sorted(o["Key"] for o in listed.get("Contents", []))


def test_a_prores_hq_tier_renders_masters_that_probe_as_prores_422_hq(gen_deps, masters):
    with gen_deps.connect() as conn:
        scene = scenes.get_scene(conn, masters["masters"])
    assert (scene["width"], scene["height"]) == (512, 288)
    for segment in scene["segments"]:
        key = segment["outputs"]["video"]
        assert key.endswith(f"/segments/{segment['position']}/jobs/{segment['job']['job_id']}/video.mov")
        got = gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=key)
        assert got["ContentType"] == "video/quicktime"
        body = got["Body"].read()
        assert body[4:12] == b"ftypqt  "
        probe = probe_video(body)
        assert probe == (512, 288, 2)
        assert (probe.codec, probe.profile, probe.timecode) == ("prores", "hq", "01:00:00:00")
        assert tiers.OutputFormat(probe.codec, probe.profile, None).label == "ProRes 422 HQ"
    with gen_deps.connect() as conn:
        [dnx] = scenes.get_scene(conn, masters["dnx"])["segments"][:1]
    probe = probe_video(gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=dnx["outputs"]["video"])["Body"].read())
    assert (probe, probe.codec, probe.profile, probe.timecode) == ((256, 144, 2), "dnxhr", "hqx", "00:00:00:00")


def test_a_delivery_of_masters_completes_with_an_mhl_that_ascmhl_verifies(gen_deps, masters, ascmhl, tmp_path):
    # 1. delivered, with the masters in the manifest
    result = _deliver(gen_deps, [masters["masters"], masters["dnx"]])
    assert result["status"] == "completed", result["reasons"]
    delivery_id = result["delivery_id"]
    prefix = f"deliveries/{delivery_id}/"
    manifest = json.loads(gen_deps.s3.get_object(Bucket=gen_deps.bucket, Key=result["manifest_key"])["Body"].read())
    got = {(scene["scene_id"], seg["position"]): (seg["key"], seg["codec"], seg["profile"], seg["timecode"])
           for scene in manifest["scenes"] for seg in scene["segments"]}
    prores, dnx = masters["masters"], masters["dnx"]
    assert got == {
        (prores, 0): (f"{prefix}scene-{prores}/segment-0.mov", "prores", "hq", "01:00:00:00"),
        (prores, 1): (f"{prefix}scene-{prores}/segment-1.mov", "prores", "hq", "01:00:00:00"),
        (dnx, 0): (f"{prefix}scene-{dnx}/segment-0.mov", "dnxhr", "hqx", "00:00:00:00"),
        (dnx, 1): (f"{prefix}scene-{dnx}/segment-1.mov", "dnxhr", "hqx", "00:00:00:00")}
    mhl = manifest["mhl"]
    assert mhl["hash_format"] == "xxh64" and mhl["chain_key"] == f"{prefix}ascmhl/ascmhl_chain.xml"
    assert mhl["key"].startswith(f"{prefix}ascmhl/0001_{delivery_id}_") and mhl["key"].endswith("Z.mhl")
    # 2. the URLs: every master, the hash list and its chain; and nothing else was written
    masters_keys = [key for key, *_ in got.values()]
    assert sorted(result["file_urls"]) == sorted([*masters_keys, mhl["key"], mhl["chain_key"]])
    assert _delivered_objects(gen_deps, delivery_id) == sorted([*result["file_urls"], result["manifest_key"]])

    # 3. downloaded through the presigned URLs as a recipient would, the reference tool verifies it
    folder = tmp_path / str(delivery_id)
    for key, url in [*result["file_urls"].items(), (result["manifest_key"], result["manifest_url"])]:
        path = folder / key.removeprefix(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(urllib.request.urlopen(url, timeout=30).read())
    for key in masters_keys:
        probe = probe_video((folder / key.removeprefix(prefix)).read_bytes())
        assert (probe.codec, probe.profile) == got[next(k for k, v in got.items() if v[0] == key)][1:3]
    verified = _ascmhl(ascmhl["tool"], "verify", "-v", str(folder))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    for key in [*masters_keys, result["manifest_key"]]:
        assert f"verification (xxh64) of file {key.removeprefix(prefix)}: OK" in verified.stdout
    folders = _ascmhl(ascmhl["tool"], "verify", "--directory_hash", "-v", "-h", "xxh64", str(folder))
    assert folders.returncode == 0 and "ERROR" not in folders.stdout + folders.stderr, folders.stdout + folders.stderr
    assert f"verification of folder        scene-{prores} OK" in folders.stdout
    schema = _ascmhl(ascmhl["tool"], "xsd-schema-check", "-xsd", str(ascmhl["xsd"] / "ASCMHL.xsd"),
                     str(folder / mhl["key"].removeprefix(prefix)))
    assert schema.returncode == 0, schema.stdout + schema.stderr
    chain = _ascmhl(ascmhl["tool"], "xsd-schema-check", "-df", "-xsd",
                    str(ascmhl["xsd"] / "ASCMHLDirectory__combined.xsd"), str(folder / "ascmhl/ascmhl_chain.xml"))
    assert chain.returncode == 0, chain.stdout + chain.stderr

    # 4. and it does fail: one byte of a master changed, a file added, a file gone
    master = folder / masters_keys[0].removeprefix(prefix)
    original = master.read_bytes()
    master.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    tampered = _ascmhl(ascmhl["tool"], "verify", str(folder))
    assert tampered.returncode != 0
    assert f"hash mismatch        for {masters_keys[0].removeprefix(prefix)}" in tampered.stdout + tampered.stderr
    master.write_bytes(original)
    (folder / "extra.txt").write_text("not delivered")
    added = _ascmhl(ascmhl["tool"], "verify", str(folder))
    assert added.returncode != 0 and "found new file extra.txt" in added.stdout + added.stderr
    (folder / "extra.txt").unlink()
    (folder / "manifest.json").unlink()
    missing = _ascmhl(ascmhl["tool"], "verify", str(folder))
    assert missing.returncode != 0 and "missing file(s)" in missing.stdout + missing.stderr


def test_a_master_that_is_not_the_tiers_codec_or_profile_is_refused(gen_deps, masters):
    scene_id = masters["masters"]
    try:
        for settings, found, wanted in (
                ({**PRORES, "profile": "lt"}, "ProRes 422 HQ", "ProRes 422 LT"),
                ({"codec": "dnxhr", "profile": "hq"}, "ProRes 422 HQ", "DNxHR HQ"),
                ({"codec": "h264"}, "ProRes", "H.264")):
            with gen_deps.connect() as conn:
                tiers.update_tier(conn, "masters", quality_settings=settings)
            result = _deliver(gen_deps, [scene_id])
            assert result["status"] == "rejected" and result["manifest_key"] is None
            assert result["reasons"] == [
                {"code": "FILE_MISMATCH", "scene_id": scene_id, "tier": "masters",
                 "message": f"Scene {scene_id} segment {position}: the file is {found}, not {wanted} as tier masters's "
                            f"quality settings require (were they changed after it was generated?)."}
                for position in (0, 1)]
            assert _delivered_objects(gen_deps, result["delivery_id"]) == []
    finally:
        with gen_deps.connect() as conn:
            tiers.update_tier(conn, "masters", quality_settings=PRORES)
    # Back to the settings it was made with, it is delivered.
    assert _deliver(gen_deps, [scene_id])["status"] == "completed"


def test_master_settings_a_tier_cannot_hold_are_refused_when_it_is_created_or_updated(gen_deps, masters):
    with gen_deps.connect() as conn:
        before = [t.to_json() for t in tiers.list_tiers(conn)]
        for create, message in (
                (("tiny-dnx", 248, 120, {"codec": "dnxhr", "profile": "hq"}),
                 "invalid tier: codec dnxhr needs frames of at least 256×120, and the tier's box is 248×120: make it "
                 "larger or use codec prores"),
                (("huge-dnx", 8192, 8192, {"codec": "dnxhr"}),
                 "invalid tier: codec dnxhr cannot encode frames with both sides over 8176, and the tier's box is "
                 "8192×8192: make it smaller or use codec prores"),
                (("odd-prores", 512, 512, {"codec": "prores", "profile": "hqx"}),
                 "invalid tier: quality setting 'profile' is \"hqx\" but must be one of proxy, lt, standard, hq, 4444 "
                 "for codec prores (hqx is a dnxhr profile)"),
                (("h264-hq", 512, 512, {"codec": "h264", "profile": "hq"}),
                 "invalid tier: quality setting 'profile' is \"hq\" but codec h264 has no profiles: profiles are for "
                 "prores (proxy, lt, standard, hq, 4444) and dnxhr (lb, sq, hq, hqx, 444)")):
            name, width, height, settings = create
            with pytest.raises(InvalidInput) as refused:
                tiers.create_tier(conn, name, width, height, is_deliverable=True, quality_settings=settings)
            assert str(refused.value) == message
        # An update is checked against what it leaves: the dnx tier's box shrunk, or DNxHR for a box too small.
        with pytest.raises(InvalidInput) as shrunk:
            tiers.update_tier(conn, "dnx", height=112)
        assert str(shrunk.value) == ("invalid tier: codec dnxhr needs frames of at least 256×120, and the tier's box "
                                     "is 256×112: make it larger or use codec prores")
        tiers.create_tier(conn, "small", 128, 128)
        with pytest.raises(InvalidInput, match="the tier's box is 128×128: make it larger or use codec prores"):
            tiers.update_tier(conn, "small", quality_settings={"codec": "dnxhr"})
        tiers.delete_tier(conn, "small")
        assert [t.to_json() for t in tiers.list_tiers(conn)] == before


def test_a_scene_whose_size_dnxhr_cannot_take_is_refused_at_submission_with_nothing_written(gen_deps, masters):
    # 9:16 in the dnx tier's 256×256 box is 144×256: narrower than DNxHR's 256.
    with gen_deps.connect() as module_conn:  # the module's database (conftest's `conn` is another test's)
        before = module_conn.execute("SELECT count(*) FROM scenes").fetchone()["count"]
        with pytest.raises(Conflict) as refused:
            scenes.submit_scene(gen_deps, project="fox", name="portrait", aspect="9:16", segments=SEGMENTS[:1],
                                tier="dnx")
        assert str(refused.value) == ("codec dnxhr needs frames of at least 256×120, and a 9:16 scene's size at tier "
                                      "dnx is 144×256: make it larger or use codec prores")
        assert module_conn.execute("SELECT count(*) FROM scenes").fetchone()["count"] == before
