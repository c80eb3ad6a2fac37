"""What a job really costs on a cold worker (a process per job) and on a warm one (`worker serve`).

One workload, 12 Draft segments and 2 Production segments at 16:9, run with the default recipe
(16 frames, 25 steps) and with a short one (4 frames, 4 steps), each in cold mode (`tierflow
worker --job FILE`, one process per job, one after the other, as every job ran before warm
workers) and in warm mode (one `tierflow worker serve` claiming them all), in one run on one
embedded stack (PostgreSQL and the S3 server under a temporary directory). Prints, from what the
workers reported:

- per job: load, render and held seconds (held: from the claim, or for a process per job from
  the process's start, to the result written: imports, loading, encoding and uploading included);
- the Draft overhead (held - render) / held, over all Draft jobs and over those with no load;
- segments per minute (wall time from the first process start to the last result);
- the saving of drafting k = 1..6 times per approved scene, on held seconds, next to its
  render-only limit 1 - (k*draft + production) / (k*production) (medians per job).

    python bench/worker_fleet.py [--model PATH_OR_HUB_ID] [--recipes default,short] [--modes cold,warm]
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where bench/events.py would shadow the
# `events` package. Put the repository root there instead.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH_DIR.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

from infra import embedded  # noqa: E402 - after the path fix
from shared.adapters.dispatch import worker_environment  # noqa: E402
from shared.bootstrap import Deps  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.domain import scenes  # noqa: E402
from shared.domain.recipe import SEGMENT_DEFAULTS, SegmentSpec  # noqa: E402

RECIPES = {"default": {"frames": SEGMENT_DEFAULTS["frames"], "steps": SEGMENT_DEFAULTS["steps"]},
           "short": {"frames": 4, "steps": 4}}
WORKLOAD = (("draft", 12), ("production", 2))
WARM_UP = (("draft", 1),)
DRAFTS_PER_APPROVED_SCENE = range(1, 7)


def saving(k: int, draft: float, production: float) -> float:
    return 1 - (k * draft + production) / (k * production)


def _submit(deps, recipe: str, mode: str, workload=WORKLOAD) -> list[int]:
    """Queue the workload; returns the job ids, Drafts first."""
    job_ids = []
    with deps.connect() as conn:
        for tier, count in workload:
            specs = [SegmentSpec(prompt=f"a lighthouse at dusk, shot {i}", seed=1000 + i, **RECIPES[recipe])
                     for i in range(count)]
            scene_id = scenes.submit_scene(deps, project=f"{recipe}-{mode}", name=tier, aspect="16:9", tier=tier,
                                           segments=specs)
            job_ids += [r["id"] for r in conn.execute(
                "SELECT j.id FROM generation_jobs j JOIN segments g ON g.id = j.segment_id WHERE g.scene_id = %s "
                "ORDER BY g.position", [scene_id])]
    return job_ids


def _results(deps, job_ids: list[int]) -> dict[int, dict]:
    """What the workers reported for these jobs (generation.completed), by job id."""
    with deps.connect() as conn:
        rows = conn.execute(
            "SELECT payload -> 'data' AS data FROM outbox WHERE topic = 'generation.completed' "
            "AND (payload -> 'data' ->> 'job_id')::bigint = ANY(%s)", [job_ids]).fetchall()
    return {r["data"]["job_id"]: r["data"] for r in rows}


def _env(deps) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}, **worker_environment(deps)}


def run_cold(deps, job_ids: list[int], scratch: Path) -> float:
    """A process per job, one after the other; returns the wall seconds."""
    started = time.monotonic()
    with deps.connect() as conn:
        for job_id in job_ids:
            path = scratch / f"job-{job_id}.json"
            path.write_text(json.dumps(scenes.job_document(conn, job_id)))
            done = subprocess.run([sys.executable, "-m", "functions.worker", "--job", str(path)], env=_env(deps),
                                  capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"job {job_id} failed: {done.stderr.strip()[-500:]}")
    return time.monotonic() - started


def run_warm(deps, job_ids: list[int], scratch: Path) -> float:
    """One `worker serve` takes every job; returns the wall seconds from its start to the last result."""
    started = time.monotonic()
    log = (scratch / "warm.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "functions.worker", "serve", "--id", "bench-warm"],
                              env=_env(deps), stdout=log, stderr=log)
    try:
        while len(_results(deps, job_ids)) < len(job_ids):
            if worker.poll() is not None:
                raise SystemExit(f"the warm worker exited with {worker.returncode}: see {scratch / 'warm.log'}")
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(120)


def report(mode: str, recipe: str, results: list[tuple[str, dict]], wall: float) -> dict:
    print(f"\n== {recipe} recipe ({RECIPES[recipe]['frames']} frames, {RECIPES[recipe]['steps']} steps), {mode} mode")
    print(f"{'job':>4} {'tier':<11}{'load s':>8}{'render s':>10}{'held s':>9}{'overhead':>10}")
    for i, (tier, r) in enumerate(results, 1):
        print(f"{i:>4} {tier:<11}{r['load_seconds']:>8.2f}{r['device_seconds']:>10.2f}{r['held_seconds']:>9.2f}"
              f"{(r['held_seconds'] - r['device_seconds']) / r['held_seconds']:>10.1%}")
    drafts = [r for tier, r in results if tier == "draft"]
    productions = [r for tier, r in results if tier == "production"]
    warm_drafts = [r for r in drafts if r["load_seconds"] == 0]

    def overhead(jobs):
        if not jobs:
            return None
        return sum(r["held_seconds"] - r["device_seconds"] for r in jobs) / sum(r["held_seconds"] for r in jobs)

    def percent(value):
        return "n/a" if value is None else f"{value:.1%}"

    figures = {
        "draft_overhead": overhead(drafts), "draft_overhead_no_load": overhead(warm_drafts),
        "segments_per_minute": 60 * len(results) / wall,
        "draft_held": statistics.median(r["held_seconds"] for r in drafts),
        "draft_render": statistics.median(r["device_seconds"] for r in drafts),
        "production_held": statistics.median(r["held_seconds"] for r in productions),
        "production_render": statistics.median(r["device_seconds"] for r in productions),
    }
    print(f"Draft overhead (held - render) / held: {percent(figures['draft_overhead'])} over all {len(drafts)} Draft "
          f"jobs, {percent(figures['draft_overhead_no_load'])} over the {len(warm_drafts)} that loaded nothing")
    print(f"{len(results)} segments in {wall:.1f} s wall: {figures['segments_per_minute']:.1f} segments per minute")
    print(f"median per job: Draft {figures['draft_render']:.2f} s render / {figures['draft_held']:.2f} s held, "
          f"Production {figures['production_render']:.2f} s render / {figures['production_held']:.2f} s held")
    print(f"{'k drafts':>9}{'saving (held)':>15}{'render-only limit':>19}{'ratio':>8}")
    for k in DRAFTS_PER_APPROVED_SCENE:
        held = saving(k, figures["draft_held"], figures["production_held"])
        limit = saving(k, figures["draft_render"], figures["production_render"])
        print(f"{k:>9}{held:>15.1%}{limit:>19.1%}{held / limit:>8.2f}")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="diffusers pipeline directory or hub id (default: the tiny model)")
    parser.add_argument("--recipes", default="default,short", help="which recipes (default: default,short)")
    parser.add_argument("--modes", default="cold,warm", help="which modes (default: cold,warm)")
    args = parser.parse_args(argv)
    recipes, modes = args.recipes.split(","), args.modes.split(",")
    if not set(recipes) <= set(RECIPES) or not set(modes) <= {"cold", "warm"} or not recipes or not modes:
        parser.error(f"--recipes takes {', '.join(RECIPES)}; --modes takes cold, warm")

    with tempfile.TemporaryDirectory(prefix="tierflow-fleet-bench-") as scratch:
        home = Path(scratch) / "home"
        from shared.media.tiny import build_tiny_model

        model = args.model or str(build_tiny_model(Path(scratch) / "tiny"))
        deps = Deps(Settings(home=home, model=model))
        try:
            deps.connect().close()  # the embedded database, migrated
            deps.s3  # noqa: B018 - the embedded S3 server, started once for every worker
            print(f"model: {args.model or 'tiny (built offline)'}; load average {os.getloadavg()[0]:.2f} "
                  "(other processes make CPU timings noisy)")
            # Untimed: one job that warms the OS file cache (Python, torch, the model files).
            run_cold(deps, _submit(deps, "short", "warm-up", WARM_UP), Path(scratch))
            summary = {}
            for recipe in recipes:
                for mode in modes:
                    job_ids = _submit(deps, recipe, mode)
                    wall = (run_cold if mode == "cold" else run_warm)(deps, job_ids, Path(scratch))
                    results = _results(deps, job_ids)
                    tiers = ["draft"] * WORKLOAD[0][1] + ["production"] * WORKLOAD[1][1]
                    summary[(recipe, mode)] = report(mode, recipe, [(t, results[j]) for t, j in zip(tiers, job_ids)],
                                                     wall)
        finally:
            embedded.stop(home)

    print("\n== summary")
    print(f"{'recipe':<9}{'mode':<6}{'Draft overhead':>16}{'(no load)':>11}{'segments/min':>14}{'k=3 held':>10}"
          f"{'k=3 limit':>11}{'ratio':>7}")
    for (recipe, mode), f in summary.items():
        held = saving(3, f["draft_held"], f["production_held"])
        limit = saving(3, f["draft_render"], f["production_render"])
        no_load = "n/a" if f["draft_overhead_no_load"] is None else f"{f['draft_overhead_no_load']:.1%}"
        print(f"{recipe:<9}{mode:<6}{f['draft_overhead']:>16.1%}{no_load:>11}"
              f"{f['segments_per_minute']:>14.1f}{held:>10.1%}{limit:>11.1%}{held / limit:>7.2f}")


if __name__ == "__main__":
    main()
