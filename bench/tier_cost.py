"""What drafting saves: render one recipe at every built-in tier size and compare the cost.

Renders the same recipe (16:9, 4 frames, 4 steps, fixed seed) with the real diffusers pipeline
at each built-in tier's generation size, takes the median of `--repeats` runs, and prints the
measured Production/Draft cost ratio r and the saving of drafting k times before one Production
render instead of rendering all k attempts at Production:

    saving(k) = 1 - (k * draft + production) / (k * production)

next to the same saving implied by the tiers' configured speed factors. The tiny random-weight
model (built into a temporary directory) is the default; `--model` takes any diffusers pipeline
directory or hub id, e.g. on a GPU box. Needs no database.

    python bench/tier_cost.py [--model PATH_OR_HUB_ID] [--repeats N] [--threads N]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where bench/events.py would shadow the
# `events` package the media code imports. Put the repository root there instead.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH_DIR.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

from shared.domain.dimensions import generation_size, parse_aspect  # noqa: E402 - after the path fix
from shared.media import pipeline as media_pipeline  # noqa: E402
from shared.media import tiny  # noqa: E402

# The built-in tiers as seeded by the migrations: name, bounding box, configured speed factor.
BUILTIN_TIERS = [
    ("draft", 512, 512, 5.0),
    ("preview", 768, 768, 2.5),
    ("production", 1920, 1080, 1.0),
]
ASPECT = parse_aspect("16:9")
RECIPE = {"prompt": "a lighthouse at dusk, waves breaking on the rocks", "negative_prompt": None,
          "seed": 20261124, "frames": 4, "steps": 4, "guidance": 7.5}
DRAFTS_PER_APPROVED_SCENE = range(1, 7)


def saving(k: int, draft: float, production: float) -> float:
    """Fraction of Production-only cost saved by k drafts plus one Production render."""
    return 1 - (k * draft + production) / (k * production)


def time_render(pipeline, device: str, width: int, height: int) -> float:
    started = time.perf_counter()
    media_pipeline.render(pipeline, **RECIPE, width=width, height=height, device=device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="diffusers pipeline directory or hub id (default: the tiny model)")
    parser.add_argument("--repeats", type=int, default=2, help="renders per tier; the median is reported")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: what load_pipeline picks)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    import torch

    with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as scratch:
        # 1. the model
        model = args.model or str(tiny.build_tiny_model(Path(scratch) / "tiny"))
        device = media_pipeline.pick_device()
        pipeline = media_pipeline.load_pipeline(model, device, threads=args.threads)
        print(f"model: {args.model or 'tiny (built offline)'}")
        print(f"device: {device}   torch {torch.__version__}   threads: {torch.get_num_threads()}   "
              f"load average: {os.getloadavg()[0]:.2f} (other processes make CPU timings noisy)")
        print(f"recipe: {ASPECT}, {RECIPE['frames']} frames, {RECIPE['steps']} steps, guidance {RECIPE['guidance']}, "
              f"seed {RECIPE['seed']}; median of {args.repeats}")

        # 2. one untimed render pays the one-off costs (allocator, kernel selection, CUDA init)
        time_render(pipeline, device, *generation_size(ASPECT, *BUILTIN_TIERS[0][1:3]))

        # 3. every tier
        print()
        print(f"{'tier':<12}{'size':>11}{'speed factor':>14}{'seconds/segment':>17}{'runs':>20}")
        seconds = {}
        for name, box_width, box_height, speed_factor in BUILTIN_TIERS:
            width, height = generation_size(ASPECT, box_width, box_height)
            runs = [time_render(pipeline, device, width, height) for _ in range(args.repeats)]
            seconds[name] = statistics.median(runs)
            print(f"{name:<12}{f'{width}x{height}':>11}{speed_factor:>14.1f}{seconds[name]:>17.2f}"
                  f"{' '.join(f'{run:.2f}' for run in runs):>20}")

    print(f"load average after: {os.getloadavg()[0]:.2f}")

    # 4. what drafting saves, measured and as configured
    factors = {name: factor for name, _, _, factor in BUILTIN_TIERS}
    draft, production = seconds["draft"], seconds["production"]
    configured_draft, configured_production = 1 / factors["draft"], 1 / factors["production"]
    print()
    print(f"measured Production/Draft cost ratio r = {production / draft:.1f} "
          f"(configured speed factors imply {factors['draft'] / factors['production']:.1f}); "
          f"Production/Preview = {production / seconds['preview']:.1f} "
          f"(configured {factors['preview'] / factors['production']:.1f})")
    print()
    print("saving = 1 - (k*draft + production) / (k*production)")
    print(f"{'k drafts':>9}{'measured':>11}{'configured':>12}")
    for k in DRAFTS_PER_APPROVED_SCENE:
        print(f"{k:>9}{saving(k, draft, production):>11.1%}"
              f"{saving(k, configured_draft, configured_production):>12.1%}")


if __name__ == "__main__":
    main()
