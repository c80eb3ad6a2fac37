"""What an upscale will cost, before it is queued: a cost model fitted to the jobs measured here.

Per (model, device kind) ("cuda:0" counts as "cuda"), the render seconds and the held seconds
of the succeeded jobs are fitted, each on its own, as

    seconds = a + b·(pixels·frames·steps) + d·(pixels·frames) + c·(pixels·frames)²·steps

pixels being the scene's width × height: a fixed cost per job (text encoding, reports), the
denoising work, the work done once per frame and not per step (VAE decoding, H.264 encoding,
the poster), and a term for what grows faster than the tensor (attention, caches). The d term is
one more than the issue asked for: on three runs of bench/estimate.py it took the median error
of held seconds on held-out jobs from 9-14% to 5-8% (steps vary, and decoding does not). The fit is least
squares with non-negative coefficients on rows divided by the observed seconds, so that relative
error is what is minimised (costs span orders of magnitude). Held seconds are fitted without the
pipeline load (`held_seconds - load_seconds`): warm workers are the design, and a cold worker's
load is reported apart (`cold_start_seconds`).

The rules, in order (the README's Upscaling section says the same):

- the device: cuda when the model has measured cuda jobs (GPUs are what costs), else the device
  kind of the source scene's latest measured job, else the model's most measured device kind;
- fitted, when that (model, device) has at least MIN_JOBS measured jobs and every target segment's
  pixels·frames lies within RANGE times the smallest and largest measured (a cost model says
  little far outside what it saw); with fewer than MIN_SHAPES (8) distinct (pixels, frames,
  steps) the four terms cannot be told apart, and seconds scale with pixels·frames·steps alone;
- otherwise the tiers' speed factors applied to the source scene's own measured jobs:
  `cost_target = cost_source · speed_factor_source / speed_factor_target` (confidence low);
- and when the source has no measured job either, no estimate, with the reason.

Confidence: the fit's median absolute percentage error on its own jobs, cross-validated (each
job predicted by a fit without it, in up to 10 folds); high up to 15%, medium up to 35%, low
above that, with the speed factors, and for a fit by pixels·frames·steps alone at best medium.
"""

import itertools
import statistics
from dataclasses import dataclass

import numpy as np
import psycopg

from shared.domain import tiers, upscale
from shared.domain.dimensions import AspectRatio

TERMS = ("constant", "pixels·frames·steps", "pixels·frames", "(pixels·frames)²·steps")
MIN_JOBS = 5  # measured jobs of a (model, device) before a fit is used
# Distinct (pixels, frames, steps) for the four terms: two per term. With six, a test upscale's held
# seconds came out twice what they were (a constant and the square term alone fitted them, and
# extrapolated badly); seconds in proportion to the work were within 2%.
MIN_SHAPES = 2 * len(TERMS)
RANGE = 4.0  # a fit is used up to this factor beyond the pixels·frames it measured
MAX_JOBS = 500  # the latest jobs per (model, device) a fit rests on: recent hardware and code
FOLDS = 10
HIGH, MEDIUM = 0.15, 0.35  # median error up to which confidence is high, medium
REFERENCE_ASPECT = AspectRatio(16, 9)  # of the measured speed factors (`tierflow tiers list`)


def terms(pixels: float, frames: float, steps: float) -> list[float]:
    """The four terms of the cost model (TERMS) for one segment."""
    tensor = pixels * frames
    return [1.0, tensor * steps, tensor, tensor * tensor * steps]


