"""How good the upscale estimates are: fit the cost model on measured jobs, test it on others.

Renders `--jobs` segments (default 30) with the real diffusers pipeline, warm (loaded once, one
untimed render first, as a warm worker is): recipes of several aspects (16:9, 1:1, 9:16, 4:3,
2.39:1), frames and steps 2 to 4, each at every built-in tier's generation size. For each job it
times the render (the pipeline call: a job's `render_seconds`) and what a warm worker holds its
device for without a database or S3 (render + H.264 encode + poster PNG: a job's held seconds
less the uploads and reports). Then, in a seeded random order, it fits the cost model of
shared/domain/estimate.py on `--train` jobs (default 20) and prints the median absolute
percentage error on the rest, against the fit's own cross-validated error (the `median_error` an
estimate reports); and the error of the fallback, a held-out job's Draft sibling (same recipe)
scaled by the tiers' configured speed factors. The tiny random-weight model (built into a
temporary directory) is the default; `--model` takes any diffusers pipeline directory or hub id,
e.g. on a GPU box. Needs no database.

    python bench/estimate.py [--model PATH_OR_HUB_ID] [--jobs N] [--train N] [--threads N] [--seed N] [--save FILE]
"""

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where bench/events.py would shadow the
# `events` package the media code imports. Put the repository root there instead.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH_DIR.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

from shared.domain import estimate  # noqa: E402 - after the path fix
from shared.domain.dimensions import generation_size, parse_aspect  # noqa: E402
from shared.media import pipeline as media_pipeline  # noqa: E402
from shared.media import tiny  # noqa: E402
from shared.media.video import encode_video, poster_png  # noqa: E402

# The built-in tiers as seeded by the migrations: name, bounding box, configured speed factor.
BUILTIN_TIERS = [("draft", 512, 512, 5.0), ("preview", 768, 768, 2.5), ("production", 1920, 1080, 1.0)]
ASPECTS = ["16:9", "1:1", "9:16", "4:3", "2.39:1"]
FRAMES = STEPS = (2, 3, 4)  # small: a 1920x1080 job of 4 frames and 4 steps takes ~7 s on 2 cores
TARGET = 0.20  # median absolute percentage error the estimates should stay within


def recipes(jobs: int, rng: random.Random) -> list[dict]:
    """`jobs` jobs: recipes (aspect, frames, steps), each at every built-in tier in turn."""
    planned = []
    while len(planned) < jobs:
        aspect, frames, steps = rng.choice(ASPECTS), rng.choice(FRAMES), rng.choice(STEPS)
        for name, box_width, box_height, speed_factor in BUILTIN_TIERS:
            width, height = generation_size(parse_aspect(aspect), box_width, box_height)
            planned.append({"recipe": len(planned) // len(BUILTIN_TIERS), "tier": name, "speed_factor": speed_factor,
                            "aspect": aspect, "width": width, "height": height, "frames": frames, "steps": steps})
    return planned[:jobs]


def run(pipeline, device: str, job: dict) -> dict:
    started = time.perf_counter()
    frames = media_pipeline.render(pipeline, prompt="a lighthouse at dusk, waves breaking on the rocks",
                                   negative_prompt=None, seed=20261124, frames=job["frames"], steps=job["steps"],
                                   guidance=7.5, width=job["width"], height=job["height"], device=device)
    rendered = time.perf_counter()
    encode_video(frames, 8)
    poster_png(frames)
    return {**job, "render": rendered - started, "held": time.perf_counter() - started}


