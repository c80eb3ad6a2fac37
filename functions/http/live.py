"""/api/events: one live stream of what happens, for the page and for tools.

Each server process keeps one database connection LISTENing on the outbox notification (the
`EventHub`) and fans each newly committed event out in memory to the open streams whose filter
it passes, so a hundred open pages cost one connection and no polling. A stream is server-sent
events, `id:` the event's outbox id, `event:` its type, `data:` the CloudEvent; a browser that
reconnects sends Last-Event-ID and gets what it missed first (as long as the outbox keeps it).

Besides the events, `event: scene` messages say a scene's status as it changes (a new scene, or
one generated, approved, failed: migration 0021 notifies each): `data: {"scene_id", "project",
"status"}`, without an id (a state, not history: a page that reconnects reloads its scenes). A
handler changes the status after the event it applies was committed, so the event alone would
come too early to show it.
"""

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from functions.http.dependencies import Deps, Viewer
from functions.http.problems import ERRORS, PROBLEM_SCHEMA, Problem
from shared.runtime.outbox import OUTBOX_CHANNEL, listen_for_outbox
from shared.runtime.supervise import Supervised

router = APIRouter(tags=["events"])

# A stream ends after this long (the browser reconnects with Last-Event-ID, losing nothing).
STREAM_SECONDS = 600
KEEPALIVE_SECONDS = 15  # a comment line, so proxies keep an idle stream open
QUEUE_SIZE = 2000  # events waiting for one slow stream; past it the stream is closed (it resumes)
REPLAY_LIMIT = 5000  # at most this many missed events are replayed on a reconnect
# An outbox id is taken at insert and becomes visible at commit, so a later id can be seen first:
# each read looks back this many ids for rows that committed late.
LOOKBACK_IDS = 1000
SCENES_CHANNEL = "tierflow_scenes"  # a scene's id, when it is created or its status changes (migration 0021)

_ROWS = """SELECT o.id, o.payload, p.name AS project
           FROM outbox o
           LEFT JOIN scenes s ON o.topic NOT LIKE 'delivery.%%'
                             AND s.id = COALESCE(o.payload -> 'data' ->> 'scene_id',
                                                 o.payload -> 'data' ->> 'source_scene_id')::bigint
           LEFT JOIN projects p ON p.id = s.project_id
           WHERE o.id > %s ORDER BY o.id LIMIT %s"""


def _scene_changes(conn, scene_ids: set[int]) -> list[dict]:
    """`event: scene` messages (no outbox id) with the scenes' status now."""
    rows = conn.execute("SELECT s.id, s.status, p.name AS project FROM scenes s JOIN projects p ON p.id = s.project_id "
                        "WHERE s.id = ANY(%s) ORDER BY s.id", [sorted(scene_ids)]).fetchall()
    return [{"id": None, "project": r["project"], "payload": {
        "type": "scene", "data": {"scene_id": r["id"], "project": r["project"], "status": r["status"]}}} for r in rows]


def _scenes_of(data: dict) -> set[int]:
    return {data[k] for k in ("scene_id", "source_scene_id", "target_scene_id") if isinstance(data.get(k), int)} | set(
        data.get("scene_ids") or [])


