"""Cost bounds an admin sets per project: segments per scene, frames × steps per segment, and the
highest tier an artist may submit or upscale to. Checked when a scene is submitted or an upscale
requested, before anything is written, with the bound named in the refusal. The segment bounds
hold for everyone; the tier bound for artists (an API key of role `artist`), not for admins or
the CLI's operator. A project without a row, or a bound left NULL, is unbounded."""

from dataclasses import dataclass

import psycopg

from shared.domain.tiers import Tier
from shared.errors import Conflict, InvalidInput

UNSET = object()


@dataclass(frozen=True)
class Limits:
    max_segments: int | None = None
    max_frame_steps: int | None = None
    max_artist_tier: str | None = None
    max_artist_sort_order: int | None = None

    def to_json(self) -> dict:
        return {"max_segments": self.max_segments, "max_frame_steps": self.max_frame_steps,
                "max_artist_tier": self.max_artist_tier}


def project_limits(conn: psycopg.Connection, project: str) -> Limits:
    row = conn.execute(
        """SELECT p.max_segments_per_scene, p.max_frame_steps, t.name AS tier, t.sort_order
           FROM projects p LEFT JOIN resolution_tiers t ON t.id = p.max_artist_tier_id WHERE p.name = %s""",
        [project]).fetchone()
    if row is None:
        return Limits()
    return Limits(row["max_segments_per_scene"], row["max_frame_steps"], row["tier"], row["sort_order"])


def check_tier(limits: Limits, project: str, tier: Tier, role: str | None) -> None:
    """Artists stay at or below the project's artist tier."""
    if role == "artist" and limits.max_artist_tier and tier.sort_order > limits.max_artist_sort_order:
        raise Conflict(f"project {project!r} lets artists work up to {limits.max_artist_tier}; {tier.name} needs an "
                       f"admin (the bound: tierflow projects set {project} --max-artist-tier)")


def check_submission(conn: psycopg.Connection, project: str, recipes: list, tier: Tier, role: str | None) -> None:
    """Every bound of `project` a new scene of these recipes at `tier` would pass, refused with
    each one named."""
    limits = project_limits(conn, project)
    problems = []
    if limits.max_segments is not None and len(recipes) > limits.max_segments:
        problems.append(f"the scene has {len(recipes)} segments; project {project!r} allows at most "
                        f"{limits.max_segments} per scene (--max-segments)")
    if limits.max_frame_steps is not None:
        for position, recipe in enumerate(recipes):
            cost = recipe.frames * recipe.steps
            if cost > limits.max_frame_steps:
                problems.append(f"segment {position}: {recipe.frames} frames × {recipe.steps} steps = {cost}; project "
                                f"{project!r} allows at most {limits.max_frame_steps} per segment (--max-frame-steps)")
    if problems:
        raise Conflict("; ".join(problems))
    check_tier(limits, project, tier, role)


def set_limits(conn: psycopg.Connection, project: str, *, max_segments=UNSET, max_frame_steps=UNSET,
               max_artist_tier=UNSET) -> Limits:
    """Change the given bounds of `project` (created when missing); None clears one."""
    from shared.domain import tiers

    changes = {}
    for column, value in (("max_segments_per_scene", max_segments), ("max_frame_steps", max_frame_steps)):
        if value is not UNSET:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 2**31):
                raise InvalidInput(f"{column.replace('_', ' ')} must be a whole number from 1, not {value!r}")
            changes[column] = value
    if max_artist_tier is not UNSET:
        changes["max_artist_tier_id"] = tiers.get_tier(conn, max_artist_tier).id if max_artist_tier else None
    with conn.transaction():
        conn.execute("INSERT INTO projects (name) VALUES (%s) ON CONFLICT (name) DO NOTHING", [project])
        if changes:
            conn.execute(f"UPDATE projects SET {', '.join(f'{c} = %s' for c in changes)} WHERE name = %s",
                         [*changes.values(), project])
    return project_limits(conn, project)
