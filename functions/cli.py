"""The `tierflow` command: a thin entrypoint over the services in `shared/`.

Conventions for every command: `--json` prints stable, documented JSON on stdout; errors go to
stderr as one line without a traceback; exit status 2 for a usage error (bad arguments or
values), 1 for a request a rule refused, 0 on success.
"""

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence

from functions import cli_delivery, cli_events, cli_infra, cli_jobs, cli_serve
from functions.cli_parsing import Parser, add_command, add_group, print_table
from shared import db, tiers
from shared.bootstrap import Deps
from shared.config import load_settings
from shared.dimensions import parse_aspect
from events import InvalidEvent
from shared.errors import TierflowError


def _print_json(value) -> None:
    print(json.dumps(value, indent=2, default=str))


def _yes(flag: bool) -> str:
    return "yes" if flag else "-"


# ---------------------------------------------------------------------------------------------
# db


def cmd_db_migrate(deps: Deps, args) -> int:
    with deps.connect(check_schema=False) as conn:
        applied = db.migrate(conn)
    if args.json:
        _print_json({"applied": [f"{m.version}_{m.name}" for m in applied]})
    elif applied:
        for m in applied:
            print(f"applied {m.version}_{m.name}")
    else:
        print("schema is up to date; nothing to apply")
    return 0


def cmd_db_status(deps: Deps, args) -> int:
    with deps.connect(check_schema=False) as conn:
        rows = db.migration_status(conn)
    if args.json:
        _print_json([{**r, "applied_at": r["applied_at"].isoformat() if r["applied_at"] else None} for r in rows])
        return 0
    print_table(
        ["VERSION", "NAME", "STATE"],
        [[r["version"], r["name"], f"applied {r['applied_at']:%Y-%m-%d %H:%M:%S}" if r["applied_at"] else "pending"]
         for r in rows],
    )
    return 0


# ---------------------------------------------------------------------------------------------
# tiers


def _tier_rows(tier_list: list[tiers.Tier], aspect) -> list[list[object]]:
    rows = []
    for t in tier_list:
        row = [t.name, t.label, f"{t.width}×{t.height}", f"{t.speed_factor:g}", t.sort_order,
               _yes(t.is_default), _yes(t.is_deliverable), _yes(t.is_builtin)]
        if aspect:
            row.append("%d×%d" % t.size_for(aspect))
        rows.append(row)
    return rows


def _show_tiers(tier_list: list[tiers.Tier], aspect, as_json: bool) -> None:
    if as_json:
        _print_json([
            {**t.to_json(), **({"size_for_aspect": dict(zip(("width", "height"), t.size_for(aspect)))} if aspect else {})}
            for t in tier_list
        ])
        return
    headers = ["NAME", "LABEL", "BOX", "SPEED", "ORDER", "DEFAULT", "DELIVERABLE", "BUILT-IN"]
    if aspect:
        headers.append(f"SIZE AT {aspect.label}")
    print_table(headers, _tier_rows(tier_list, aspect))


def cmd_tiers_list(deps: Deps, args) -> int:
    aspect = parse_aspect(args.aspect) if args.aspect else None
    with deps.connect() as conn:
        _show_tiers(tiers.list_tiers(conn), aspect, args.json)
    return 0


def _quality(args):
    return tiers.parse_quality_settings(args.quality_settings) if args.quality_settings is not None else None


def cmd_tiers_create(deps: Deps, args) -> int:
    quality = _quality(args)
    with deps.connect() as conn:
        tier = tiers.create_tier(
            conn, args.name, args.width, args.height,
            speed_factor=args.speed_factor, sort_order=args.sort_order,
            is_default=args.default, is_deliverable=args.deliverable, quality_settings=quality,
        )
    _show_tiers([tier], None, args.json)
    return 0


