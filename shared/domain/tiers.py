"""Resolution tiers: the named bounding boxes scenes are generated at, and their administration.

Rules, each enforced here with a clear message and again by the database as a backstop:
names are lowercase slugs; sides are multiples of 8 between 64 and 8192; the speed factor is
positive; exactly one tier is the default; built-in tiers are never deleted or renamed; a tier
that a scene uses is never deleted; quality settings hold output settings, never sampler settings,
and only ones that go together (a master codec's profile, DNxHR's frame size limits against the box).
"""

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from events.models import TIER_NAME_MAX_LENGTH as NAME_MAX_LENGTH
from events.models import TIER_NAME_PATTERN
from shared.domain.dimensions import SIZE_STEP, AspectRatio, generation_size
from shared.errors import Conflict, InvalidInput, NotFound

NAME_PATTERN = re.compile(TIER_NAME_PATTERN)  # the same slug rule as the events' tier names
MIN_SIDE, MAX_SIDE = 64, 8192
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DEFAULT_TIER_LOCK_KEY = 5_921_347_002  # any fixed number; see _lock_default_changes

# Output (encoding) settings a tier may carry, with the rule each value must satisfy.
# x264's and x265's presets, fastest first.
ENCODER_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
# H.264 and H.265 go in MP4 (review and web copies, shaped by crf, preset and pixel format); the
# masters ProRes and DNxHR go in QuickTime .mov, and their profile alone sets quality and pixel format.
MP4_CODECS = ("h264", "h265")
MASTER_PROFILES = {
    "prores": ("proxy", "lt", "standard", "hq", "4444"),
    "dnxhr": ("lb", "sq", "hq", "hqx", "444"),
}
CODEC_NAMES = (*MP4_CODECS, *MASTER_PROFILES)
DEFAULT_CODEC = "h264"
DEFAULT_MASTER_PROFILE = "hq"  # both masters have one; the usual finishing master
MP4_ONLY_SETTINGS = ("crf", "pixel_format", "preset")
TIMECODE_PATTERN = re.compile(r"([0-9]{2}):([0-9]{2}):([0-9]{2}):([0-9]{2,3})")  # frames: 3 digits above 100 fps
QUALITY_SETTINGS = {
    "codec": (f"one of {', '.join(CODEC_NAMES)}", lambda v: v in CODEC_NAMES),
    "crf": ("an integer from 0 (lossless) to 51", lambda v: type(v) is int and 0 <= v <= 51),
    "fps": ("an integer from 1 to 120", lambda v: type(v) is int and 1 <= v <= 120),
    "pixel_format": ("one of yuv420p, yuv444p", lambda v: v in ("yuv420p", "yuv444p")),
    # The encoder's speed for the same quality (crf): faster makes larger files.
    "preset": (f"one of {', '.join(ENCODER_PRESETS)}", lambda v: v in ENCODER_PRESETS),
    # Which flavour of a master codec; checked against the codec below.
    "profile": ("a profile name such as \"hq\"", lambda v: isinstance(v, str)),
    # The start timecode written into a master (non-drop-frame: fps are whole numbers).
    "timecode": ('HH:MM:SS:FF (non-drop-frame), e.g. "01:00:00:00"',
                 lambda v: isinstance(v, str) and _timecode_parts(v) is not None),
}
# DNxHR limits of the dnxhd encoder in the ffmpeg bundled with imageio-ffmpeg, measured: it refuses
# frames under 256×120 ("Input dimensions too small"), and cannot open for frames of 512×512
# macroblocks of 16 pixels (both sides over 8176: 8184 or 8192). ProRes has no limit from 8×8 to 8192×8192.
DNXHR_MIN_WIDTH, DNXHR_MIN_HEIGHT = 256, 120
DNXHR_MAX_BOTH_SIDES = 8176
# Settings people reach for that shape the frames; they belong to a job's recipe, which must be
# identical at every tier, so a tier may not carry them.
SAMPLER_SETTINGS = {
    "steps", "num_inference_steps", "guidance", "guidance_scale", "cfg", "cfg_scale", "seed",
    "scheduler", "sampler", "strength", "frames", "num_frames", "eta", "model", "prompt",
}

