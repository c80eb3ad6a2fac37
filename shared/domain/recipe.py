"""The recipe: everything that shapes a segment's frames except its size, identical at every tier.

Its fields are `events.Recipe`'s (prompt, negative prompt, seed, frames, fps, steps, guidance,
model and its pin, scheduler, noise scheme), stored as columns of `segments`. A scene's recipe hash covers its aspect
ratio and every segment's recipe but never the size, so two scenes with equal hashes differ only
in resolution.
"""

import hashlib
import json
import secrets
from dataclasses import dataclass

from events import Recipe
from events.errors import InvalidEvent, validated
from events.models import MAX_SEED, NOISE_SCHEMES
from shared.domain.dimensions import AspectRatio
from shared.errors import InvalidInput

RECIPE_FIELDS = tuple(Recipe.model_fields)  # also the recipe's columns in `segments`
SEGMENT_DEFAULTS = {"frames": 16, "fps": 8, "steps": 25, "guidance": 7.5}
DEFAULT_NOISE = "consistent-v1"  # new scenes; a recipe without a scheme is "native"
MAX_SEGMENTS = 100


@dataclass(frozen=True)
class SegmentSpec:
    """What a user asks for one segment; unset fields take SEGMENT_DEFAULTS, a random seed."""

    prompt: str
    negative_prompt: str | None = None
    seed: int | None = None
    frames: int | None = None
    fps: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None


def recipe_of(row) -> Recipe:
    """The recipe stored in a `segments` row (or any row with the recipe's columns)."""
    return Recipe(**{field: row[field] for field in RECIPE_FIELDS})


def recipe_hash(aspect: AspectRatio, recipes: list[Recipe]) -> str:
    """Hash of everything that shapes a scene's frames except its size (and so its tier)."""
    # A recipe made before the model catalogue has no pin, and one made before noise schemes is
    # native; leaving those fields out keeps their hashes.
    canonical = json.dumps(
        {"aspect": str(aspect),
         "segments": [r.model_dump(mode="json", exclude=_absent_before(r)) for r in recipes]},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def _absent_before(recipe: Recipe) -> set[str]:
    return ({"model_pin"} if recipe.model_pin is None else set()) | ({"noise"} if recipe.noise == "native" else set())


def build_recipes(segments: list[SegmentSpec], model: str, model_pin: str | None = None,
                  noise: str | None = None) -> list[Recipe]:
    """Validate every segment (all problems in one message) and fill defaults and seeds; every
    segment runs catalogue model `model` at `model_pin`, its initial noise drawn by scheme
    `noise` (default DEFAULT_NOISE)."""
    if not segments:
        raise InvalidInput("a scene needs at least one segment: give --prompt TEXT (or a spec file with segments)")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidInput(f"a scene has at most {MAX_SEGMENTS} segments, not {len(segments)}")
    noise = DEFAULT_NOISE if noise is None else noise
    if noise not in NOISE_SCHEMES:
        raise InvalidInput(f"unknown noise scheme {noise!r}: use one of {', '.join(NOISE_SCHEMES)}")
    recipes, problems = [], []
    for position, spec in enumerate(segments):
        values = {k: v for k, v in vars(spec).items() if v is not None}
        values = {**SEGMENT_DEFAULTS, **values, "model": model, "model_pin": model_pin, "noise": noise}
        values.setdefault("seed", secrets.randbelow(MAX_SEED + 1))
        try:
            recipes.append(validated(Recipe, values, what=f"segment {position + 1}"))
        except InvalidEvent as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidInput("; ".join(problems))
    return recipes