def cmd_tiers_update(deps: Deps, args) -> int:
    extra = {"quality_settings": _quality(args)} if args.quality_settings is not None else {}
    with deps.connect() as conn:
        tier = tiers.update_tier(
            conn, args.name, new_name=args.new_name, width=args.width, height=args.height,
            speed_factor=args.speed_factor, sort_order=args.sort_order,
            is_default=args.default, is_deliverable=args.deliverable, **extra,
        )
    _show_tiers([tier], None, args.json)
    return 0


def cmd_tiers_delete(deps: Deps, args) -> int:
    with deps.connect() as conn:
        tier = tiers.delete_tier(conn, args.name)
    if args.json:
        _print_json({"deleted": tier.name})
    else:
        print(f"deleted tier {tier.name}")
    return 0


# ---------------------------------------------------------------------------------------------
# stack and config


def _stack_status(deps: Deps) -> dict:
    from infra import embedded

    settings = deps.settings
    running = embedded.status(settings.home)
    postgres = (
        {"mode": "embedded", **running["postgres"]}
        if settings.embedded_database
        else {"mode": "external", "url": settings.masked()["database_url"]}
    )
    s3 = (
        {"mode": "embedded", **running["s3"], "bucket": settings.s3_bucket}
        if settings.embedded_s3
        else {"mode": "external", "url": settings.s3_endpoint_url, "bucket": settings.s3_bucket}
    )
    return {"home": str(settings.home.resolve()), "postgres": postgres, "s3": s3}


def cmd_stack_status(deps: Deps, args) -> int:
    status = _stack_status(deps)
    if args.json:
        _print_json(status)
        return 0
    print(f"home: {status['home']}")
    for service in ("postgres", "s3"):
        info = status[service]
        if info["mode"] == "external":
            print(f"{service}: external at {info['url']}")
        elif info["running"]:
            print(f"{service}: running (pid {info['pid']}) at {info['url']}, data in {info['data_dir']}")
        else:
            print(f"{service}: stopped (starts on first use), data in {info['data_dir']}")
    return 0


def cmd_stack_stop(deps: Deps, args) -> int:
    from infra import embedded

    stopped = embedded.stop(deps.settings.home)
    if args.json:
        _print_json({"stopped": stopped})
    else:
        for service, was_running in stopped.items():
            print(f"{service}: {'stopped' if was_running else 'was not running'}")
    return 0


def cmd_config_show(deps: Deps, args) -> int:
    shown = deps.settings.masked()
    if args.json:
        _print_json(shown)
    else:
        print_table(["SETTING", "VALUE"], [[f"TIERFLOW_{k.upper()}", v] for k, v in shown.items()])
    return 0


# ---------------------------------------------------------------------------------------------
# demo: the main job end to end on whatever stack is configured (embedded by default)


