"""The model catalogue: the only models jobs may name, each pinned once when an admin added it, so
that the identical recipe runs the identical weights at every tier.

A source is resolved to its pin where the weights are read (shared.media.models.pin_model); this
module keeps the table. The weights themselves are checked against the pin on the worker.
"""

import re

import psycopg

from shared.errors import Conflict, InvalidInput, NotFound

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
HOW_TO_ADD = "an admin adds it with `tierflow models add NAME SOURCE`"
COLUMNS = "name, source, revision, pin, added_by, added_at"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise InvalidInput(f"model name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                           "letter or digit (no '/': a name is not a path or a hub id)")
    return name


def as_json(row: dict) -> dict:
    return {"name": row["name"], "source": row["source"], "revision": row["revision"], "pin": row["pin"],
            "added_by": row["added_by"], "added_at": row["added_at"].isoformat()}


def add(conn: psycopg.Connection, name: str, *, source: str, revision: str | None, pin: str,
        added_by: str | None = None) -> tuple[dict, bool]:
    """Add a pinned model; returns its row and whether it is new. Adding the same model with the
    same pin again changes nothing; another model or pin under a taken name is refused (a name
    means one set of weights for as long as it is in the catalogue)."""
    check_name(name)
    row = conn.execute(
        f"""INSERT INTO models (name, source, revision, pin, added_by) VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (name) DO NOTHING RETURNING {COLUMNS}""",
        [name, source, revision, pin, added_by]).fetchone()
    if row is not None:
        return row, True
    existing = get(conn, name)
    if (existing["source"], existing["revision"], existing["pin"]) == (source, revision, pin):
        return existing, False
    raise Conflict(f"model {name!r} is already in the catalogue as {describe(existing)}; remove it first "
                   "(`tierflow models remove`) or add this one under another name")


def describe(row: dict) -> str:
    revision = f" revision {row['revision']}" if row["revision"] else ""
    return f"{row['source']}{revision} pinned to {row['pin']}"


def rows(conn: psycopg.Connection, *, after: str | None = None, limit: int | None = None) -> list[dict]:
    """The catalogue by name; with `after` (a name, the cursor of the previous page) the names after it."""
    return conn.execute(f"SELECT {COLUMNS} FROM models WHERE %(after)s::text IS NULL OR name > %(after)s::text "
                        "ORDER BY name LIMIT %(limit)s", {"after": after, "limit": limit}).fetchall()


def names(conn: psycopg.Connection) -> list[str]:
    return [r["name"] for r in conn.execute("SELECT name FROM models ORDER BY name")]


def get(conn: psycopg.Connection, name: str) -> dict:
    row = conn.execute(f"SELECT {COLUMNS} FROM models WHERE name = %s", [name]).fetchone()
    if row is None:
        raise NotFound(f"model {name!r} is not in the model catalogue (known: {', '.join(names(conn)) or 'none'})")
    return row


def by_source(conn: psycopg.Connection, source: str) -> dict | None:
    """The catalogue entry of a source added without a revision, if any."""
    return conn.execute(f"SELECT {COLUMNS} FROM models WHERE source = %s AND revision IS NULL ORDER BY name LIMIT 1",
                        [source]).fetchone()


def for_submission(conn: psycopg.Connection, name: str) -> dict:
    """The entry a new job names; anything outside the catalogue is refused, whatever it is (a
    path on some host, a hub id): paths are checked on workers only."""
    row = conn.execute(f"SELECT {COLUMNS} FROM models WHERE name = %s FOR SHARE", [name]).fetchone()
    if row is None:
        known = ", ".join(names(conn)) or "none yet"
        raise InvalidInput(f"model {name!r} is not in the model catalogue (known: {known}); {HOW_TO_ADD}")
    return row


def remove(conn: psycopg.Connection, name: str) -> dict:
    """Take a model out of the catalogue; refused while jobs of it are queued or running (they
    would have no weights to run). Scenes made with it stay, but cannot be upscaled again."""
    with conn.transaction():
        return _remove(conn, name)


def _remove(conn: psycopg.Connection, name: str) -> dict:
    row = get(conn, name)
    # A submission holds its model's row FOR SHARE until its jobs are written.
    conn.execute("SELECT 1 FROM models WHERE name = %s FOR UPDATE", [name])
    unfinished = conn.execute(
        """SELECT count(*) AS n FROM generation_jobs j JOIN segments g ON g.id = j.segment_id
           WHERE g.model = %s AND j.status IN ('queued', 'running')""", [name]).fetchone()["n"]
    if unfinished:
        raise Conflict(f"model {name!r} has {unfinished} queued or running job(s); wait for them to finish before "
                       "removing it")
    conn.execute("DELETE FROM models WHERE name = %s", [name])
    return row


def check_still_pinned(conn: psycopg.Connection, scene_id: int, name: str, pin: str | None) -> None:
    """Refuse to run a scene's recipe again (an upscale) unless its model is still in the
    catalogue at the same pin: otherwise "the identical recipe" would run other weights."""
    refused = f"scene {scene_id} cannot be upscaled: its model {name!r}"
    if pin is None:
        raise Conflict(f"{refused} was used before the model catalogue existed, so the weights it ran were never "
                       "pinned and cannot be run again as the same recipe; generate the scene again with a "
                       "catalogue model")
    row = conn.execute(f"SELECT {COLUMNS} FROM models WHERE name = %s FOR SHARE", [name]).fetchone()
    if row is None:
        raise Conflict(f"{refused} (pinned to {pin}) is no longer in the model catalogue; {HOW_TO_ADD} with the "
                       "same weights")
    if row["pin"] != pin:
        raise Conflict(f"{refused} was pinned to {pin}, but the catalogue's {name!r} is now {describe(row)}: "
                       "other weights")
