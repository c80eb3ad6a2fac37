"""Driving the runtime until something holds: what the CLI's `--wait`, the demo and the tests share.

On the embedded bus the calling process runs the handlers (and, through them, the local
workers) meanwhile; on Kafka the consumers run elsewhere and this only watches the database.
Nothing here knows the handlers: callers pass the deployed functions in.
"""

import time
from collections.abc import Callable, Sequence

import psycopg

from shared.domain import lifecycle, scenes, upscale
from shared.runtime import bus
from shared.runtime.consumer import Function


def rerun_orphaned_jobs(deps) -> list[int]:
    """Run again, here, the local generation jobs a process that is gone left unfinished;
    returns their ids."""
    if deps.settings.dispatcher != "local":
        return []
    from shared.adapters.dispatch import redispatch_orphans

    return redispatch_orphans(deps)


def run_until(deps, functions: Sequence[Function], done: Callable[[psycopg.Connection], bool],
              on_tick: Callable[[psycopg.Connection], None] | None = None, settle: bool = True) -> None:
    """Run (embedded bus) or watch (Kafka) until `done(conn)` holds (and, with `settle`, nothing
    is in flight any more)."""
    if deps.settings.embedded_bus:
        rerun_orphaned_jobs(deps)  # e.g. an interrupted command's
    with deps.connect() as conn:
        while True:
            busy = bus.step(conn, deps, functions, functions) if deps.settings.embedded_bus else False
            if on_tick:
                on_tick(conn)
            workers_busy = deps.settings.dispatcher == "local" and deps.dispatcher.busy
            if (not settle or (not busy and not workers_busy)) and done(conn):
                return
            if not busy:
                time.sleep(0.2)


def follow_scene(deps, functions: Sequence[Function], scene_id: int,
                 on_change: Callable[[dict], None] | None = None) -> dict:
    """Run until the scene is generated or failed; `on_change(scene)` sees it at every tick.
    Returns the scene's JSON form."""
    state = {}

    def tick(conn) -> None:
        state["scene"] = scenes.get_scene(conn, scene_id)
        if on_change:
            on_change(state["scene"])

    run_until(deps, functions, lambda conn: state["scene"]["status"] in lifecycle.SETTLED, tick)
    return state["scene"]


def approval_settled(conn: psycopg.Connection, scene_id: int, event_id: str) -> bool:
    """The approval event was applied and, where the project upscales automatically, the
    target scene exists."""
    applied = conn.execute("SELECT 1 FROM processed_events WHERE event_id = %s", [event_id]).fetchone()
    if not applied:
        return False
    expects_target = upscale.auto_upscale_request(scenes.scene_row(conn, scene_id)) is not None
    return not expects_target or upscale_target_of(conn, scene_id) is not None


def delivery_decided(conn: psycopg.Connection, delivery_id: int) -> bool:
    """The delivery was completed or rejected."""
    return conn.execute("SELECT status FROM deliveries WHERE id = %s", [delivery_id]).fetchone()["status"] != "requested"


def upscale_target_of(conn: psycopg.Connection, scene_id: int) -> int | None:
    """The newest scene re-generated from `scene_id`, if any."""
    row = conn.execute("SELECT id FROM scenes WHERE upscaled_from_scene_id = %s ORDER BY id DESC LIMIT 1",
                       [scene_id]).fetchone()
    return row["id"] if row else None
