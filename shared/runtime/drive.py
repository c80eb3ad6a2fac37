"""Driving the runtime until something holds: what the CLI's `--wait`, the demo and the tests share.

On the embedded bus the calling process runs the handlers (and, through them, the local
workers) meanwhile; on Kafka the consumers run elsewhere and this only watches the database.
Nothing here knows the handlers: callers pass the deployed functions in.
"""

import time
from collections.abc import Callable, Sequence

import psycopg

from shared.domain import lifecycle, scenes, upscale
from shared.errors import ServiceUnavailable
from shared.runtime import bus
from shared.runtime.consumer import Function


def unfinished_jobs(conn: psycopg.Connection) -> bool:
    """Some generation job waits for a worker or is in one's hands."""
    return conn.execute(
        "SELECT 1 FROM generation_jobs WHERE status IN ('queued', 'running') LIMIT 1").fetchone() is not None


def sweep_lost_jobs(deps) -> list[int]:
    """Fail, now, the attempts whose workers went silent (expired leases) and queue their next
    attempts; returns their job ids."""
    from shared.domain.reports import sweep_expired_leases

    settings = deps.settings
    with deps.uow() as uow:
        return sweep_expired_leases(uow.conn, uow.emit, max_attempts=settings.max_attempts,
                                    retry_backoff_seconds=settings.retry_backoff_seconds,
                                    similarity_threshold=settings.similarity_threshold)


def sweep_leases_until(deps, should_stop: Callable[[], bool], log: Callable[[str], None]) -> None:
    """The lease sweeper of `serve` and `consume` (workers run one too): every third of a lease,
    at most every 10 s. A database outage is logged once, at its start and its end."""
    period = max(0.2, min(deps.settings.job_lease_seconds / 3, 10.0))
    outage = None
    while not should_stop():
        try:
            swept = sweep_lost_jobs(deps)
            if outage:
                log("lease sweeper: database reachable again")
            outage = None
            if swept:
                log(f"generation jobs {', '.join(map(str, swept))} lost their worker (lease expired); "
                    "their next attempts are queued")
        except (psycopg.OperationalError, ServiceUnavailable) as exc:
            if outage is None:
                log(f"lease sweeper: database unreachable ({exc}); retrying")
            outage = str(exc)
        deadline = time.monotonic() + period
        while not should_stop() and time.monotonic() < deadline:
            time.sleep(min(0.2, period))


def run_until(deps, functions: Sequence[Function], done: Callable[[psycopg.Connection], bool],
              on_tick: Callable[[psycopg.Connection], None] | None = None, settle: bool = True) -> None:
    """Run (embedded bus) or watch (Kafka) until `done(conn)` holds (and, with `settle`, no
    event is waiting any more). On the embedded default this process also runs the local warm
    workers while jobs are unfinished; one that cannot be kept running is an error here."""
    local = deps.settings.embedded_bus and deps.settings.dispatcher == "local"
    with deps.connect() as conn:
        if local and unfinished_jobs(conn):  # e.g. an interrupted command's
            deps.dispatcher.ensure_workers(conn)
        while True:
            busy = bus.step(conn, deps, functions, functions) if deps.settings.embedded_bus else False
            if local and deps.dispatcher.failure:
                raise ServiceUnavailable(deps.dispatcher.failure)
            if on_tick:
                on_tick(conn)
            if (not settle or not busy) and done(conn):
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
