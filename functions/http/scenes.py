"""/api/jobs and /api/scenes: submit, list, show, approve and upscale scenes, follow a scene's
progress (server-sent events) and fetch its segments' files (with byte ranges)."""

import asyncio
import json
import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import Response, StreamingResponse
from pydantic import Field

from events.models import NoiseScheme
from functions.http import live
from functions.http.dependencies import Artist, Body, Conn, Deps, Id, Viewer
from functions.http.paging import DEFAULT_LIMIT, Limit, OlderThan, listed, page
from functions.http.problems import ERRORS, PROBLEM_SCHEMA, Problem
from shared.domain import estimate, lifecycle, recipe, scenes, upscale
from shared.errors import NotFound

# A live progress stream ends with its scene, or after this long (the browser reconnects).
STREAM_SECONDS = 600

RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")  # one range; a multi-range request gets the whole file

router = APIRouter(tags=["scenes"])


# Request bodies (responses are the services' documented JSON forms)


class Segment(Body):
    prompt: str
    negative_prompt: str | None = None
    seed: int | None = Field(default=None, description="random when omitted; always stored")
    frames: int | None = None
    fps: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None


class JobRequest(Body):
    project: str
    scene: str = Field(description="the scene's name")
    aspect: str = "16:9"
    tier: str | None = Field(default=None, description="a tier name; the default tier when omitted")
    model: str | None = Field(default=None,
                              description="a model catalogue name (GET /api/models); the configured default if omitted")
    noise: NoiseScheme = Field(default=recipe.DEFAULT_NOISE, description=(
        "initial noise: consistent-v1 keeps the composition across tiers; native is the pipeline's own"))
    segments: list[Segment] = Field(min_length=1, max_length=100)


class UpscaleRequest(Body):
    target_tier: str = "production"


def scene_json(scene: dict) -> dict:
    # Where the browser fetches each generated segment's files.
    for segment in scene["segments"]:
        outputs, base = segment["outputs"], f"/api/scenes/{scene['scene_id']}/segments/{segment['position']}"
        segment["urls"] = None if outputs is None else {
            "poster": f"{base}/poster", "video": f"{base}/video",
            "comparison": f"{base}/comparison" if outputs["comparison"] else None}
    return scene


@router.post("/api/jobs", status_code=202, responses={404: ERRORS[404], 409: ERRORS[409]})
def submit_job(body: JobRequest, key: Artist, conn: Conn, deps: Deps) -> dict:
    segments = [recipe.SegmentSpec(**s.model_dump()) for s in body.segments]
    scene_id = scenes.submit_scene(deps, project=body.project, name=body.scene, aspect=body.aspect,
                                   segments=segments, tier=body.tier, model=body.model, role=key.role,
                                   noise=body.noise)
    return scene_json(scenes.get_scene(conn, scene_id))


@router.get("/api/scenes", responses=listed("scenes, newest first (a page of them)"))
def list_scenes(_: Viewer, conn: Conn, request: Request, response: Response,
                project: Annotated[str | None, Query(description="only this project's scenes")] = None,
                limit: Limit = DEFAULT_LIMIT, after: OlderThan = None) -> list[dict]:
    found = scenes.list_scenes(conn, project, limit + 1, after=after)
    return [scene_json(s) for s in page(request, response, found, limit, lambda s: s["scene_id"])]


@router.get("/api/scenes/{scene_id}", responses={404: ERRORS[404]})
def show_scene(scene_id: Id, _: Viewer, conn: Conn) -> dict:
    return scene_json(scenes.get_scene(conn, scene_id))


@router.post("/api/scenes/{scene_id}/approve", status_code=202, responses={404: ERRORS[404], 409: ERRORS[409]})
def approve_scene(scene_id: Id, key: Artist, deps: Deps) -> dict:
    return {"scene_id": scene_id, "event_id": scenes.approve(deps, scene_id, approved_by=key.name)}


@router.post("/api/scenes/{scene_id}/retry", status_code=202, responses={
    404: ERRORS[404], 409: {**ERRORS[409], "description": "the scene has no failed segment to retry"}})
def retry_scene(scene_id: Id, _: Artist, deps: Deps) -> dict:
    """Queue a new attempt of the scene's failed segments, and only those (`tierflow scenes
    retry`); `job_ids` are the new attempts' jobs, in segment order."""
    return {"scene_id": scene_id, "job_ids": scenes.retry_failed_segments(deps, scene_id)}


@router.post("/api/scenes/{scene_id}/upscale", status_code=202, responses={404: ERRORS[404], 409: ERRORS[409]})
def upscale_scene(scene_id: Id, key: Artist, deps: Deps, body: UpscaleRequest | None = None) -> dict:
    target_tier = (body or UpscaleRequest()).target_tier
    target_id = upscale.request_upscale(deps, scene_id, target_tier, requested_by=key.name, role=key.role)
    return {"scene_id": target_id, "source_scene_id": scene_id, "target_tier": target_tier}