def cmd_demo(deps: Deps, args) -> int:
    from functions.cli_jobs import approval_settled, print_scene, run_until, upscale_target_of, wait_for_scene
    from shared import delivery, scenes, upscale

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
        _show_tiers(tiers.list_tiers(conn), aspect, as_json=False)

    started = time.monotonic()
    print(f"[5/8] generating a 2-segment {aspect} scene at the default tier with {scenes.default_model(settings)}")
    segments = [scenes.SegmentSpec(prompt="a red fox crossing a snowy field at dawn", seed=1234, frames=4, fps=8,
                                   steps=4),
                scenes.SegmentSpec(prompt="the fox leaps over a frozen stream", seed=5678, frames=4, fps=8, steps=4)]
    draft_id = scenes.submit_scene(deps, project="demo", name="fox-opening", aspect=str(aspect), segments=segments)
    draft = wait_for_scene(deps, draft_id)
    if draft["status"] != "generated":
        print_scene(draft)
        return 1
    print(f"      scene {draft_id} generated in {time.monotonic() - started:.1f} s")

    print("[6/8] approving it; project 'demo' upscales approved scenes to production automatically")
    upscale.set_auto_upscale(deps, "demo", "production")
    event_id = upscale.approve(deps, draft_id, approved_by="demo")
    run_until(deps, lambda conn: approval_settled(conn, draft_id, event_id), settle=False)
    with deps.connect() as conn:
        target_id = upscale_target_of(conn, draft_id)
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
        run_until(deps, lambda conn: conn.execute(
            "SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] != "requested",
            settle=False)
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


# ---------------------------------------------------------------------------------------------
# parser


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None


def _add_tier_fields(parser: argparse.ArgumentParser, creating: bool) -> None:
    parser.add_argument("--width", type=_whole_number, required=creating,
                        help="box width in pixels: a multiple of 8 from 64 to 8192")
    parser.add_argument("--height", type=_whole_number, required=creating,
                        help="box height in pixels: a multiple of 8 from 64 to 8192")
    parser.add_argument("--speed-factor", type=_number, default=1.0 if creating else None,
                        help="how many times faster than Production it renders (> 0)" + (", default 1" if creating else ""))
    parser.add_argument("--sort-order", type=_whole_number,
                        help="rank among tiers; upscales go to a higher rank" + (" (default: above all)" if creating else ""))
    parser.add_argument("--quality-settings", metavar="JSON",
                        help='output settings, e.g. \'{"codec": "h264", "crf": 18, "fps": 24}\''
                        + ("" if creating else "; 'null' clears them"))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tierflow",
        description="Tierflow: draft scenes cheaply, re-generate approved ones at Production, deliver Production only.",
        epilog="Every command takes --json (except demo). Exit status: 0 ok, 1 refused, 2 usage error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    add_command(commands, "demo", cmd_demo, "run the main job end to end on the configured (default: embedded) stack",
                 json_output=False)

    db_commands = add_group(commands, "db", "database schema migrations")
    add_command(db_commands, "migrate", cmd_db_migrate, "apply pending migrations, each in a transaction")
    add_command(db_commands, "status", cmd_db_status, "list applied and pending migrations")

    tier_commands = add_group(commands, "tiers", "resolution tiers: list and administer")
    listing = add_command(tier_commands, "list", cmd_tiers_list, "list the tiers, lowest rank first")
    listing.add_argument("--aspect", metavar="W:H", help="also show the size a scene of this aspect ratio gets")

    create = add_command(tier_commands, "create", cmd_tiers_create, "create a custom tier")
    create.add_argument("name", help="lowercase slug, e.g. ultra-hd")
    _add_tier_fields(create, creating=True)
    create.add_argument("--default", action="store_true", help="make it the default tier (unsets the old one)")
    create.add_argument("--deliverable", action="store_true", help="allow delivery of scenes at this tier")

    update = add_command(tier_commands, "update", cmd_tiers_update, "change fields of a tier")
    update.add_argument("name", help="the tier to change")
    update.add_argument("--name", dest="new_name", metavar="NEW_NAME", help="rename it (custom tiers only)")
    _add_tier_fields(update, creating=False)
    update.add_argument("--default", action=argparse.BooleanOptionalAction, default=None,
                        help="make it the default tier (unsets the old one); --no-default is refused for the default")
    update.add_argument("--deliverable", action=argparse.BooleanOptionalAction, default=None,
                        help="allow or forbid delivery of scenes at this tier")

    delete = add_command(tier_commands, "delete", cmd_tiers_delete, "delete a custom tier no scene uses")
    delete.add_argument("name", help="the tier to delete")

    stack_commands = add_group(commands, "stack", "the embedded PostgreSQL and S3 servers")
    add_command(stack_commands, "status", cmd_stack_status, "show the database and S3 servers in use")
    add_command(stack_commands, "stop", cmd_stack_stop, "stop the embedded servers (data is kept)")

    for module in (cli_events, cli_jobs, cli_delivery, cli_infra, cli_serve):
        module.register(commands)

    config_commands = add_group(commands, "config", "configuration")
    add_command(config_commands, "show", cmd_config_show, "print every setting, secrets masked")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        deps = Deps(load_settings())
        return args.run(deps, args)
    except (TierflowError, InvalidEvent) as exc:
        print(f"tierflow: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tierflow: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
