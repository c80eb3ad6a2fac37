"""A project's settings (`tierflow projects set`, `GET|PUT /api/projects/{name}`): the tier its
approved scenes are upscaled to automatically (shared.domain.upscale) and its cost bounds
(shared.domain.limits), read and changed together in one documented JSON form:
`{"project", "auto_upscale_to", "max_segments", "max_frame_steps", "max_artist_tier"}`."""

import psycopg

from shared.domain import limits, upscale
from shared.errors import InvalidInput, NotFound

FIELDS = ("auto_upscale_to", "max_segments", "max_frame_steps", "max_artist_tier")

SETTINGS_QUERY = """
    SELECT p.name, auto.name AS auto_upscale_to, p.max_segments_per_scene, p.max_frame_steps,
           artist.name AS max_artist_tier
    FROM projects p LEFT JOIN resolution_tiers auto ON auto.id = p.auto_upscale_to_tier_id
    LEFT JOIN resolution_tiers artist ON artist.id = p.max_artist_tier_id
"""


def _json(row: dict) -> dict:
    return {"project": row["name"], "auto_upscale_to": row["auto_upscale_to"],
            "max_segments": row["max_segments_per_scene"], "max_frame_steps": row["max_frame_steps"],
            "max_artist_tier": row["max_artist_tier"]}


def settings(conn: psycopg.Connection, project: str) -> dict:
    """The project's settings in their documented JSON form; NotFound for a project that does not exist."""
    row = conn.execute(SETTINGS_QUERY + " WHERE p.name = %s", [project]).fetchone()
    if row is None:
        raise NotFound(f"project {project!r} does not exist")
    return _json(row)


def list_settings(conn: psycopg.Connection, *, after: str | None = None, limit: int | None = None) -> list[dict]:
    """Every project's settings by name; with `after` (a name, the cursor of the previous page) the names after it."""
    rows = conn.execute(SETTINGS_QUERY + " WHERE %(after)s::text IS NULL OR p.name > %(after)s::text "
                        "ORDER BY p.name LIMIT %(limit)s", {"after": after, "limit": limit}).fetchall()
    return [_json(row) for row in rows]


def change(deps, project: str, changes: dict) -> dict:
    """Change the given settings of `project` (created when missing) in one transaction, so a
    refused value changes nothing; a setting not in `changes` stays, None clears it. Returns the
    settings as they are now."""
    unknown = [k for k in changes if k not in FIELDS]
    if unknown:
        raise InvalidInput(f"unknown project setting(s) {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    if not changes:
        raise InvalidInput(f"give at least one of {', '.join(FIELDS)}")
    if not project or not project.strip():
        raise InvalidInput("a project name must not be empty")
    bounds = {k: v for k, v in changes.items() if k != "auto_upscale_to"}
    with deps.uow() as uow:
        # The same order as the CLI always checked them: the automatic upscale first, then the bounds.
        if "auto_upscale_to" in changes:
            upscale.set_auto_upscale_in(uow.conn, project, changes["auto_upscale_to"])
        limits.set_limits(uow.conn, project, **bounds)
        return settings(uow.conn, project)