@router.get("/api/scenes/{scene_id}/upscale-estimate", responses={
    404: {**ERRORS[404], "description": "no such scene or tier"},
    409: {**ERRORS[409], "description": "the upscale itself would be refused: the tier is not above the scene's, the "
                                        "scene is not fully generated, a deliverable tier for a scene not approved, "
                                        "its model left the catalogue, or above an artist's tier"}})
def upscale_estimate(scene_id: Id, key: Viewer, conn: Conn,
                     to: Annotated[str, Query(description="the target tier")] = "production") -> dict:
    """What upscaling the scene to `to` would cost, refused as the upscale itself would be; queues
    nothing (`tierflow scenes upscale ID --to TIER --estimate --json`): `estimated_held_seconds`
    and `estimated_render_seconds` (None when there is nothing measured to go on), `basis` (the
    method, `fitted` or `speed_factor`, and the jobs it rests on), `confidence`, `summary`."""
    return estimate.upscale_estimate(conn, scene_id, to, role=key.role)


@router.get("/api/scenes/{scene_id}/events", responses={
    200: {"description": "server-sent events: `event: scene` with the scene's JSON at each change",
          "content": {"text/event-stream": {}}}, 404: ERRORS[404],
    429: {"description": "the key has TIERFLOW_MAX_STREAMS_PER_KEY live streams open", "content": PROBLEM_SCHEMA}})
async def scene_events(scene_id: Id, key: Viewer, conn: Conn, deps: Deps, request: Request) -> StreamingResponse:
    """The scene's JSON at each change of status or progress until it settles: what the shared
    live stream (/api/events) says about the scene, read again when it says something."""
    scenes.get_scene(conn, scene_id)  # a 404 now, not an empty stream
    app = request.app
    streams = app.state.streams
    if not streams.open(key.name, deps.settings.max_streams_per_key):
        raise Problem(429, "Too many streams", f"key {key.name!r} has {deps.settings.max_streams_per_key} live streams "
                      "open (TIERFLOW_MAX_STREAMS_PER_KEY); close one first")
    stream = live.Stream(asyncio.get_running_loop(), scene_id, None)
    try:  # before the first read: nothing that changes after it is missed
        await asyncio.to_thread(app.state.hub.open, stream)
    except BaseException:
        streams.close(key.name)
        raise

    def read() -> dict:
        with deps.connect() as own:
            return scene_json(scenes.get_scene(own, scene_id))

    async def events():
        last, deadline = None, stream.loop.time() + STREAM_SECONDS
        try:
            while True:
                scene = await asyncio.to_thread(read)
                state = (scene["status"], scene["progress"], [s["status"] for s in scene["segments"]])
                if state != last:
                    last = state
                    yield f"event: scene\ndata: {json.dumps(scene)}\n\n"
                if scene["status"] in lifecycle.SETTLED or not await stream.something_happened(
                        app.state.stopping.is_set, deadline):
                    return
        finally:
            app.state.hub.close(stream)
            streams.close(key.name)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/api/scenes/{scene_id}/segments/{position}/{kind}", responses={
    200: {"content": {"image/png": {}, "video/mp4": {}, "video/quicktime": {}}}, 206: {"description": "the requested byte range"},
    404: ERRORS[404], 416: {"description": "range outside the file", "content": PROBLEM_SCHEMA}})
def segment_file(scene_id: Id, position: Annotated[int, PathParam(ge=0, le=10_000)], kind: str,
                 _: Viewer, conn: Conn, deps: Deps, byte_range: Annotated[str | None, Header(alias="Range")] = None
                 ) -> Response:
    kinds = {"poster": ("poster", "image/png"), "video": ("video", "video/mp4"),
             "comparison": ("comparison", "image/png")}
    if kind not in kinds:
        raise NotFound(f"no {kind!r} file; a segment has {', '.join(kinds)}")
    segment = next((s for s in scenes.get_scene(conn, scene_id)["segments"] if s["position"] == position), None)
    if segment is None:
        raise NotFound(f"scene {scene_id} has no segment {position}")
    output, media_type = kinds[kind]
    key = (segment["outputs"] or {}).get(output)
    if key is None:
        raise NotFound(f"segment {position} of scene {scene_id} has no {kind} (yet)")
    if key.endswith(".mov"):  # a ProRes or DNxHR master
        media_type = "video/quicktime"
    # Byte ranges let the browser's video player seek; S3 answers them itself.
    ranged = byte_range is not None and RANGE.fullmatch(byte_range) is not None
    try:
        found = deps.s3.get_object(Bucket=deps.bucket, Key=key, **({"Range": byte_range} if ranged else {}))
    except deps.s3.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] == "InvalidRange":
            raise Problem(416, "Range not satisfiable", f"{byte_range} is outside the file") from None
        raise
    headers = {"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes",
               "Content-Length": str(found["ContentLength"])}
    if ranged:
        headers["Content-Range"] = found["ContentRange"]
    return StreamingResponse(found["Body"].iter_chunks(), status_code=206 if ranged else 200,
                             media_type=media_type, headers=headers)
