"""`tierflow jobs …`, `scenes …`, `usage`, `worker` and `workers`: generation from the command line."""

import argparse
import json
import sys
import time
from pathlib import Path

from functions import worker
from functions.cli.parsing import add_command, add_group, print_table
from functions.handlers.registry import FUNCTIONS
from shared.domain import estimate, fleet, projects, recipe, scenes, upscale, usage
from shared.errors import InvalidInput
from shared.runtime import drive

DEPLOYED = list(FUNCTIONS.values())  # what `--wait` runs on the embedded bus
# What a command applies itself when no runtime process serves (read your writes): all but the
# handler that starts workers, which would stop when the command exits. Generation runs where
# workers run: `serve`, or a command's --wait.
APPLIED_HERE = [f for f in DEPLOYED if f.name != "on_generation_requested"]


# ---------------------------------------------------------------------------------------------
# --prompt starts a segment; the per-segment options after it apply to that segment


class _StartSegment(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        namespace.segments = [*(namespace.segments or []), {"prompt": value}]


class _SegmentOption(argparse.Action):
    def __call__(self, parser, namespace, value, option_string=None):
        if not namespace.segments:
            parser.error(f"{option_string} applies to a segment: put it after that segment's --prompt")
        namespace.segments[-1][self.dest] = value


def _segment_specs(args) -> dict:
    if args.spec:
        try:
            document = json.loads(Path(args.spec).read_text())
        except OSError as exc:
            raise InvalidInput(f"cannot read the spec file: {exc}") from None
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"the spec file is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        spec = scenes.parse_spec(document)
        # Options on the command line override the file's.
        for key in ("project", "scene", "aspect", "tier", "model", "noise"):
            if getattr(args, key, None):
                spec[key] = getattr(args, key)
        return spec
    return {"project": args.project, "scene": args.scene, "aspect": args.aspect, "tier": args.tier,
            "model": args.model, "noise": args.noise, "segments": [recipe.SegmentSpec(**s) for s in args.segments or []]}


# ---------------------------------------------------------------------------------------------
# showing scenes


def _size(scene: dict) -> str:
    return f"{scene['width']}×{scene['height']}"


def print_scene(scene: dict) -> None:
    """The human form of `scenes show`."""
    print(f"scene {scene['scene_id']} '{scene['name']}' (project {scene['project']})")
    print(f"  tier {scene['tier']} at {_size(scene)} ({scene['aspect']}), {scene['status']}, {scene['progress']:g}%")
    print(f"  recipe hash {scene['recipe_hash']}")
    if len(scene.get("lineage", [])) > 1:
        chain = " → ".join(f"{v['scene_id']} {v['tier']} {v['width']}×{v['height']} {v['status']}"
                           for v in scene["lineage"])
        print(f"  lineage: {chain}")
    for segment in scene["segments"]:
        recipe, job = segment["recipe"], segment["job"] or {}
        print(f"  segment {segment['position']}: {segment['status']}, seed {recipe['seed']}, {recipe['frames']} frames "
              f"@ {recipe['fps']} fps, {recipe['steps']} steps, guidance {recipe['guidance']:g}: {recipe['prompt']!r}")
        if job:
            line = f"    job {job['job_id']} attempt {job['attempt']}: {job['status']} {job['progress']:g}%"
            if job["device_seconds"] is not None:
                line += f", {job['device_seconds']:.1f} s on {job['device']}"
            if job["held_seconds"] is not None:
                line += f" ({job['held_seconds']:.1f} s held by {job['worker_id']}, {job['load_seconds'] or 0:.1f} s loading)"
            print(line)
            if job["error"]:
                print(f"    error: {job['error']}")
        if segment["outputs"]:
            print(f"    video {segment['outputs']['video']} (sha256 {segment['outputs']['sha256'][:12]}…)")
        if segment["ssim"] is not None:
            flag = "  ⚠ below the similarity threshold: review before delivery" if segment["similarity_flagged"] else ""
            print(f"    vs source: SSIM {segment['ssim']:.3f}, PSNR {segment['psnr']:.1f} dB, "
                  f"side by side {segment['outputs']['comparison']}{flag}")


def _bar(scene: dict) -> str:
    filled = int(scene["progress"] / 5)
    return f"scene {scene['scene_id']} [{'#' * filled}{'.' * (20 - filled)}] {scene['progress']:5.1f}% {scene['status']}"


def wait_for_scene(deps, scene_id: int) -> dict:
    """Follow a scene until it is generated or failed, drawing a progress bar on stderr."""
    drawn = {"line": ""}

    def draw(scene: dict) -> None:
        line = _bar(scene)
        if line != drawn["line"]:
            print(line, end="\r" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)
            drawn["line"] = line

    scene = drive.follow_scene(deps, DEPLOYED, scene_id, draw)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return scene


def start_runtime_workers(deps) -> None:
    """On the embedded default, the warm local workers `serve` and `consume` run besides the
    handlers. Jobs whose workers were lost already are failed and retried first, and said so."""
    lost = drive.sweep_lost_jobs(deps)
    if lost:
        print(drive.lost_jobs_line(lost), flush=True)
    if deps.settings.dispatcher == "local":
        deps.dispatcher.ensure_workers()
        print(f"{deps.settings.local_workers} local worker(s) serving (logs in "
              f"{deps.settings.home.resolve() / 'logs'})", flush=True)


# ---------------------------------------------------------------------------------------------
# commands


def cmd_jobs_submit(deps, args) -> int:
    spec = _segment_specs(args)
    missing = [f"--{k}" for k in ("project", "scene", "aspect") if not spec.get(k)]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)} (on the command line or in the spec file)")
    scene_id = scenes.submit_scene(deps, project=spec["project"], name=spec["scene"], aspect=spec["aspect"],
                                   segments=spec["segments"], tier=spec["tier"], model=spec["model"],
                                   noise=spec.get("noise"))
    _applied(deps, args)
    return _show_result(deps, scene_id, args)