def _nnls(rows: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with non-negative coefficients, exactly: the best unconstrained fit of each
    subset of the columns whose coefficients are all non-negative (16 subsets of 4 terms; no
    scipy here)."""
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1.0
    scaled = rows / scale  # the terms span 15 orders of magnitude
    best, best_residual = np.zeros(rows.shape[1]), float(np.sum(target ** 2))
    for size in range(1, rows.shape[1] + 1):
        for columns in itertools.combinations(range(rows.shape[1]), size):
            coefficients, *_ = np.linalg.lstsq(scaled[:, columns], target, rcond=None)
            if (coefficients < 0).any():
                continue
            residual = float(np.sum((scaled[:, columns] @ coefficients - target) ** 2))
            if residual < best_residual:
                best, best_residual = np.zeros(rows.shape[1]), residual
                best[list(columns)] = coefficients
    return best / scale


def _coefficients(samples: list[tuple[float, float, float, float]]) -> tuple[np.ndarray, bool]:
    """(coefficients per TERMS, proportional) for samples (pixels, frames, steps, seconds)."""
    if len({s[:3] for s in samples}) < MIN_SHAPES:
        # Too few shapes to tell the terms apart: seconds in proportion to the work, at the median rate.
        rate = statistics.median(s[3] / (s[0] * s[1] * s[2]) for s in samples)
        return np.array([0.0, rate, 0.0, 0.0]), True
    seconds = np.array([s[3] for s in samples])
    rows = np.array([terms(*s[:3]) for s in samples]) / seconds[:, None]  # relative error
    return _nnls(rows, np.ones(len(samples))), False


@dataclass(frozen=True)
class CostFit:
    """A fitted cost model: seconds of one segment from its pixels, frames and steps."""

    coefficients: tuple[float, ...]  # per TERMS
    jobs: int
    shapes: int  # distinct (pixels, frames, steps) among the jobs
    proportional: bool  # fitted by pixels·frames·steps alone (too few shapes)
    median_error: float | None  # cross-validated median absolute percentage error, as a fraction
    smallest: float  # the range of pixels·frames it measured
    largest: float

    def seconds(self, pixels: float, frames: float, steps: float) -> float:
        return float(np.dot(self.coefficients, terms(pixels, frames, steps)))

    def covers(self, pixels: float, frames: float) -> bool:
        """Whether a segment of this size is close enough to what was measured (RANGE)."""
        return self.smallest / RANGE <= pixels * frames <= self.largest * RANGE

    @property
    def confidence(self) -> str:
        error = self.median_error if self.median_error is not None else 1.0
        level = "high" if error <= HIGH else "medium" if error <= MEDIUM else "low"
        return "medium" if self.proportional and level == "high" else level


def fit_costs(samples) -> CostFit | None:
    """The cost model of measured jobs (pixels, frames, steps, seconds), or None below MIN_JOBS.
    Jobs without a positive cost say nothing about cost and are left out."""
    samples = [tuple(float(v) for v in s) for s in samples if s[3] is not None and s[3] > 0]
    if len(samples) < MIN_JOBS:
        return None
    coefficients, proportional = _coefficients(samples)
    # Cross-validated error: each job predicted by a fit on the others (interleaved folds).
    folds = min(len(samples), FOLDS)
    errors = []
    for fold in range(folds):
        rest = [s for i, s in enumerate(samples) if i % folds != fold]
        held_out = [s for i, s in enumerate(samples) if i % folds == fold]
        fold_coefficients, _ = _coefficients(rest)
        errors += [abs(float(np.dot(fold_coefficients, terms(*s[:3]))) - s[3]) / s[3] for s in held_out]
    tensors = [s[0] * s[1] for s in samples]
    return CostFit(coefficients=tuple(float(c) for c in coefficients), jobs=len(samples),
                   shapes=len({s[:3] for s in samples}), proportional=proportional,
                   median_error=statistics.median(errors), smallest=min(tensors), largest=max(tensors))


# ---------------------------------------------------------------------------------------------
# Measured jobs


MEASURED_JOBS = """
SELECT * FROM (
    SELECT g.model, split_part(j.device, ':', 1) AS device, s.width * s.height AS pixels, g.frames, g.steps,
           j.device_seconds AS render_seconds, j.held_seconds - COALESCE(j.load_seconds, 0) AS held_seconds,
           j.load_seconds,
           row_number() OVER (PARTITION BY g.model, split_part(j.device, ':', 1)
                              ORDER BY j.finished_at DESC NULLS LAST, j.id DESC) AS latest
    FROM generation_jobs j JOIN segments g ON g.id = j.segment_id JOIN scenes s ON s.id = g.scene_id
    WHERE j.status = 'succeeded' AND j.device IS NOT NULL
      AND (j.device_seconds IS NOT NULL OR j.held_seconds IS NOT NULL)
      AND (%(models)s::text[] IS NULL OR g.model = ANY(%(models)s::text[]))) measured
WHERE latest <= %(max_jobs)s
"""


@dataclass(frozen=True)
class DeviceCosts:
    """What one (model, device kind) measured: the render and held fits, the median cold load."""

    model: str
    device: str
    jobs: int
    measured_both: int  # of them, the jobs that measured render and held seconds (a fit needs MIN_JOBS)
    render: CostFit | None
    held: CostFit | None
    cold_start_seconds: float | None


def measured_costs(conn: psycopg.Connection, models: list[str] | None = None) -> dict[tuple[str, str], DeviceCosts]:
    """Per (model, device kind) with succeeded, measured jobs (of `models`, or all): their fits."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in conn.execute(MEASURED_JOBS, {"models": models, "max_jobs": MAX_JOBS}).fetchall():
        groups.setdefault((row["model"], row["device"]), []).append(row)
    costs = {}
    for (model, device), rows in groups.items():
        loads = [r["load_seconds"] for r in rows if r["load_seconds"]]
        costs[model, device] = DeviceCosts(
            model=model, device=device, jobs=len(rows),
            measured_both=sum(1 for r in rows if (r["render_seconds"] or 0) > 0 and (r["held_seconds"] or 0) > 0),
            render=fit_costs([(r["pixels"], r["frames"], r["steps"], r["render_seconds"]) for r in rows]),
            held=fit_costs([(r["pixels"], r["frames"], r["steps"], r["held_seconds"]) for r in rows]),
            cold_start_seconds=round(statistics.median(loads), 2) if loads else None)
    return costs


def _source_jobs(conn: psycopg.Connection, scene_id: int) -> list[dict]:
    """The source scene's segments with their latest succeeded attempt's costs (None: unmeasured)."""
    return conn.execute(
        """SELECT g.position, g.model, g.frames, g.steps, split_part(j.device, ':', 1) AS device,
                  j.device_seconds AS render_seconds, j.held_seconds - COALESCE(j.load_seconds, 0) AS held_seconds
           FROM segments g LEFT JOIN LATERAL (
               SELECT * FROM generation_jobs WHERE segment_id = g.id AND status = 'succeeded'
               ORDER BY attempt DESC LIMIT 1) j ON true
           WHERE g.scene_id = %s ORDER BY j.finished_at DESC NULLS LAST, g.position""", [scene_id]).fetchall()


def choose_device(model: str, costs: dict[tuple[str, str], DeviceCosts], source_jobs: list[dict]) -> str | None:
    """The device kind an estimate for `model` is for: cuda when measured, else the source's
    latest, else the model's most measured; None when nothing of it was measured."""
    measured = {device: c.jobs for (m, device), c in costs.items() if m == model}
    if "cuda" in measured:
        return "cuda"
    latest = next((j["device"] for j in source_jobs if j["device"] in measured), None)
    return latest or max(measured, key=measured.get, default=None)


# ---------------------------------------------------------------------------------------------
# The estimate


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.1f} s" if value < 60 else f"{value / 60:.1f} min"