class Stream:
    """One open stream: its filter, and the queue the hub puts matching events in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, scene: int | None, project: str | None):
        self.loop, self.scene, self.project = loop, scene, project
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
        self.overflowed = False

    def wants(self, event: dict) -> bool:
        data = event["payload"].get("data") or {}
        if self.scene is not None and self.scene not in _scenes_of(data):
            return False
        return self.project is None or self.project == (data.get("project") or event["project"])

    def offer(self, event: dict) -> None:  # on the event loop's thread
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    async def something_happened(self, should_stop: Callable[[], bool], deadline: float) -> bool:
        """Wait until an event is queued and take every queued one (for a stream that shows state,
        not each event); False when the stream should end first."""
        while not should_stop() and self.loop.time() < deadline:
            try:  # a second at a time: a server shutting down ends its streams at once
                await asyncio.wait_for(self.queue.get(), 1.0)
            except TimeoutError:
                continue
            while not self.queue.empty():
                self.queue.get_nowait()
            self.overflowed = False
            return True
        return False


class EventHub:
    """The one LISTEN of this process, fanned out to the open streams; started by the first."""

    def __init__(self, deps, should_stop: Callable[[], bool]):
        self.deps, self.should_stop = deps, should_stop
        self.streams: set[Stream] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.supervised = Supervised("live events")
        # The highest outbox id fanned out, and the ids fanned out lately (kept across reconnects).
        self.newest, self.seen = 0, OrderedDict()

    def open(self, stream: Stream) -> None:
        """Fan out to `stream` every event committed from now on (blocks for a query on the first)."""
        with self.lock:
            self.streams.add(stream)
            if self.thread is None:
                with self.deps.connect() as conn:  # "now", before the stream is said to be open
                    self.newest = conn.execute("SELECT COALESCE(max(id), 0) AS id FROM outbox").fetchone()["id"]
                self.thread = threading.Thread(target=self.supervised.run, name="live-events", daemon=True,
                                               args=(self._listen, self.should_stop))
                self.thread.start()

    def close(self, stream: Stream) -> None:
        with self.lock:
            self.streams.discard(stream)

    def _listen(self) -> None:
        seen = self.seen
        with self.deps.connect() as conn:
            listen_for_outbox(conn)
            conn.execute(f"LISTEN {SCENES_CHANNEL}")
            if not seen:  # what was committed before the first stream opened is not live
                seen.update((i, None) for i in range(max(0, self.newest - LOOKBACK_IDS), self.newest + 1))
            while not self.should_stop():
                # The first notification (or a second's wait), then whatever else is queued already.
                notes = [*conn.notifies(timeout=1.0, stop_after=1), *conn.notifies(timeout=0.01)]
                self.supervised.cycle()
                changed = {int(n.payload) for n in notes if n.channel == SCENES_CHANNEL and n.payload.isdigit()}
                if changed:
                    self._fan_out(_scene_changes(conn, changed))
                if notes and all(n.channel != OUTBOX_CHANNEL for n in notes):
                    continue
                rows = conn.execute(_ROWS, [max(0, self.newest - LOOKBACK_IDS), REPLAY_LIMIT]).fetchall()
                fresh = [r for r in rows if r["id"] not in seen]
                for row in fresh:
                    seen[row["id"]] = None
                    self.newest = max(self.newest, row["id"])
                while len(seen) > 4 * LOOKBACK_IDS:
                    seen.popitem(last=False)
                if fresh:
                    self._fan_out(fresh)

    def _fan_out(self, rows: list[dict]) -> None:
        with self.lock:
            streams = list(self.streams)
        for stream in streams:
            wanted = [r for r in rows if stream.wants(r)]
            if wanted:
                stream.loop.call_soon_threadsafe(lambda s=stream, w=wanted: [s.offer(r) for r in w])


def _message(row: dict) -> str:
    if row["id"] is None:  # a scene's status
        return f"event: scene\ndata: {json.dumps(row['payload']['data'])}\n\n"
    return f"id: {row['id']}\nevent: {row['payload']['type']}\ndata: {json.dumps(row['payload'])}\n\n"


@router.get("/api/events", responses={
    200: {"description": "server-sent events: `id:` the outbox id, `event:` the CloudEvent type, `data:` the "
                         "CloudEvent; resumable with Last-Event-ID", "content": {"text/event-stream": {}}},
    422: ERRORS[422],
    429: {"description": "the key has TIERFLOW_MAX_STREAMS_PER_KEY live streams open", "content": PROBLEM_SCHEMA}})
async def live_events(key: Viewer, deps: Deps, request: Request,
                      scene: Annotated[int | None, Query(ge=1, description="only events about this scene")] = None,
                      project: Annotated[str | None, Query(min_length=1, description="only this project's")] = None,
                      last_event_id: Annotated[int | None, Header(ge=0, description="resume after this id")] = None,
                      after: Annotated[int | None, Query(ge=0, description="resume after this id (as Last-Event-ID)")]
                      = None) -> StreamingResponse:
    """Every event Tierflow records, as it is committed, filtered by scene or project."""
    app = request.app
    streams = app.state.streams
    if not streams.open(key.name, deps.settings.max_streams_per_key):
        raise Problem(429, "Too many streams", f"key {key.name!r} has {deps.settings.max_streams_per_key} live streams "
                      "open (TIERFLOW_MAX_STREAMS_PER_KEY); close one first")
    stream = Stream(asyncio.get_running_loop(), scene, project)
    try:  # before the replay: what commits meanwhile is queued, and de-duplicated below
        await asyncio.to_thread(app.state.hub.open, stream)
    except BaseException:
        streams.close(key.name)
        raise
    resume = last_event_id if last_event_id is not None else after

    def missed() -> list[dict]:
        with deps.connect() as conn:
            return [r for r in conn.execute(_ROWS, [resume, REPLAY_LIMIT]).fetchall() if stream.wants(r)]

    async def events():
        replayed = set()
        try:
            yield ": live\n\n"  # the headers go out now, so a client sees the stream is open
            if resume is not None:
                for row in await asyncio.to_thread(missed):
                    replayed.add(row["id"])
                    yield _message(row)
            clock = stream.loop.time
            deadline, quiet_since = clock() + STREAM_SECONDS, clock()
            while not app.state.stopping.is_set() and not stream.overflowed and clock() < deadline:
                try:  # a second at a time: a server shutting down ends its streams at once
                    row = await asyncio.wait_for(stream.queue.get(), 1.0)
                except TimeoutError:
                    if clock() - quiet_since > KEEPALIVE_SECONDS:
                        quiet_since = clock()
                        yield ": keepalive\n\n"
                    continue
                if row["id"] not in replayed:  # queued while the replay ran: sent once
                    quiet_since = clock()
                    yield _message(row)
        finally:
            app.state.hub.close(stream)
            streams.close(key.name)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