def cmd_scenes_show(deps, args) -> int:
    return _show_result(deps, args.scene_id, args)


def cmd_scenes_list(deps, args) -> int:
    with deps.connect() as conn:
        found = scenes.list_scenes(conn, args.project, args.limit)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print_table(["ID", "PROJECT", "NAME", "TIER", "SIZE", "STATUS", "PROGRESS", "SEGMENTS", "FROM"],
                 [[s["scene_id"], s["project"], s["name"], s["tier"], _size(s), s["status"], f"{s['progress']:g}%",
                   len(s["segments"]), s["upscaled_from_scene_id"] or "-"] for s in found])
    return 0


def _applied(deps, args) -> None:
    """Before a command that changed something returns: its events applied unless a runtime
    process serves (--wait runs everything, workers included, anyway)."""
    if not args.wait:
        drive.apply_unserved(deps, DEPLOYED, APPLIED_HERE)


def _show_result(deps, scene_id: int, args) -> int:
    scene = wait_for_scene(deps, scene_id) if args.wait else None
    if scene is None:
        with deps.connect() as conn:
            scene = scenes.get_scene(conn, scene_id)
    if args.json:
        print(json.dumps(scene, indent=2))
    else:
        print_scene(scene)
    return 1 if args.wait and scene["status"] == "failed" else 0


def cmd_scenes_upscale(deps, args) -> int:
    if args.estimate:  # what it would cost; queues nothing, so nothing is applied either
        if args.wait:
            raise InvalidInput("--estimate queues nothing, so there is nothing to --wait for")
        with deps.connect() as conn:
            found = estimate.upscale_estimate(conn, args.scene_id, args.to)
        if args.json:
            print(json.dumps(found, indent=2))
        else:
            print(found["summary"])
            if found["confidence"]:
                error = "" if found["median_error"] is None else f", median error {100 * found['median_error']:.0f}%"
                print(f"basis: {found['basis']['method']} on {found['basis']['jobs']} job(s); "
                      f"confidence {found['confidence']}{error}")
        return 0
    target_id = upscale.request_upscale(deps, args.scene_id, args.to, requested_by="cli")
    _applied(deps, args)
    if args.json and not args.wait:
        with deps.connect() as conn:
            print(json.dumps({"target_scene_id": target_id, **scenes.get_scene(conn, target_id)}, indent=2))
        return 0
    return _show_result(deps, target_id, args)