def upscale_estimate(conn: psycopg.Connection, scene_id: int, target_tier: str, *, role: str | None = None) -> dict:
    """The estimated cost of upscaling `scene_id` to `target_tier`: every segment at the target
    tier's size for the scene's aspect, under the rules of this module. Refused exactly as the
    upscale itself would be (`upscale.plan_upscale`); queues and writes nothing.

    The documented JSON of `tierflow scenes upscale --estimate --json` and
    GET /api/scenes/{id}/upscale-estimate."""
    # 1. what the upscale would render
    plan = upscale.plan_upscale(conn, scene_id, target_tier, role=role)
    width, height = plan.size
    pixels = width * height
    models = sorted({r.model for r in plan.recipes})
    costs = measured_costs(conn, models)
    source_jobs = _source_jobs(conn, scene_id)
    devices = {model: choose_device(model, costs, source_jobs) for model in models}

    # 2. fitted, when every segment's (model, device) has fits that cover its size
    render = held = None
    fitted = [costs.get((r.model, devices[r.model])) for r in plan.recipes]
    problem = None
    for recipe, measured in zip(plan.recipes, fitted):
        device = devices[recipe.model] or "any device"
        if measured is None or measured.held is None or measured.render is None:
            problem = (f"only {measured.measured_both if measured else 0} job(s) of {recipe.model} on {device} "
                       f"are measured (a fit needs {MIN_JOBS})")
        elif not (measured.held.covers(pixels, recipe.frames) and measured.render.covers(pixels, recipe.frames)):
            problem = (f"no measured job of {recipe.model} on {device} is within {RANGE:g}× of {width}×{height} "
                       f"at {recipe.frames} frames")
        if problem:
            break
    if problem is None and plan.recipes:
        held = sum(m.held.seconds(pixels, r.frames, r.steps) for r, m in zip(plan.recipes, fitted))
        # Two fits, each with its own error: the render is part of what is held, never more.
        render = min(held, sum(m.render.seconds(pixels, r.frames, r.steps) for r, m in zip(plan.recipes, fitted)))
        first = fitted[0]
        worst = max(fitted, key=lambda m: m.held.median_error or 0)
        basis = {"method": "fitted", "model": ", ".join(models), "device": ", ".join(sorted(set(devices.values()))),
                 "jobs": sum({(m.model, m.device): m.held.jobs for m in fitted}.values()),
                 "shapes": first.held.shapes, "proportional": any(m.held.proportional for m in fitted),
                 "reason": None}
        confidence, error = worst.held.confidence, worst.held.median_error
        cold_start = max((m.cold_start_seconds or 0 for m in fitted), default=0) or None
        how = (f"a fit on {basis['jobs']} measured job(s) of {basis['model']} on {basis['device']}"
               + (" scaled by pixels·frames·steps (too few distinct sizes for the full model)"
                  if basis["proportional"] else "")
               + f", median error {100 * error:.0f}%")
    else:
        # 3. otherwise the speed factors, applied to the source's own measured jobs
        source_tier = tiers.get_tier(conn, plan.source["tier"])
        ratio = source_tier.speed_factor / plan.target.speed_factor
        measured = [j for j in source_jobs if j["held_seconds"] is not None and j["held_seconds"] > 0]
        basis = {"method": "speed_factor" if measured else None, "model": ", ".join(models),
                 "device": measured[0]["device"] if measured else None, "jobs": len(measured),
                 "source_speed_factor": source_tier.speed_factor, "target_speed_factor": plan.target.speed_factor,
                 "reason": problem or "the scene has no segments"}
        confidence, error, cold_start = ("low" if measured else None), None, None
        if measured:
            # A segment not measured costs what the measured ones cost per frame and step.
            work = sum(j["frames"] * j["steps"] for j in measured)
            per_work = {key: sum(j[key] or 0 for j in measured) / work for key in ("render_seconds", "held_seconds")}
            by_position = {j["position"]: j for j in measured}

            def cost(key: str) -> float:
                return ratio * sum((by_position[s["position"]][key] or 0) if s["position"] in by_position
                                   else per_work[key] * s["frames"] * s["steps"] for s in plan.segments)

            render, held = cost("render_seconds"), cost("held_seconds")
            how = (f"the scene's own {len(measured)} measured {plan.source['tier']} job(s) scaled by the tiers' speed "
                   f"factors ({source_tier.speed_factor:g} → {plan.target.speed_factor:g}), because {problem}: "
                   "a rough estimate")

    # 4. the answer, in numbers and in a sentence
    what = (f"scene {scene_id} at {plan.target.label} ({width}×{height}, {len(plan.recipes)} segment(s))")
    if held is None:
        summary = (f"No estimate for {what}: {basis['reason']}, and the scene has no measured job of its own "
                   "to scale by the tiers' speed factors.")
    else:
        device = basis["device"] or "its device"
        summary = (f"Upscaling {what} should hold a {device} device for about {_seconds(held)} "
                   f"({_seconds(render)} rendering)" + (f", plus {_seconds(cold_start)} if no worker has the model "
                                                        "loaded" if cold_start else "")
                   + f"; from {how}.")
    if plan.existing_target_id is not None:
        summary += f" It was requested already, as scene {plan.existing_target_id}: asking again queues nothing."
    return {
        "scene_id": scene_id, "target_tier": plan.target.name, "width": width, "height": height,
        "segments": len(plan.recipes), "target_scene_id": plan.existing_target_id,
        "estimated_render_seconds": None if render is None else round(render, 2),
        "estimated_held_seconds": None if held is None else round(held, 2),
        "cold_start_seconds": cold_start, "basis": basis, "confidence": confidence,
        "median_error": None if error is None else round(error, 3), "summary": summary,
    }