TIER_COLUMNS = (
    "id, name, width, height, quality_settings, speed_factor, is_default, is_deliverable, "
    "is_builtin, sort_order, created_at, updated_at"
)


def tier_label(name: str) -> str:
    """Human name for badges and messages: "Draft", "Ultra-Hd" for a custom `ultra-hd`."""
    return "-".join(part.capitalize() for part in name.split("-"))


@dataclass(frozen=True)
class Tier:
    id: int
    name: str
    width: int
    height: int
    quality_settings: dict | None
    speed_factor: float
    is_default: bool
    is_deliverable: bool
    is_builtin: bool
    sort_order: int
    created_at: datetime
    updated_at: datetime

    @property
    def label(self) -> str:
        return tier_label(self.name)

    def size_for(self, aspect: AspectRatio) -> tuple[int, int]:
        """Generation size of a scene of `aspect` at this tier."""
        return generation_size(aspect, self.width, self.height)

    def to_json(self) -> dict:
        """The documented JSON form of a tier (`tierflow tiers list --json`)."""
        return {
            "id": self.id,
            "name": self.name,
            "label": self.label,
            "width": self.width,
            "height": self.height,
            "speed_factor": self.speed_factor,
            "sort_order": self.sort_order,
            "is_default": self.is_default,
            "is_deliverable": self.is_deliverable,
            "is_builtin": self.is_builtin,
            "quality_settings": self.quality_settings,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


# ---------------------------------------------------------------------------------------------
# Validation: every problem with the input, in one line, before anything touches the database.


def _name_problem(name: Any) -> str | None:
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or len(name) > NAME_MAX_LENGTH:
        return (
            f"tier name {name!r} must be a lowercase slug of at most {NAME_MAX_LENGTH} characters "
            "(letters, digits and single hyphens, starting with a letter, e.g. 'ultra-hd')"
        )
    return None


def _side_problem(label: str, value: Any) -> str | None:
    if type(value) is not int or not MIN_SIDE <= value <= MAX_SIDE or value % SIZE_STEP:
        return f"{label} {value!r} must be a multiple of {SIZE_STEP} between {MIN_SIDE} and {MAX_SIDE}"
    return None


def _speed_factor_problem(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"speed factor {value!r} must be a finite number greater than 0"
    return None


def _sort_order_problem(value: Any) -> str | None:
    if type(value) is not int or not INT32_MIN <= value <= INT32_MAX:
        return f"sort order {value!r} must be a whole number between {INT32_MIN} and {INT32_MAX}"
    return None


def quality_settings_problems(settings: Any) -> list[str]:
    """What is wrong with a quality_settings value (None is valid: encoder defaults): each setting
    on its own, then how they go together (a profile of the codec, MP4-only settings, timecode)."""
    if settings is None:
        return []
    if not isinstance(settings, dict):
        return [f"quality settings must be a JSON object such as {{\"crf\": 18}}, not {json.dumps(settings)}"]
    problems = []
    for key, value in settings.items():
        if key in SAMPLER_SETTINGS:
            problems.append(
                f"quality setting {key!r} is a sampler setting; it belongs to the job's recipe, which is "
                f"identical at every tier (a tier holds output settings only: {', '.join(QUALITY_SETTINGS)})"
            )
        elif key not in QUALITY_SETTINGS:
            problems.append(f"unknown quality setting {key!r} (known: {', '.join(QUALITY_SETTINGS)})")
        elif not QUALITY_SETTINGS[key][1](value):
            problems.append(f"quality setting {key!r} is {json.dumps(value)} but must be {QUALITY_SETTINGS[key][0]}")
    if not problems:
        problems += _combination_problems(settings)
    return problems


def _combination_problems(settings: dict) -> list[str]:
    """Settings each valid alone that do not go together."""
    codec = settings.get("codec", DEFAULT_CODEC)
    problems = []
    if "profile" in settings:
        profile = settings["profile"]
        if codec in MP4_CODECS:
            masters = " and ".join(f"{name} ({', '.join(names)})" for name, names in MASTER_PROFILES.items())
            problems.append(f"quality setting 'profile' is {json.dumps(profile)} but codec {codec} has no profiles: "
                            f"profiles are for {masters}")
        elif profile not in MASTER_PROFILES[codec]:
            other = [name for name, names in MASTER_PROFILES.items() if name != codec and profile in names]
            problems.append(f"quality setting 'profile' is {json.dumps(profile)} but must be one of "
                            f"{', '.join(MASTER_PROFILES[codec])} for codec {codec}"
                            + (f" ({profile} is a {other[0]} profile)" if other else ""))
    if codec in MASTER_PROFILES:
        for key in MP4_ONLY_SETTINGS:
            if key in settings:
                problems.append(f"quality setting {key!r} applies to {' and '.join(MP4_CODECS)} only; a {codec} "
                                f"master's quality and pixel format follow its profile")
    if "timecode" in settings:
        if codec not in MASTER_PROFILES:
            problems.append(f"quality setting 'timecode' is for the .mov masters "
                            f"(codec {' or '.join(MASTER_PROFILES)}), not {codec}")
        elif "fps" not in settings:
            problems.append("quality setting 'timecode' needs 'fps' as well: a timecode counts frames at a fixed rate")
        else:
            problems.extend(filter(None, [timecode_problem(settings["timecode"], settings["fps"])]))
    return problems


def _timecode_parts(text: str) -> tuple[int, int, int, int] | None:
    match = TIMECODE_PATTERN.fullmatch(text)
    if match is None:
        return None
    hours, minutes, seconds, frames = map(int, match.groups())
    return (hours, minutes, seconds, frames) if hours < 24 and minutes < 60 and seconds < 60 else None


def timecode_problem(timecode: str, fps: int) -> str | None:
    """What is wrong with a start timecode at `fps` (ffmpeg itself would wrap 00:00:00:09 at 8 fps
    silently to 00:00:01:01)."""
    parts = _timecode_parts(timecode) if isinstance(timecode, str) else None
    if parts is None:
        return f"quality setting 'timecode' is {json.dumps(timecode)} but must be {QUALITY_SETTINGS['timecode'][0]}"
    if parts[3] >= fps:
        return (f"quality setting 'timecode' is {json.dumps(timecode)} but its frames field ({parts[3]:02d}) must be "
                f"below the frame rate ({fps} fps)")
    return None


def normal_timecode(timecode: str) -> str:
    """HH:MM:SS:FF with the frames field in at least two digits (ffmpeg prints "01:00:00:4" at 8 fps)."""
    hours, minutes, seconds, frames = (int(part) for part in re.split("[:;]", timecode))
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}:{frames:02d}"


@dataclass(frozen=True)
class OutputFormat:
    """What a tier's quality settings make of a segment: codec, profile, container and the start
    timecode (None: none written), every default applied. The worker names and types the file by
    it; delivery checks each file against it."""

    codec: str
    profile: str | None
    timecode: str | None

    @property
    def is_master(self) -> bool:
        return self.codec in MASTER_PROFILES

    @property
    def extension(self) -> str:
        return "mov" if self.is_master else "mp4"

    @property
    def content_type(self) -> str:
        return "video/quicktime" if self.is_master else "video/mp4"

    @property
    def label(self) -> str:
        """How editors name it: "ProRes 422 HQ", "DNxHR HQX", "H.264"."""
        known = FORMAT_LABELS.get((self.codec, self.profile))
        return known or " ".join([CODEC_LABELS.get(self.codec, self.codec), *([self.profile] if self.profile else [])])


CODEC_LABELS = {"h264": "H.264", "h265": "H.265", "prores": "ProRes", "dnxhr": "DNxHR"}
FORMAT_LABELS = {
    ("prores", "proxy"): "ProRes 422 Proxy", ("prores", "lt"): "ProRes 422 LT", ("prores", "standard"): "ProRes 422",
    ("prores", "hq"): "ProRes 422 HQ", ("prores", "4444"): "ProRes 4444",
    **{("dnxhr", profile): f"DNxHR {profile.upper()}" for profile in MASTER_PROFILES["dnxhr"]},
}


def output_format(settings: dict | None) -> OutputFormat:
    """The OutputFormat of valid quality settings (masters start at 00:00:00:00 unless told)."""
    settings = settings or {}
    codec = settings.get("codec", DEFAULT_CODEC)
    if codec not in MASTER_PROFILES:
        return OutputFormat(codec, None, None)
    return OutputFormat(codec, settings.get("profile", DEFAULT_MASTER_PROFILE), settings.get("timecode", "00:00:00:00"))


def output_size_problem(settings: dict | None, width: int, height: int, what: str = "the frame size") -> str | None:
    """Why frames of width×height cannot be encoded with these quality settings (None: they can).
    DNxHR has limits and ProRes, H.264 and H.265 none within a tier's; `what` names the size."""
    codec = (settings or {}).get("codec", DEFAULT_CODEC)
    if codec != "dnxhr":
        return None
    if width < DNXHR_MIN_WIDTH or height < DNXHR_MIN_HEIGHT:
        return (f"codec dnxhr needs frames of at least {DNXHR_MIN_WIDTH}×{DNXHR_MIN_HEIGHT}, and {what} is "
                f"{width}×{height}: make it larger or use codec prores")
    if width > DNXHR_MAX_BOTH_SIDES and height > DNXHR_MAX_BOTH_SIDES:
        return (f"codec dnxhr cannot encode frames with both sides over {DNXHR_MAX_BOTH_SIDES}, and {what} is "
                f"{width}×{height}: make it smaller or use codec prores")
    return None


def parse_quality_settings(text: str) -> dict | None:
    """Parse the CLI's --quality-settings JSON ('null' clears them)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"quality settings are not valid JSON ({exc.msg} at character {exc.pos}): {text}") from None


def _raise_if(problems: list[str | None]) -> None:
    found = [p for p in problems if p]
    if found:
        raise InvalidInput("invalid tier: " + "; ".join(found))


# ---------------------------------------------------------------------------------------------
# Reads


def _tier(row: dict) -> Tier:
    return Tier(**row)


def list_tiers(conn: psycopg.Connection) -> list[Tier]:
    """All tiers, lowest `sort_order` first."""
    rows = conn.execute(f"SELECT {TIER_COLUMNS} FROM resolution_tiers ORDER BY sort_order, id").fetchall()
    return [_tier(row) for row in rows]


def get_tier(conn: psycopg.Connection, name: str, *, for_update: bool = False) -> Tier:
    """The tier called `name`; NotFound lists the tiers that exist."""
    lock = " FOR UPDATE" if for_update else ""
    row = conn.execute(f"SELECT {TIER_COLUMNS} FROM resolution_tiers WHERE name = %s{lock}", [name]).fetchone()
    if row is None:
        known = ", ".join(t.name for t in list_tiers(conn))
        raise NotFound(f"unknown tier {name!r} (known tiers: {known})")
    return _tier(row)


def default_tier(conn: psycopg.Connection) -> Tier:
    """The tier a job gets when it names none."""
    row = conn.execute(f"SELECT {TIER_COLUMNS} FROM resolution_tiers WHERE is_default").fetchone()
    return _tier(row)


# ---------------------------------------------------------------------------------------------
# Writes


def _check_deliverable_ranks(conn: psycopg.Connection) -> None:
    """Deliverable means Production or above (the database's `deliverable_tier`): after a write,
    in its transaction, no tier may be deliverable below `production` (nor `draft`, `preview`)."""
    offending = conn.execute(
        "SELECT t.name FROM resolution_tiers t WHERE t.is_deliverable AND NOT deliverable_tier(t) ORDER BY t.sort_order"
    ).fetchall()
    if offending:
        production = conn.execute("SELECT sort_order FROM resolution_tiers WHERE name = 'production'").fetchone()
        names = ", ".join(repr(r["name"]) for r in offending)
        raise Conflict(f"tier {names} cannot be deliverable: only production and tiers ranked at or above it "
                       f"(sort_order {production['sort_order']} or more) are delivered; draft and preview never")


def _translate_database_error(exc: psycopg.Error, name: str) -> Exception:
    """Turn a constraint the database enforced into the same error the checks above give."""
    constraint = getattr(exc.diag, "constraint_name", None) or ""
    if isinstance(exc, pg_errors.UniqueViolation) and constraint == "resolution_tiers_name_key":
        return Conflict(f"a tier named {name!r} already exists")
    if isinstance(exc, pg_errors.ForeignKeyViolation):
        return Conflict(f"tier {name!r} is in use (by scenes or a project's auto-upscale) and cannot be deleted")
    if constraint in ("resolution_tiers_require_default", "resolution_tiers_one_default"):
        return Conflict("there must be exactly one default tier; make another tier default instead")
    if isinstance(exc, (pg_errors.RestrictViolation, pg_errors.CheckViolation)):
        return Conflict(f"tier {name!r}: {exc.diag.message_primary}")
    return exc


def _lock_default_changes(conn: psycopg.Connection) -> None:
    """Taken first by a transaction that moves the default, before any row lock (no deadlock).

    Concurrent default changes queue here; each then sees the default the one before it set
    (READ COMMITTED takes a new snapshot per statement) instead of failing on the unique index.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [DEFAULT_TIER_LOCK_KEY])


def _unset_other_defaults(conn: psycopg.Connection, keep_name: str) -> None:
    # The partial unique index allows one default at a time, so the old one goes first; the
    # deferred "at least one" check runs at commit, after the new one is set.
    conn.execute("UPDATE resolution_tiers SET is_default = false WHERE is_default AND name <> %s", [keep_name])


def create_tier(
    conn: psycopg.Connection,
    name: str,
    width: int,
    height: int,
    *,
    speed_factor: float = 1.0,
    sort_order: int | None = None,
    is_default: bool = False,
    is_deliverable: bool = False,
    quality_settings: dict | None = None,
) -> Tier:
    """Create a custom tier. Without `sort_order` it is placed above every existing tier.
    Making it the default unsets the old default in the same transaction."""
    _raise_if([
        _name_problem(name),
        _side_problem("width", width),
        _side_problem("height", height),
        _speed_factor_problem(speed_factor),
        _sort_order_problem(sort_order) if sort_order is not None else None,
        *quality_settings_problems(quality_settings),
    ])
    _raise_if([output_size_problem(quality_settings, width, height, "the tier's box")])
    try:
        with conn.transaction():
            if conn.execute("SELECT 1 FROM resolution_tiers WHERE name = %s", [name]).fetchone():
                raise Conflict(f"a tier named {name!r} already exists")
            if sort_order is None:
                sort_order = conn.execute(
                    "SELECT COALESCE(MAX(sort_order), 0) + 1 AS next FROM resolution_tiers"
                ).fetchone()["next"]
            if is_default:
                _lock_default_changes(conn)
                _unset_other_defaults(conn, name)
            row = conn.execute(
                f"""INSERT INTO resolution_tiers
                        (name, width, height, speed_factor, sort_order, is_default, is_deliverable, quality_settings)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
                    RETURNING {TIER_COLUMNS}""",
                [name, width, height, float(speed_factor), sort_order, is_default, is_deliverable,
                 Jsonb(quality_settings) if quality_settings is not None else None],
            ).fetchone()
            _check_deliverable_ranks(conn)
    except psycopg.Error as exc:
        raise _translate_database_error(exc, name) from exc
    return _tier(row)


_UNSET: Any = object()


def update_tier(
    conn: psycopg.Connection,
    name: str,
    *,
    new_name: str | None = None,
    width: int | None = None,
    height: int | None = None,
    speed_factor: float | None = None,
    sort_order: int | None = None,
    is_default: bool | None = None,
    is_deliverable: bool | None = None,
    quality_settings: dict | None = _UNSET,
) -> Tier:
    """Change the given fields of a tier; None (or unset) leaves a field as it is.
    `quality_settings=None` clears them."""
    changes: dict[str, Any] = {}
    problems: list[str | None] = []
    for column, value, check in (
        ("name", new_name, _name_problem),
        ("width", width, lambda v: _side_problem("width", v)),
        ("height", height, lambda v: _side_problem("height", v)),
        ("speed_factor", speed_factor, _speed_factor_problem),
        ("sort_order", sort_order, _sort_order_problem),
        ("is_deliverable", is_deliverable, lambda v: None),
    ):
        if value is not None:
            problems.append(check(value))
            changes[column] = value
    if quality_settings is not _UNSET:
        problems.extend(quality_settings_problems(quality_settings))
        changes["quality_settings"] = (
            Jsonb(quality_settings) if quality_settings is not None else None
        )
    _raise_if(problems)
    if not changes and is_default is None:
        raise InvalidInput(f"nothing to update for tier {name!r}: give at least one field to change")

    try:
        with conn.transaction():
            if is_default:
                _lock_default_changes(conn)
            tier = get_tier(conn, name, for_update=True)
            if {"width", "height", "quality_settings"} & set(changes):
                # The box and the codec are checked together, whichever of them changes.
                settings = tier.quality_settings if quality_settings is _UNSET else quality_settings
                _raise_if([output_size_problem(settings, width or tier.width, height or tier.height,
                                               "the tier's box")])
            if new_name is not None and new_name != name:
                if tier.is_builtin:
                    raise Conflict(f"built-in tier {name!r} cannot be renamed; create a new tier instead")
                if conn.execute("SELECT 1 FROM resolution_tiers WHERE name = %s", [new_name]).fetchone():
                    raise Conflict(f"a tier named {new_name!r} already exists")
            if is_default is False and tier.is_default:
                raise Conflict(
                    f"tier {name!r} is the default tier and there must always be one; "
                    "make another tier default instead (tierflow tiers update NAME --default)"
                )
            if is_default:
                _unset_other_defaults(conn, name)
                changes["is_default"] = True
            if changes:
                assignments = ", ".join(f"{column} = %s" for column in changes)
                conn.execute(
                    f"UPDATE resolution_tiers SET {assignments} WHERE id = %s", [*changes.values(), tier.id]
                )
            updated = conn.execute(f"SELECT {TIER_COLUMNS} FROM resolution_tiers WHERE id = %s", [tier.id]).fetchone()
            _check_deliverable_ranks(conn)
    except psycopg.Error as exc:
        raise _translate_database_error(exc, new_name or name) from exc
    return _tier(updated)


def delete_tier(conn: psycopg.Connection, name: str) -> Tier:
    """Delete a custom tier that no scene uses and that is not the default; returns it."""
    try:
        with conn.transaction():
            # FOR UPDATE: a scene being inserted with this tier waits for us, and then fails on the
            # foreign key, so "not in use" stays true until the delete commits.
            tier = get_tier(conn, name, for_update=True)
            if tier.is_builtin:
                raise Conflict(f"built-in tier {name!r} cannot be deleted")
            if tier.is_default:
                raise Conflict(
                    f"tier {name!r} is the default tier; make another tier default first "
                    "(tierflow tiers update NAME --default)"
                )
            in_use = conn.execute(
                "SELECT count(*) AS n FROM scenes WHERE resolution_tier_id = %s", [tier.id]
            ).fetchone()["n"]
            if in_use:
                raise Conflict(
                    f"tier {name!r} is used by {in_use} scene(s) and cannot be deleted; "
                    "delete those scenes or keep the tier"
                )
            policies = [r["name"] for r in conn.execute(
                "SELECT name FROM projects WHERE auto_upscale_to_tier_id = %s ORDER BY name", [tier.id])]
            if policies:
                raise Conflict(
                    f"tier {name!r} is the auto-upscale target of project(s) {', '.join(policies)}; "
                    "change their auto_upscale_to first"
                )
            conn.execute("DELETE FROM resolution_tiers WHERE id = %s", [tier.id])
    except psycopg.Error as exc:
        raise _translate_database_error(exc, name) from exc
    return tier