def cmd_scenes_approve(deps, args) -> int:
    event_id = scenes.approve(deps, args.scene_id, approved_by="cli")
    _applied(deps, args)
    if not args.wait:
        with deps.connect() as conn:
            applied = drive.approval_settled(conn, args.scene_id, event_id)
            target = drive.upscale_target_of(conn, args.scene_id) if applied else None
        if args.json:
            print(json.dumps({"event_id": event_id, "scene_id": args.scene_id, "applied": applied,
                              "upscale_target_scene_id": target}))
        elif applied:
            print(f"scene {args.scene_id} approved (event {event_id})"
                  + (f"; upscaling automatically as scene {target}" if target else ""))
        else:
            print(f"published scene.approved for scene {args.scene_id} (event {event_id}); the running runtime applies it")
        return 0
    # Until the approval is applied, then through the automatic upscale if there is one.
    drive.run_until(deps, DEPLOYED, lambda conn: drive.approval_settled(conn, args.scene_id, event_id),
                    settle=False)
    with deps.connect() as conn:
        target = drive.upscale_target_of(conn, args.scene_id)
    return _show_result(deps, target or args.scene_id, args)


def cmd_scenes_retry(deps, args) -> int:
    jobs = scenes.retry_failed_segments(deps, args.scene_id)
    _applied(deps, args)
    if not args.json and not args.wait:
        print(f"retrying {len(jobs)} failed segment(s) of scene {args.scene_id}: job(s) {', '.join(map(str, jobs))}")
        return 0
    return _show_result(deps, args.scene_id, args)


def _none_or(kind):
    """An argparse type: `none` (clear it) or a value of `kind`."""
    def parse(text: str):
        if text.lower() == "none":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is neither none nor a {kind.__name__}") from None

    parse.__name__ = kind.__name__
    return parse


def cmd_projects_set(deps, args) -> int:
    changes = {k: getattr(args, k) for k in projects.FIELDS if getattr(args, k) is not _KEEP}
    if not changes:
        raise InvalidInput("give at least one of --auto-upscale-to, --max-segments, --max-frame-steps, "
                           "--max-artist-tier")
    result = projects.change(deps, args.name, changes)  # all of them or, refused, none
    if args.json:
        print(json.dumps(result))
    else:
        auto = result["auto_upscale_to"]
        print(f"project {args.name}: " + (f"approved scenes are upscaled to {auto}" if auto else "no automatic upscale")
              + "; " + ", ".join(f"{k.replace('_', ' ')} {result[k] if result[k] is not None else 'unbounded'}"
                                 for k in ("max_segments", "max_frame_steps", "max_artist_tier")))
    return 0


_KEEP = object()  # an option not given: that setting stays as it is


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def cmd_usage(deps, args) -> int:
    with deps.connect() as conn:
        report = usage.device_seconds(conn)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_table(["PROJECT", "TIER", "JOBS", "RENDER-SECONDS", "HELD-SECONDS"],
                 [[r["project"], r["tier"], r["jobs"], f"{r['render_seconds']:.1f}", f"{r['held_seconds']:.1f}"]
                  for r in report["rows"]])
    print(f"total: {report['total_device_seconds']:.1f} device-seconds rendering, "
          f"{report['total_held_seconds']:.1f} held by workers (loading, encoding, uploading, failed attempts included)")
    for name, project in report["projects"].items():
        if project["saving"] is not None:
            print(f"project {name}: {project['held_seconds']:.1f} held device-seconds where rendering every scene at "
                  f"{project['final_tier']} would have held {project['at_final_tier_seconds']:.1f}: "
                  f"saved {_percent(project['saving'])}")
    fleet_use = report["fleet"]
    print(f"fleet: {fleet_use['workers']} worker(s), busy {fleet_use['busy_seconds']:.1f} of "
          f"{fleet_use['alive_seconds']:.1f} slot-seconds alive ({_percent(fleet_use['utilisation'])} utilisation)")
    return 0


