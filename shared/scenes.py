"""Scenes: submitting generation jobs at a tier, and reading scenes back with their progress.

A scene is one or more segments generated at one tier. Each segment has a recipe (prompt,
seed, frames, fps, steps, guidance, model, scheduler) that is identical at every tier; only the
size changes. The scene's recipe hash covers everything but the size, so two scenes with equal
hashes differ only in resolution.
"""

import fcntl
import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from events import GenerationRequested, Recipe
from events.errors import InvalidEvent, validated
from shared import tiers
from shared.dimensions import AspectRatio, parse_aspect
from shared.errors import InvalidInput, NotFound

MAX_SEGMENTS = 100
# Scene states: a fully generated scene may be approved, upscaled and delivered; a settled one
# changes no more by itself (a failed one waits for `scenes retry`).
FULLY_GENERATED = ("generated", "approved")
SETTLED = (*FULLY_GENERATED, "failed")
SEGMENT_DEFAULTS = {"frames": 16, "fps": 8, "steps": 25, "guidance": 7.5}
MAX_SEED = 2**63 - 1


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


def recipe_hash(aspect: AspectRatio, recipes: list[Recipe]) -> str:
    """Hash of everything that shapes a scene's frames except its size (and so its tier)."""
    canonical = json.dumps(
        {"aspect": str(aspect), "segments": [r.model_dump(mode="json") for r in recipes]},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def build_recipes(segments: list[SegmentSpec], model: str) -> list[Recipe]:
    """Validate every segment (all problems in one message) and fill defaults and seeds."""
    if not segments:
        raise InvalidInput("a scene needs at least one segment: give --prompt TEXT (or a spec file with segments)")
    if len(segments) > MAX_SEGMENTS:
        raise InvalidInput(f"a scene has at most {MAX_SEGMENTS} segments, not {len(segments)}")
    recipes, problems = [], []
    for position, spec in enumerate(segments):
        values = {k: v for k, v in vars(spec).items() if v is not None}
        values = {**SEGMENT_DEFAULTS, **values, "model": model}
        values.setdefault("seed", secrets.randbelow(MAX_SEED + 1))
        try:
            recipes.append(validated(Recipe, values, what=f"segment {position + 1}"))
        except InvalidEvent as exc:
            problems.append(str(exc))
    if problems:
        raise InvalidInput("; ".join(problems))
    return recipes


def job_prefix(tier: str, scene_id: int, position: int, job_id: int) -> str:
    """Where a job's outputs go: deterministic per job, so a re-run overwrites them. The tier
    leads the key so a bucket lifecycle rule can expire Draft media after a while."""
    return f"media/{tier}/scenes/{scene_id}/segments/{position}/jobs/{job_id}/"


def create_scene(
    conn: psycopg.Connection,
    emit,
    *,
    project: str,
    name: str,
    aspect: AspectRatio,
    tier: tiers.Tier,
    recipes: list[Recipe],
    upscaled_from_scene_id: int | None = None,
) -> int:
    """Insert a pending scene with its segments and one queued job each; emits
    generation.requested per job. Runs in the caller's transaction; returns the scene id."""
    width, height = tier.size_for(aspect)
    project_id = conn.execute(
        "INSERT INTO projects (name) VALUES (%s) ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id",
        [project],
    ).fetchone()["id"]
    scene_id = conn.execute(
        """INSERT INTO scenes (project_id, name, aspect_width, aspect_height, width, height,
                               resolution_tier_id, recipe_hash, upscaled_from_scene_id)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
        [project_id, name, aspect.width, aspect.height, width, height, tier.id,
         recipe_hash(aspect, recipes), upscaled_from_scene_id],
    ).fetchone()["id"]
    for position, recipe in enumerate(recipes):
        segment_id = conn.execute(
            """INSERT INTO segments (scene_id, position, prompt, negative_prompt, seed, frames, fps, steps,
                                     guidance, model, scheduler)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id""",
            [scene_id, position, recipe.prompt, recipe.negative_prompt, recipe.seed, recipe.frames, recipe.fps,
             recipe.steps, recipe.guidance, recipe.model, recipe.scheduler],
        ).fetchone()["id"]
        job_id = conn.execute(
            "INSERT INTO generation_jobs (segment_id, attempt) VALUES (%s, 1) RETURNING id", [segment_id]
        ).fetchone()["id"]
        emit(GenerationRequested(job_id=job_id, scene_id=scene_id, segment_id=segment_id, attempt=1,
                                 tier=tier.name, width=width, height=height, recipe=recipe))
    return scene_id


def submit_scene(
    deps,
    *,
    project: str,
    name: str,
    aspect: str,
    segments: list[SegmentSpec],
    tier: str | None = None,
    model: str | None = None,
) -> int:
    """Validate everything, then create the scene and queue its jobs; nothing is written on error."""
    from shared.generation import validate_model

    # 1. validate everything that needs no database
    problems = []
    if not project or not project.strip():
        problems.append("--project must not be empty")
    if not name or not name.strip():
        problems.append("--scene must not be empty")
    if problems:
        raise InvalidInput("; ".join(problems))
    parsed_aspect = parse_aspect(aspect)
    model = model or default_model(deps.settings)
    validate_model(model)
    recipes = build_recipes(segments, model)
    # 2. tier (default: whichever is default now) and size, then write it all in one transaction
    with deps.uow() as uow:
        chosen = tiers.get_tier(uow.conn, tier) if tier else tiers.default_tier(uow.conn)
        chosen.size_for(parsed_aspect)  # refuses an aspect too extreme for the tier before writing
        return create_scene(uow.conn, uow.emit, project=project.strip(), name=name.strip(), aspect=parsed_aspect,
                            tier=chosen, recipes=recipes)


def default_model(settings) -> str:
    """TIERFLOW_MODEL, or the tiny model under home, built on first use (under a lock: two
    first submissions at once must not write the same files together)."""
    if settings.model:
        return settings.model
    path = Path(settings.model_path)
    if not (path / "model_index.json").exists():
        from shared.generation import build_tiny_model

        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.parent / ".build.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (path / "model_index.json").exists():
                build_tiny_model(path)
    return str(path)


# ---------------------------------------------------------------------------------------------
# Reading scenes back


SCENE_QUERY = """
    SELECT s.id, s.name, p.name AS project, s.status, s.width, s.height, s.aspect_width, s.aspect_height,
           s.recipe_hash, s.upscaled_from_scene_id, s.approved_at, s.created_at, s.updated_at,
           t.name AS tier, t.sort_order AS tier_sort_order, t.is_deliverable AS tier_deliverable
    FROM scenes s JOIN projects p ON p.id = s.project_id JOIN resolution_tiers t ON t.id = s.resolution_tier_id
"""

# The latest attempt of each segment decides its progress and outputs.
SEGMENT_QUERY = """
    SELECT g.id, g.position, g.status, g.prompt, g.negative_prompt, g.seed, g.frames, g.fps, g.steps,
           g.guidance, g.model, g.scheduler, g.ssim, g.psnr, g.comparison_key, g.similarity_flagged,
           j.id AS job_id, j.attempt, j.status AS job_status, j.progress, j.error, j.device, j.device_seconds,
           j.video_key, j.poster_key, j.metadata_key, j.sha256
    FROM segments g
    LEFT JOIN LATERAL (SELECT * FROM generation_jobs WHERE segment_id = g.id ORDER BY attempt DESC LIMIT 1) j ON true
    WHERE g.scene_id = %s ORDER BY g.position
"""


def _segment_json(row: dict) -> dict:
    return {
        "segment_id": row["id"], "position": row["position"], "status": row["status"],
        "recipe": {k: row[k] for k in ("prompt", "negative_prompt", "seed", "frames", "fps", "steps", "guidance",
                                       "model", "scheduler")},
        "job": None if row["job_id"] is None else {
            "job_id": row["job_id"], "attempt": row["attempt"], "status": row["job_status"],
            "progress": round(100 * row["progress"], 1), "error": row["error"], "device": row["device"],
            "device_seconds": row["device_seconds"],
        },
        "outputs": None if row["video_key"] is None else {
            "video": row["video_key"], "poster": row["poster_key"], "metadata": row["metadata_key"],
            "sha256": row["sha256"], "comparison": row["comparison_key"],
        },
        # Upscaled segments only: similarity to the source segment, flagged below the threshold.
        "ssim": row["ssim"], "psnr": row["psnr"], "similarity_flagged": row["similarity_flagged"],
    }


def _scene_json(conn: psycopg.Connection, row: dict) -> dict:
    segments = [_segment_json(r) for r in conn.execute(SEGMENT_QUERY, [row["id"]]).fetchall()]
    progress = sum((s["job"] or {}).get("progress", 0) for s in segments) / len(segments) if segments else 0
    return {
        "scene_id": row["id"], "name": row["name"], "project": row["project"], "status": row["status"],
        "tier": row["tier"], "tier_label": tiers.tier_label(row["tier"]), "tier_deliverable": row["tier_deliverable"],
        "width": row["width"], "height": row["height"],
        "aspect": AspectRatio(row["aspect_width"], row["aspect_height"]).label, "progress": round(progress, 1),
        "recipe_hash": row["recipe_hash"], "upscaled_from_scene_id": row["upscaled_from_scene_id"],
        "upscale_targets": [
            {"scene_id": r["id"], "tier": r["tier"], "tier_label": tiers.tier_label(r["tier"])}
            for r in conn.execute(
                """SELECT s.id, t.name AS tier FROM scenes s JOIN resolution_tiers t ON t.id = s.resolution_tier_id
                   WHERE s.upscaled_from_scene_id = %s ORDER BY t.sort_order""", [row["id"]])],
        "approved_at": row["approved_at"].isoformat() if row["approved_at"] else None,
        "created_at": row["created_at"].isoformat(), "segments": segments,
    }


def _lineage_json(conn: psycopg.Connection, scene_id: int) -> list[dict]:
    chain = lineage(conn, scene_id)
    by_id = {r["id"]: r for r in conn.execute(SCENE_QUERY + " WHERE s.id = ANY(%s)", [chain]).fetchall()}
    return [{"scene_id": i, "tier": by_id[i]["tier"], "width": by_id[i]["width"], "height": by_id[i]["height"],
             "status": by_id[i]["status"], "upscaled_from_scene_id": by_id[i]["upscaled_from_scene_id"]}
            for i in chain]


def get_scene(conn: psycopg.Connection, scene_id: int) -> dict:
    """The documented JSON form of a scene (`tierflow scenes show ID --json`)."""
    row = conn.execute(SCENE_QUERY + " WHERE s.id = %s", [scene_id]).fetchone()
    if row is None:
        raise NotFound(f"scene {scene_id} does not exist")
    return {**_scene_json(conn, row), "lineage": _lineage_json(conn, scene_id)}


def list_scenes(conn: psycopg.Connection, project: str | None = None, limit: int = 100) -> list[dict]:
    """Newest scenes first, optionally of one project."""
    where, params = ("WHERE p.name = %s", [project]) if project else ("", [])
    rows = conn.execute(SCENE_QUERY + f" {where} ORDER BY s.id DESC LIMIT %s", [*params, limit]).fetchall()
    return [_scene_json(conn, row) for row in rows]


def lineage(conn: psycopg.Connection, scene_id: int) -> list[int]:
    """The chain a scene belongs to, oldest first (draft → preview → production), both ways."""
    root = conn.execute(
        """WITH RECURSIVE up AS (
               SELECT id, upscaled_from_scene_id, 0 AS depth FROM scenes WHERE id = %s
               UNION ALL
               SELECT s.id, s.upscaled_from_scene_id, up.depth + 1 FROM scenes s JOIN up ON s.id = up.upscaled_from_scene_id)
           SELECT id FROM up ORDER BY depth DESC LIMIT 1""",
        [scene_id],
    ).fetchone()
    if root is None:
        raise NotFound(f"scene {scene_id} does not exist")
    rows = conn.execute(
        """WITH RECURSIVE down AS (
               SELECT id, 0 AS depth FROM scenes WHERE id = %s
               UNION ALL
               SELECT s.id, down.depth + 1 FROM scenes s JOIN down ON s.upscaled_from_scene_id = down.id)
           SELECT id FROM down ORDER BY depth, id""",
        [root["id"]],
    ).fetchall()
    return [r["id"] for r in rows]


def parse_spec(document: Any) -> dict:
    """A --spec file: {"project", "scene", "aspect", "tier"?, "model"?, "segments": [{...}]}."""
    if not isinstance(document, dict):
        raise InvalidInput("the spec must be a JSON object with project, scene, aspect and segments")
    unknown = set(document) - {"project", "scene", "aspect", "tier", "model", "segments"}
    if unknown:
        raise InvalidInput(f"unknown spec field(s): {', '.join(sorted(unknown))}")
    segments = document.get("segments")
    if not isinstance(segments, list) or not all(isinstance(s, dict) for s in segments):
        raise InvalidInput("the spec's segments must be a list of objects with at least a prompt")
    allowed = set(SegmentSpec.__dataclass_fields__)
    specs = []
    for position, segment in enumerate(segments):
        extra = set(segment) - allowed
        if extra:
            raise InvalidInput(f"segment {position + 1}: unknown field(s) {', '.join(sorted(extra))}")
        if "prompt" not in segment:
            raise InvalidInput(f"segment {position + 1}: prompt is required")
        specs.append(SegmentSpec(**segment))
    return {**{k: document.get(k) for k in ("project", "scene", "aspect", "tier", "model")}, "segments": specs}
