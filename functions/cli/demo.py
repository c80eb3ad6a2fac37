"""`tierflow demo`: the main job end to end on whatever stack is configured (embedded by default)."""

import hashlib
import time

from functions.cli.jobs import DEPLOYED, print_scene, wait_for_scene
from functions.cli.parsing import add_command, print_table
from functions.cli.tiers import show_tiers
from shared.adapters import db
from shared.domain import delivery, recipe, scenes, tiers, upscale
from shared.domain.dimensions import parse_aspect
from shared.errors import TierflowError
from shared.runtime import drive


def cmd_demo(deps, args) -> int:
    settings = deps.settings
    print(f"Tierflow demo (home {settings.home.resolve()})")

    started = time.monotonic()
    with deps.connect(check_schema=False) as conn:
        print(f"[1/8] PostgreSQL ready in {time.monotonic() - started:.1f} s")
        applied = db.migrate(conn)
        print(f"[2/8] migrations: {len(applied)} applied" if applied else "[2/8] migrations: schema up to date")

        started = time.monotonic()
        s3 = deps.s3
        key = "demo/hello.txt"
        body = b"Draft cheap, finish what is approved.\n"
        s3.put_object(Bucket=deps.bucket, Key=key, Body=body)
        read_back = s3.get_object(Bucket=deps.bucket, Key=key)["Body"].read()
        if hashlib.sha256(read_back).digest() != hashlib.sha256(body).digest():
            raise TierflowError(f"S3 returned different bytes for s3://{deps.bucket}/{key}")
        print(f"[3/8] S3 ready in {time.monotonic() - started:.1f} s: wrote and read back s3://{deps.bucket}/{key}")

        aspect = parse_aspect("16:9")
        print(f"[4/8] resolution tiers and the size a {aspect} scene is generated at:")
        show_tiers(tiers.list_tiers(conn), aspect, as_json=False)

    started = time.monotonic()
    model = deps.default_model()
    print(f"[5/8] generating a 2-segment {aspect} scene at the default tier with catalogue model {model!r}")
    segments = [recipe.SegmentSpec(prompt="a red fox crossing a snowy field at dawn", seed=1234, frames=4, fps=8,
                                   steps=4),
                recipe.SegmentSpec(prompt="the fox leaps over a frozen stream", seed=5678, frames=4, fps=8, steps=4)]
    draft_id = scenes.submit_scene(deps, project="demo", name="fox-opening", aspect=str(aspect), segments=segments)
    draft = wait_for_scene(deps, draft_id)
    if draft["status"] != "generated":
        print_scene(draft)
        return 1
    print(f"      scene {draft_id} generated in {time.monotonic() - started:.1f} s")

    print("[6/8] approving it; project 'demo' upscales approved scenes to production automatically")
    upscale.set_auto_upscale(deps, "demo", "production")
    event_id = scenes.approve(deps, draft_id, approved_by="demo")
    drive.run_until(deps, DEPLOYED, lambda conn: drive.approval_settled(conn, draft_id, event_id), settle=False)
    with deps.connect() as conn:
        target_id = drive.upscale_target_of(conn, draft_id)
    production = wait_for_scene(deps, target_id)

    print("[7/8] the approved draft and its production re-generation (same seeds, same recipe hash):")
    with deps.connect() as conn:
        versions = [scenes.get_scene(conn, draft_id), scenes.get_scene(conn, target_id)]
    rows = []
    for scene in versions:
        for segment in scene["segments"]:
            job = segment["job"] or {}
            rows.append([scene["scene_id"], scene["tier"], f"{scene['width']}×{scene['height']}", scene["status"],
                         segment["position"], segment["recipe"]["seed"],
                         f"{job.get('device_seconds') or 0:.1f}",
                         "-" if segment["ssim"] is None else f"{segment['ssim']:.3f}",
                         "-" if segment["psnr"] is None else f"{segment['psnr']:.1f}",
                         (segment["outputs"] or {}).get("video", "-")])
    print_table(["SCENE", "TIER", "SIZE", "STATUS", "SEG", "SEED", "SECONDS", "SSIM", "PSNR", "VIDEO (s3://" +
                  deps.bucket + "/…)"], rows)
    print("(The tiny model has random weights, so its frames are noise and do not keep their composition\n"
          " across sizes: low similarity, flagged for review. A real model is judged the same way.)")
    same = versions[0]["recipe_hash"] == versions[1]["recipe_hash"]
    print(f"recipe hashes {'match' if same else 'DIFFER'}: {versions[0]['recipe_hash'][:16]}…; "
          f"side-by-side images: {', '.join(s['outputs']['comparison'] for s in versions[1]['segments'] if s['outputs'])}")
    print("[8/8] delivering: first the Draft (refused), then the Production version")
    outcomes = {}
    for scene_id in (draft_id, target_id):
        delivery_id = delivery.request_delivery(deps, "demo", [scene_id], requested_by="demo")
        drive.run_until(deps, DEPLOYED, lambda conn: drive.delivery_decided(conn, delivery_id), settle=False)
        with deps.connect() as conn:
            outcome = delivery.get_delivery(conn, delivery_id)
        outcomes[scene_id] = outcome["status"]
        if outcome["status"] == "rejected":
            for reason in outcome["reasons"]:
                print(f"      delivery {delivery_id} rejected: {reason['code']}: {reason['message']}")
        else:
            print(f"      delivery {delivery_id} completed: manifest s3://{deps.bucket}/{outcome['manifest_key']}")
    print(f"Done in {time.monotonic() - started:.1f} s. `tierflow scenes show {target_id}` shows the lineage; "
          "`tierflow serve` shows it all in the browser; `tierflow stack stop` stops the services.")
    delivered_as_expected = outcomes == {draft_id: "rejected", target_id: "completed"}
    return 0 if production["status"] == "generated" and same and delivered_as_expected else 1


def register(commands) -> None:
    """Add `demo` to the `tierflow` parser."""
    add_command(commands, "demo", cmd_demo, "run the main job end to end on the configured (default: embedded) stack",
                json_output=False)