def cmd_jobs_follow(deps, args) -> int:
    while True:
        lost = drive.sweep_lost_jobs(deps)
        if lost:
            print(drive.lost_jobs_line(lost), flush=True)
        if deps.settings.dispatcher == "batch":
            with deps.uow() as uow:
                submitted = deps.dispatcher.ensure_workers(uow.conn)
            if submitted:
                print(f"submitted {submitted} AWS Batch worker job(s) for the queue", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)


def cmd_workers_list(deps, args) -> int:
    with deps.connect() as conn:
        workers = fleet.list_workers(conn, silent_after_seconds=deps.settings.job_lease_seconds, everyone=args.all)
    if args.json:
        print(json.dumps(workers, indent=2))
        return 0
    print_table(["WORKER", "STATE", "DEVICE", "JOB", "JOBS-DONE", "BUSY-S", "ALIVE-S", "CACHED"],
                 [[w["worker_id"], w["state"], w["device"], ",".join(map(str, w["job_ids"])) or "-", w["jobs_done"],
                   f"{w['busy_seconds']:.1f}", f"{w['alive_seconds']:.1f}", ", ".join(w["cached_models"]) or "-"]
                  for w in workers])
    return 0


def cmd_worker(deps, args) -> int:
    return worker.run(args)


def register(commands) -> None:
    """Add these commands to the `tierflow` parser."""
    job_commands = add_group(commands, "jobs", "submit generation jobs")
    submit = add_command(job_commands, "submit", cmd_jobs_submit,
                         "submit a scene: one segment per --prompt, generated at a tier")
    submit.set_defaults(segments=None)
    submit.add_argument("--project", help="project name (created on first use)")
    submit.add_argument("--scene", help="scene name")
    submit.add_argument("--aspect", metavar="W:H", help="aspect ratio, e.g. 16:9, 9:16, 2.39:1")
    submit.add_argument("--tier", help="resolution tier (default: the default tier)")
    submit.add_argument("--model", help="a model catalogue name (`tierflow models list`; default: TIERFLOW_MODEL)")
    submit.add_argument("--noise", choices=recipe.NOISE_SCHEMES, help=f"initial noise scheme (default {recipe.DEFAULT_NOISE}: "
                        "keeps the composition across tiers; native: the pipeline's own, as outside Tierflow)")
    submit.add_argument("--spec", metavar="FILE.json", help="the whole job as JSON: project, scene, aspect, tier, "
                        "model, segments [{prompt, negative_prompt, seed, frames, fps, steps, guidance, scheduler}]")
    submit.add_argument("--prompt", action=_StartSegment, help="starts a new segment with this prompt")
    submit.add_argument("--negative-prompt", dest="negative_prompt", action=_SegmentOption, help="per segment")
    submit.add_argument("--seed", type=int, action=_SegmentOption, help="per segment (default: random, stored)")
    submit.add_argument("--frames", type=int, action=_SegmentOption, help=f"per segment (default {recipe.SEGMENT_DEFAULTS['frames']})")
    submit.add_argument("--fps", type=int, action=_SegmentOption, help=f"per segment (default {recipe.SEGMENT_DEFAULTS['fps']})")
    submit.add_argument("--steps", type=int, action=_SegmentOption, help=f"per segment (default {recipe.SEGMENT_DEFAULTS['steps']})")
    submit.add_argument("--guidance", type=float, action=_SegmentOption, help=f"per segment (default {recipe.SEGMENT_DEFAULTS['guidance']})")
    submit.add_argument("--scheduler", action=_SegmentOption, help="per segment (default: the model's)")
    submit.add_argument("--wait", action="store_true", help="follow the scene to the end with a progress bar")

    follow = add_command(job_commands, "follow", cmd_jobs_follow,
                         "retry jobs whose worker was lost (expired leases) and, on AWS Batch, submit workers for "
                         "the queue", json_output=False)
    follow.add_argument("--once", action="store_true", help="check once and exit")
    follow.add_argument("--interval", type=float, default=30.0, help="seconds between checks (default 30)")

    scene_commands = add_group(commands, "scenes", "scenes: show, list")
    show = add_command(scene_commands, "show", cmd_scenes_show, "show a scene: tier, size, status, progress, segments")
    show.add_argument("scene_id", type=int, metavar="ID")
    show.add_argument("--wait", action="store_true", help="follow it to the end first")
    up = add_command(scene_commands, "upscale", cmd_scenes_upscale,
                     "re-generate a scene at a higher tier with the identical recipe (a new, linked scene)")
    up.add_argument("scene_id", type=int, metavar="ID")
    up.add_argument("--to", required=True, metavar="TIER", help="target tier, higher than the scene's")
    up.add_argument("--wait", action="store_true", help="follow the target scene to the end")
    up.add_argument("--estimate", action="store_true", help="only print what it would cost (device seconds held "
                    "and rendering, fitted to the jobs measured here); queues nothing")
    approve = add_command(scene_commands, "approve", cmd_scenes_approve,
                          "approve a generated scene (publishes scene.approved; may start the auto-upscale)")
    approve.add_argument("scene_id", type=int, metavar="ID")
    approve.add_argument("--wait", action="store_true", help="follow the approval and any automatic upscale")
    retry = add_command(scene_commands, "retry", cmd_scenes_retry, "re-run only the failed segments of a scene")
    retry.add_argument("scene_id", type=int, metavar="ID")
    retry.add_argument("--wait", action="store_true", help="follow the scene to the end")
    listing = add_command(scene_commands, "list", cmd_scenes_list, "list scenes, newest first")
    listing.add_argument("--project", help="only this project's scenes")
    listing.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")

    add_command(commands, "usage", cmd_usage, "GPU time (device-seconds rendering and held) per project and tier")

    project_commands = add_group(commands, "projects", "project settings")
    project_set = add_command(project_commands, "set", cmd_projects_set,
                              "set a project's auto-upscale policy and cost bounds (what is not given stays)")
    project_set.add_argument("name", metavar="NAME")
    project_set.add_argument("--auto-upscale-to", type=_none_or(str), default=_KEEP, metavar="TIER|none",
                             help="upscale approved scenes to this tier automatically (none: off)")
    project_set.add_argument("--max-segments", type=_none_or(int), default=_KEEP, metavar="N|none",
                             help="at most N segments per scene (none: unbounded)")
    project_set.add_argument("--max-frame-steps", type=_none_or(int), default=_KEEP, metavar="N|none",
                             help="at most N frames × steps per segment (none: unbounded)")
    project_set.add_argument("--max-artist-tier", type=_none_or(str), default=_KEEP, metavar="TIER|none",
                             help="artists (API keys of role artist) submit and upscale up to this tier (none: any)")

    worker_command = add_command(commands, "worker", cmd_worker,
                                 "run a GPU worker: `worker serve` claims queued jobs until stopped, "
                                 "`worker --job FILE` runs one", json_output=False)
    worker.add_arguments(worker_command)

    worker_commands = add_group(commands, "workers", "the worker fleet")
    listing = add_command(worker_commands, "list", cmd_workers_list,
                          "workers: state, job in hand, cached models, jobs done, busy and alive seconds")
    listing.add_argument("--all", action="store_true", help="include stopped and lost workers")
