"""Does the Production re-generation keep the approved Draft's picture? Per noise scheme and aspect.

For each seed, renders one recipe at Draft's and Production's size (the built-in tiers' boxes at
each aspect) with each noise scheme, downscales the Production frames to the Draft size by area
averaging, and prints the mean SSIM and PSNR against the Draft's frames (what the upscale
comparison of a scene shows), beside the Pearson correlation of the two initial noises under
the same downscale (what the scheme promises before any model runs).

The tiny random-weight model (built offline, the default) has no learned notion of a picture: its
frames are a fixed random function of the noise, so its figures say only how much of the noise's
agreement survives such a function. The figure that matters comes from a real model on a GPU box:

    python bench/fidelity.py --model DIR_OR_HUB_ID [--seeds N] [--frames N] [--steps N]

Needs no database.
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

import numpy as np  # noqa: E402 - after the path fix

from shared.domain import similarity  # noqa: E402
from shared.domain.dimensions import generation_size, parse_aspect  # noqa: E402
from shared.media import noise, tiny  # noqa: E402
from shared.media import pipeline as media_pipeline  # noqa: E402

DRAFT_BOX, PRODUCTION_BOX = (512, 512), (1920, 1080)  # the built-in tiers' boxes
ASPECTS = ("16:9", "9:16", "1:1", "2.39:1")
PROMPT = "a lighthouse at dusk, waves breaking on the rocks"


def noise_pearson(scheme: str, seed: int, draft: tuple[int, int], production: tuple[int, int], scale: int) -> float:
    """Correlation of the Draft's initial noise with the Production's, area-downscaled to it (one slice)."""
    def grid(size):
        width, height = size
        return noise.initial_noise(seed, channels=1, frames=1, height=height // scale, width=width // scale,
                                   scheme=scheme).numpy()

    small, large = grid(draft), grid(production)
    return float(np.corrcoef(noise.downscale_noise(large, *small.shape[-2:]).ravel(), small.ravel())[0, 1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="diffusers pipeline directory or hub id (default: the tiny model)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per aspect and scheme (default 2)")
    parser.add_argument("--frames", type=int, default=2, help="frames per render (default 2)")
    parser.add_argument("--steps", type=int, default=4, help="denoising steps per render (default 4)")
    parser.add_argument("--aspects", default=",".join(ASPECTS), help=f"comma-separated (default {','.join(ASPECTS)})")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: what load_pipeline picks)")
    args = parser.parse_args(argv)
    if min(args.seeds, args.frames, args.steps) < 1:
        parser.error("--seeds, --frames and --steps must be at least 1")
    aspects = [a.strip() for a in args.aspects.split(",") if a.strip()]

    import torch

    with tempfile.TemporaryDirectory(prefix="tierflow-bench-") as scratch:
        model = args.model or str(tiny.build_tiny_model(Path(scratch) / "tiny"))
        device = media_pipeline.pick_device()
        pipeline = media_pipeline.load_pipeline(model, device, threads=args.threads)
        scale = media_pipeline.latent_scale(pipeline)
        print(f"model: {args.model or 'tiny (built offline, random weights: see above)'}")
        print(f"device: {device}   torch {torch.__version__}   threads: {torch.get_num_threads()}")
        print(f"recipe: {args.frames} frames, {args.steps} steps, guidance 7.5, seeds 1..{args.seeds}; "
              "Production downscaled to the Draft size by area; means over seeds (min in brackets)")
        print()
        print(f"{'aspect':<8}{'draft':>9}{'production':>12}{'scheme':>15}{'SSIM':>16}{'PSNR dB':>16}"
              f"{'noise r':>9}{'seconds':>9}")
        for aspect in aspects:
            draft = generation_size(parse_aspect(aspect), *DRAFT_BOX)
            production = generation_size(parse_aspect(aspect), *PRODUCTION_BOX)
            for scheme in noise.SCHEMES:
                started = time.perf_counter()
                ssims, psnrs, pearsons = [], [], []
                for seed in range(1, args.seeds + 1):
                    frames = {}
                    for name, (width, height) in (("draft", draft), ("production", production)):
                        frames[name] = media_pipeline.render(
                            pipeline, prompt=PROMPT, negative_prompt=None, seed=seed, frames=args.frames,
                            steps=args.steps, guidance=7.5, width=width, height=height, device=device, noise=scheme)
                    ssim, psnr = similarity.compare(frames["draft"], frames["production"])
                    ssims.append(ssim)
                    psnrs.append(psnr)
                    pearsons.append(noise_pearson(scheme, seed, draft, production, scale))
                print(f"{aspect:<8}{'x'.join(map(str, draft)):>9}{'x'.join(map(str, production)):>12}{scheme:>15}"
                      f"{statistics.mean(ssims):>9.3f} ({min(ssims):.3f}){statistics.mean(psnrs):>9.2f} "
                      f"({min(psnrs):.1f}){statistics.mean(pearsons):>9.3f}{time.perf_counter() - started:>9.1f}",
                      flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