def median_error(pairs) -> float | None:
    errors = [abs(predicted - actual) / actual for predicted, actual in pairs]
    return statistics.median(errors) if errors else None


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="diffusers pipeline directory or hub id (default: the tiny model)")
    parser.add_argument("--jobs", type=int, default=30, help="jobs to render (default 30)")
    parser.add_argument("--train", type=int, default=20, help="of them, the jobs to fit on (default 20); the rest test")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: what load_pipeline picks; 1 is "
                        "steadier next to other busy processes)")
    parser.add_argument("--seed", type=int, default=19, help="for the recipes and the split (default 19)")
    parser.add_argument("--save", metavar="FILE.json", help="also write every measured job there")
    args = parser.parse_args(argv)
    if not estimate.MIN_JOBS <= args.train < args.jobs:
        parser.error(f"--train must be at least {estimate.MIN_JOBS} and below --jobs")
    rng = random.Random(args.seed)

    import torch

    with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as scratch:
        # 1. the model, loaded once (timed: what a cold worker adds once)
        model = args.model or str(tiny.build_tiny_model(Path(scratch) / "tiny"))
        device = media_pipeline.pick_device()
        started = time.perf_counter()
        pipeline = media_pipeline.load_pipeline(model, device, threads=args.threads)
        load = time.perf_counter() - started
        print(f"model: {args.model or 'tiny (built offline)'}, loaded in {load:.2f} s (a cold worker's cold start)")
        print(f"device: {device}   torch {torch.__version__}   threads: {torch.get_num_threads()}   "
              f"load average: {os.getloadavg()[0]:.2f} (other processes make CPU timings noisy)")
        print("held here = render + H.264 encode + poster PNG (a warm worker's job without S3 uploads and reports)")

        # 2. one untimed render pays the one-off costs, then every job, in a shuffled order so that a
        # slow spell of the machine does not fall on one tier
        run(pipeline, device, {"width": 512, "height": 288, "frames": 2, "steps": 2})
        planned = recipes(args.jobs, rng)
        order = list(range(len(planned)))
        rng.shuffle(order)
        measured = [None] * len(planned)
        started = time.perf_counter()
        for n, index in enumerate(order, 1):
            measured[index] = run(pipeline, device, planned[index])
            if sys.stderr.isatty():
                print(f"\rrendered {n}/{len(planned)}", end="", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        print(f"{len(planned)} jobs in {time.perf_counter() - started:.0f} s; load average after: "
              f"{os.getloadavg()[0]:.2f}")
    if args.save:
        Path(args.save).write_text(json.dumps({"device": device, "load_seconds": load, "jobs": measured}, indent=2))

    # 3. fit on some, test on the rest
    train, test = [measured[i] for i in order[:args.train]], [measured[i] for i in order[args.train:]]
    print()
    print(f"{'':<8}{'fit on':>8}{'own error (cv)':>16}{'held-out error':>16}{'max':>9}   coefficients (a, b, d, c)")
    fits = {}
    for key in ("render", "held"):
        fit = fits[key] = estimate.fit_costs([(j["width"] * j["height"], j["frames"], j["steps"], j[key])
                                              for j in train])
        pairs = [(fit.seconds(j["width"] * j["height"], j["frames"], j["steps"]), j[key]) for j in test]
        worst = max(abs(p - a) / a for p, a in pairs)
        print(f"{key:<8}{fit.jobs:>8}{_percent(fit.median_error):>16}{_percent(median_error(pairs)):>16}"
              f"{_percent(worst):>9}   {', '.join(f'{c:.3g}' for c in fit.coefficients)}")

    # 4. the fallback on the held-out jobs above Draft: the Draft job of the same recipe, scaled
    drafts = {j["recipe"]: j for j in measured if j["tier"] == "draft"}
    upscaled = [j for j in test if j["tier"] != "draft" and j["recipe"] in drafts]
    print()
    print(f"held seconds of the {len(upscaled)} held-out jobs above Draft (what an upscale estimate is for):")
    for name, predict in [
        ("fitted", lambda j: fits["held"].seconds(j["width"] * j["height"], j["frames"], j["steps"])),
        ("speed factors", lambda j: drafts[j["recipe"]]["held"] * BUILTIN_TIERS[0][3] / j["speed_factor"]),
    ]:
        print(f"  {name:<14} median error {_percent(median_error([(predict(j), j['held']) for j in upscaled]))}")
    measured_ratio = statistics.median(j["held"] / drafts[j["recipe"]]["held"] for j in measured
                                       if j["tier"] == "production" and j["recipe"] in drafts)
    print(f"  measured Production/Draft held ratio (median over recipes): {measured_ratio:.1f}; "
          f"the configured speed factors say {BUILTIN_TIERS[0][3] / BUILTIN_TIERS[2][3]:.1f}")
    error = median_error([(fits["held"].seconds(j["width"] * j["height"], j["frames"], j["steps"]), j["held"])
                          for j in test])
    print()
    print(f"target: median error of held seconds on held-out jobs <= {TARGET:.0%}: "
          f"{'met' if error <= TARGET else 'NOT met'} ({_percent(error)})")


if __name__ == "__main__":
    main()