def measured_speed_factors(conn: psycopg.Connection, tier_list: list[tiers.Tier]) -> tuple[dict[str, float | None],
                                                                                          dict | None]:
    """Per tier, its measured speed factor: the held seconds of a Production-sized segment over
    those of one at the tier's size, 16:9, at the median frames and steps of the jobs measured,
    per the held-seconds fit of the most measured (model, device) with a full fit; None where
    that fit does not cover the tier's size or Production's. Also the basis (None: no fit)."""
    costs = [c for c in measured_costs(conn).values() if c.held is not None and not c.held.proportional]
    if not costs:
        return {t.name: None for t in tier_list}, None
    best = max(costs, key=lambda c: c.held.jobs)
    rows = conn.execute(MEASURED_JOBS, {"models": [best.model], "max_jobs": MAX_JOBS}).fetchall()
    rows = [r for r in rows if r["device"] == best.device]
    frames = int(statistics.median(r["frames"] for r in rows))
    steps = int(statistics.median(r["steps"] for r in rows))
    production = next((t for t in tier_list if t.name == "production"), None)

    def held(tier: tiers.Tier) -> float | None:
        width, height = tier.size_for(REFERENCE_ASPECT)
        covered = best.held.covers(width * height, frames)
        return best.held.seconds(width * height, frames, steps) if covered else None

    reference = held(production) if production else None
    factors = {}
    for tier in tier_list:
        seconds = held(tier)
        factors[tier.name] = round(reference / seconds, 2) if reference and seconds else None
    return factors, {"model": best.model, "device": best.device, "jobs": best.held.jobs,
                     "aspect": str(REFERENCE_ASPECT), "frames": frames, "steps": steps}
