"""Driving the runtime until something holds: what the CLI's `--wait`, the demo and the tests share.

On the embedded bus the calling process runs the handlers (and, through them, the local
workers) meanwhile; on Kafka the consumers run elsewhere and this only watches the database.
Nothing here knows the handlers: callers pass the deployed functions in.
"""

import time
from collections.abc import Callable, Sequence

import psycopg

from shared.domain import lifecycle, scenes, upscale
from shared.errors import InvalidInput, ServiceUnavailable, TierflowError
from shared.runtime import bus, outbox
from shared.runtime.consumer import Function
from shared.runtime.supervise import Supervised, wait_unless_stopped


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


def lost_jobs_line(job_ids: list[int]) -> str:
    """What a sweep that failed these jobs says."""
    return (f"generation jobs {', '.join(map(str, job_ids))} lost their worker (lease expired); "
            "their next attempts are queued")


def sweep_period(settings) -> float:
    """How often sweepers look: a third of a lease, at most every 10 s."""
    return max(0.2, min(settings.job_lease_seconds / 3, 10.0))


def redrive_deliveries(deps) -> dict[str, list[int]]:
    """Request again the deliveries left undecided for TIERFLOW_DELIVERY_REDRIVE_SECONDS
    (shared.domain.delivery.redrive_stuck)."""
    from shared.domain.delivery import redrive_stuck

    with deps.uow() as uow:
        return redrive_stuck(uow.conn, uow.emit, deps.settings.delivery_redrive_seconds)


def redrive_lines(done: dict[str, list[int]], settings) -> list[str]:
    """What a re-drive says."""
    lines = []
    if done["redriven"]:
        lines.append(f"deliveries {', '.join(map(str, done['redriven']))} were undecided after "
                     f"{settings.delivery_redrive_seconds:g} s: requested again")
    if done["given_up"]:
        lines.append(f"deliveries {', '.join(map(str, done['given_up']))} are still undecided after every re-drive: "
                     "their requests are in the dead letters (tierflow events dlq, then --replay after a fix)")
    return lines


def sweep_until(deps, should_stop: Callable[[], bool], supervised: Supervised) -> None:
    """The sweeper of `serve`, `consume` and `relay` (workers sweep leases too): every
    `sweep_period` it fails the attempts of lost workers and re-drives undecided deliveries,
    through database outages (logged once, at their start and their end)."""
    period = sweep_period(deps.settings)

    def loop() -> None:
        while not should_stop():
            swept = sweep_lost_jobs(deps)
            redriven = redrive_deliveries(deps)
            supervised.cycle()
            if swept:
                supervised.log(lost_jobs_line(swept))
            for line in redrive_lines(redriven, deps.settings):
                supervised.log(line)
            wait_unless_stopped(should_stop, period)

    supervised.run(loop, should_stop)


WEBHOOK_POLL_SECONDS = 1.0


def send_webhooks_until(deps, should_stop: Callable[[], bool], supervised: Supervised) -> None:
    """The webhook sender of `serve`, `consume` and `relay` (shared.domain.webhooks): POSTs what
    is due, checking every WEBHOOK_POLL_SECONDS while nothing is; a failed try is said."""
    from shared.domain import webhooks

    def loop() -> None:
        while not should_stop():
            sent = webhooks.send_due(deps)
            supervised.cycle()
            for line in sent["failures"]:
                supervised.log(f"webhooks: {line}")
            if not sent["delivered"] and not sent["failures"]:
                wait_unless_stopped(should_stop, WEBHOOK_POLL_SECONDS)

    supervised.run(loop, should_stop)


PRUNE_EVERY_SECONDS = 3600.0


def prune_until(deps, should_stop: Callable[[], bool], supervised: Supervised) -> None:
    """The event pruning of `serve` and `consume`: at start, then hourly (TIERFLOW_EVENT_RETENTION_DAYS).
    A retention the broker makes unsafe is said once, and nothing is pruned."""
    days = deps.settings.event_retention_days

    def loop() -> None:
        try:
            outbox.check_retention(deps.settings, days)
        except InvalidInput as exc:
            supervised.log(f"{supervised.name}: off: {exc}")
            return
        while not should_stop():
            with deps.connect() as conn:
                deleted = outbox.prune(conn, days)
            supervised.cycle()
            if any(deleted.values()):
                supervised.log(f"{supervised.name}: deleted {deleted['outbox']} sent event(s) and "
                               f"{deleted['processed_events']} applied-event record(s) older than {days:g} days")
            wait_unless_stopped(should_stop, PRUNE_EVERY_SECONDS)

    supervised.run(loop, should_stop)


class TimedOut(TierflowError):
    """What was waited for did not happen in time."""


def run_until(deps, functions: Sequence[Function], done: Callable[[psycopg.Connection], bool],
              on_tick: Callable[[psycopg.Connection], None] | None = None, settle: bool = True,
              timeout: float | None = None) -> None:
    """Run (embedded bus) or watch (Kafka) until `done(conn)` holds (and, with `settle`, no
    event is waiting any more); TimedOut after `timeout` seconds. On the embedded default this
    process also runs the local warm workers while jobs are unfinished; one that cannot be kept
    running is an error here."""
    deadline = None if timeout is None else time.monotonic() + timeout
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
            if deadline is not None and time.monotonic() > deadline:
                raise TimedOut(f"not done after {timeout:g} s")
            if not busy:
                time.sleep(0.2)


def apply_unserved(deps, subscribers: Sequence[Function], functions: Sequence[Function]) -> None:
    """Read your writes on the embedded bus: apply now, in this process, what is pending for those
    of `functions` that no runtime process (`serve`, `consume`) serves, with the events they
    cause; when one serves, it applies them. On Kafka the consumers apply them, elsewhere."""
    if not deps.settings.embedded_bus:
        return
    with deps.connect() as conn:
        here = bus.unserved(conn, functions)
        while here and bus.step(conn, deps, subscribers, here):
            pass


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
    applied = conn.execute("SELECT 1 FROM processed_events WHERE consumer = %s AND event_id = %s",
                           [upscale.APPROVAL_CONSUMER, event_id]).fetchone()
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
