"""The HTTP API and the web UI (`tierflow serve`): a thin entrypoint over the same services as the CLI.

Every write goes through the services in `shared` (and so through the outbox and its events);
nothing here touches a table the CLI would not. Errors are RFC 9457 problem documents.
Access: an API key (header `X-API-Key`, or the cookie the web UI's sign-in sets) with a role;
viewers read, artists also submit, approve, upscale and deliver, admins also change tiers.
"""

import json
import logging
import re
import time
from pathlib import Path
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import APIKeyCookie, APIKeyHeader
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from shared import access, delivery, scenes, tiers, upscale
from shared.access import ApiKey
from shared.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable, TierflowError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).parent / "web"
SESSION_COOKIE = "tierflow_api_key"
# A live progress stream ends with its scene, or after this long (the browser reconnects).
STREAM_SECONDS = 600
STREAM_POLL_SECONDS = 0.5

RANGE = re.compile(r"bytes=(\d+-\d*|-\d+)")  # one range; a multi-range request gets the whole file
Id = Annotated[int, PathParam(ge=1, le=2**63 - 1, description="a database id")]
DbInt = Annotated[int, Field(ge=0, le=2**31 - 1)]
SceneIds = Annotated[list[Annotated[int, Field(ge=1, le=2**63 - 1)]],
                     Field(min_length=1, max_length=delivery.MAX_SCENES)]


# ---------------------------------------------------------------------------------------------
# Request bodies (responses are the services' documented JSON forms)


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TierCreate(Body):
    name: str
    width: DbInt
    height: DbInt
    speed_factor: float = 1.0
    sort_order: DbInt | None = None
    is_default: bool = False
    is_deliverable: bool = False
    quality_settings: dict[str, Any] | None = None


class TierChange(Body):
    name: str | None = Field(default=None, description="a new name")
    width: DbInt | None = None
    height: DbInt | None = None
    speed_factor: float | None = None
    sort_order: DbInt | None = None
    is_default: bool | None = None
    is_deliverable: bool | None = None
    quality_settings: dict[str, Any] | None = None


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
    model: str | None = Field(default=None, description="a diffusers model directory or hub id; the configured one when omitted")
    segments: list[Segment] = Field(min_length=1, max_length=100)


class UpscaleRequest(Body):
    target_tier: str = "production"


class DeliveryRequest(Body):
    project: str
    scene_ids: SceneIds


class SessionRequest(Body):
    api_key: str


# ---------------------------------------------------------------------------------------------
# Problems (RFC 9457)


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra):
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def problem_response(status: int, title: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
                        status_code=status, media_type="application/problem+json", headers=headers)


_STATUS_OF = [(InvalidInput, 422, "Invalid input"), (NotFound, 404, "Not found"), (Conflict, 409, "Conflict"),
              (ServiceUnavailable, 503, "Service unavailable"), (TierflowError, 409, "Refused")]

PROBLEM_SCHEMA = {"application/problem+json": {"schema": {
    "type": "object", "required": ["title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "errors": {"type": "array"}}}}}
ERRORS = {status: {"description": text, "content": PROBLEM_SCHEMA} for status, text in [
    (401, "no valid API key"), (403, "the key's role may not do this"), (404, "not found"),
    (409, "refused by a rule"), (422, "invalid input"), (503, "a service is unavailable")]}


def _install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    def on_problem(request: Request, exc: Problem):
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return problem_response(exc.status, exc.title, exc.detail, headers, **exc.extra)

    @app.exception_handler(TierflowError)
    def on_refusal(request: Request, exc: TierflowError):
        status, title = next((s, t) for kind, s, t in _STATUS_OF if isinstance(exc, kind))
        return problem_response(status, title, str(exc))

    @app.exception_handler(psycopg.errors.DataError)
    def on_bad_value(request: Request, exc: psycopg.errors.DataError):
        # Values the schema lets through but PostgreSQL refuses (a NUL character, a number out of range).
        return problem_response(422, "Invalid input", f"PostgreSQL refused a value: {exc.diag.message_primary or exc}")

    @app.exception_handler(RequestValidationError)
    def on_invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem_response(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(HTTPException)
    def on_http(request: Request, exc: HTTPException):
        return problem_response(exc.status_code, str(exc.detail), f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    def on_bug(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "Internal server error", "the server failed; its log has the details")


# ---------------------------------------------------------------------------------------------
# The app


def create_app(deps) -> FastAPI:
    """The API and UI over `deps` (its database, S3 and settings)."""
    app = FastAPI(
        title="Tierflow", version="1", description=__doc__,
        responses={k: v for k, v in ERRORS.items() if k in (401, 403, 422, 503)},
    )
    _install_problem_handlers(app)
    header_key = APIKeyHeader(name="X-API-Key", auto_error=False)
    cookie_key = APIKeyCookie(name=SESSION_COOKIE, auto_error=False)

    def connection():
        with deps.connect() as conn:
            yield conn

    Conn = Annotated[psycopg.Connection, Depends(connection)]

    def role(needed: str):
        def caller(header: Annotated[str | None, Depends(header_key)],
                   cookie: Annotated[str | None, Depends(cookie_key)]) -> ApiKey:
            key = access.authenticate(access.load_keys(deps.settings), header or cookie)
            if key is None:
                raise Problem(401, "Unauthorized", "give a valid API key in the X-API-Key header")
            if not key.may(needed):
                raise Problem(403, "Forbidden", f"the {key.role} role may not do this; it needs {needed}")
            return key

        return caller

    Viewer = Annotated[ApiKey, Depends(role("viewer"))]
    Artist = Annotated[ApiKey, Depends(role("artist"))]
    Admin = Annotated[ApiKey, Depends(role("admin"))]

    def scene_json(scene: dict) -> dict:
        # Where the browser fetches each generated segment's files.
        for segment in scene["segments"]:
            outputs, base = segment["outputs"], f"/api/scenes/{scene['scene_id']}/segments/{segment['position']}"
            segment["urls"] = None if outputs is None else {
                "poster": f"{base}/poster", "video": f"{base}/video",
                "comparison": f"{base}/comparison" if outputs["comparison"] else None}
        return scene

    # -- session (the web UI keeps the key in an HttpOnly cookie, not in JavaScript) ------------

    @app.post("/api/session", tags=["session"], responses={401: ERRORS[401]})
    def sign_in(body: SessionRequest) -> JSONResponse:
        key = access.authenticate(access.load_keys(deps.settings), body.api_key)
        if key is None:
            raise Problem(401, "Unauthorized", "that API key is not valid")
        response = JSONResponse({"name": key.name, "role": key.role})
        response.set_cookie(SESSION_COOKIE, body.api_key, httponly=True, samesite="strict")
        return response

    @app.get("/api/session", tags=["session"])
    def who_am_i(key: Viewer) -> dict:
        return {"name": key.name, "role": key.role}

    @app.delete("/api/session", status_code=204, tags=["session"])
    def sign_out() -> Response:
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE)
        return response

    # -- tiers ----------------------------------------------------------------------------------

    @app.get("/api/resolution-tiers", tags=["tiers"])
    def list_tiers(_: Viewer, conn: Conn) -> list[dict]:
        return [t.to_json() for t in tiers.list_tiers(conn)]

    @app.post("/api/resolution-tiers", status_code=201, tags=["tiers"], responses={409: ERRORS[409]})
    def create_tier(body: TierCreate, _: Admin, conn: Conn) -> dict:
        return tiers.create_tier(conn, **body.model_dump()).to_json()

    @app.patch("/api/resolution-tiers/{name}", tags=["tiers"], responses={404: ERRORS[404], 409: ERRORS[409]})
    def change_tier(name: str, body: TierChange, _: Admin, conn: Conn) -> dict:
        changes = body.model_dump(exclude_unset=True)
        if "name" in changes:
            changes["new_name"] = changes.pop("name")
        return tiers.update_tier(conn, name, **changes).to_json()

    @app.delete("/api/resolution-tiers/{name}", tags=["tiers"], responses={404: ERRORS[404], 409: ERRORS[409]})
    def delete_tier(name: str, _: Admin, conn: Conn) -> dict:
        return {"deleted": tiers.delete_tier(conn, name).name}

    # -- jobs and scenes ------------------------------------------------------------------------

    @app.post("/api/jobs", status_code=202, tags=["scenes"], responses={404: ERRORS[404], 409: ERRORS[409]})
    def submit_job(body: JobRequest, _: Artist, conn: Conn) -> dict:
        segments = [scenes.SegmentSpec(**s.model_dump()) for s in body.segments]
        scene_id = scenes.submit_scene(deps, project=body.project, name=body.scene, aspect=body.aspect,
                                       segments=segments, tier=body.tier, model=body.model)
        return scene_json(scenes.get_scene(conn, scene_id))

    @app.get("/api/scenes", tags=["scenes"])
    def list_scenes(_: Viewer, conn: Conn, project: str | None = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        return [scene_json(s) for s in scenes.list_scenes(conn, project, limit)]

    @app.get("/api/scenes/{scene_id}", tags=["scenes"], responses={404: ERRORS[404]})
    def show_scene(scene_id: Id, _: Viewer, conn: Conn) -> dict:
        return scene_json(scenes.get_scene(conn, scene_id))

    @app.post("/api/scenes/{scene_id}/approve", status_code=202, tags=["scenes"],
              responses={404: ERRORS[404], 409: ERRORS[409]})
    def approve_scene(scene_id: Id, key: Artist) -> dict:
        return {"scene_id": scene_id, "event_id": upscale.approve(deps, scene_id, approved_by=key.name)}

    @app.post("/api/scenes/{scene_id}/upscale", status_code=202, tags=["scenes"],
              responses={404: ERRORS[404], 409: ERRORS[409]})
    def upscale_scene(scene_id: Id, key: Artist, body: UpscaleRequest | None = None) -> dict:
        target_tier = (body or UpscaleRequest()).target_tier
        target_id = upscale.request_upscale(deps, scene_id, target_tier, requested_by=key.name)
        return {"scene_id": target_id, "source_scene_id": scene_id, "target_tier": target_tier}

    @app.get("/api/scenes/{scene_id}/events", tags=["scenes"], responses={
        200: {"description": "server-sent events: `event: scene` with the scene's JSON at each change",
              "content": {"text/event-stream": {}}}, 404: ERRORS[404]})
    def scene_events(scene_id: Id, _: Viewer, conn: Conn) -> StreamingResponse:
        scenes.get_scene(conn, scene_id)  # a 404 now, not an empty stream

        def stream():
            last, deadline = None, time.monotonic() + STREAM_SECONDS
            with deps.connect() as own:
                while time.monotonic() < deadline:
                    scene = scene_json(scenes.get_scene(own, scene_id))
                    state = (scene["status"], scene["progress"], [s["status"] for s in scene["segments"]])
                    if state != last:
                        last = state
                        yield f"event: scene\ndata: {json.dumps(scene)}\n\n"
                    if scene["status"] in scenes.SETTLED:
                        return
                    time.sleep(STREAM_POLL_SECONDS)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/api/scenes/{scene_id}/segments/{position}/{kind}", tags=["scenes"], responses={
        200: {"content": {"image/png": {}, "video/mp4": {}}}, 206: {"description": "the requested byte range"},
        404: ERRORS[404], 416: {"description": "range outside the file", "content": PROBLEM_SCHEMA}})
    def segment_file(scene_id: Id, position: Annotated[int, PathParam(ge=0, le=10_000)], kind: str,
                     _: Viewer, conn: Conn, byte_range: Annotated[str | None, Header(alias="Range")] = None
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

    # -- deliveries -----------------------------------------------------------------------------

    @app.post("/api/deliveries/preflight", tags=["deliveries"])
    def preflight(body: DeliveryRequest, _: Artist, conn: Conn) -> dict:
        """What a delivery of these scenes would be refused for; records nothing."""
        reasons = delivery.delivery_problems(conn, deps.s3, deps.bucket, body.project, body.scene_ids)
        return {"deliverable": not reasons, "summary": delivery.summary(reasons) if reasons else None,
                "reasons": [r.model_dump(mode="json") for r in reasons]}

    @app.post("/api/deliveries", status_code=202, tags=["deliveries"], responses={404: ERRORS[404]})
    def request_delivery(body: DeliveryRequest, key: Artist, conn: Conn) -> dict:
        delivery_id = delivery.request_delivery(deps, body.project, body.scene_ids, requested_by=key.name)
        return delivery.get_delivery(conn, delivery_id)

    @app.get("/api/deliveries/{delivery_id}", tags=["deliveries"], responses={404: ERRORS[404]})
    def show_delivery(delivery_id: Id, _: Viewer, conn: Conn) -> dict:
        return delivery.get_delivery(conn, delivery_id, deps.s3, deps.bucket)

    # -- the web UI -----------------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def web_ui() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app
