"""The HTTP API and the web UI (`tierflow serve`): a thin entrypoint over the same services as the CLI.

Every write goes through the services in `shared` (and so through the outbox and its events);
nothing here touches a table the CLI would not. Errors are RFC 9457 problem documents.
Access: an API key (header `X-API-Key`, or the cookie the web UI's sign-in sets) with a role;
viewers read, artists also submit, approve, upscale and deliver, admins also change tiers.
"""

import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from functions.http import (
    dead_letters,
    deliveries,
    health,
    live,
    models,
    projects,
    scenes,
    session,
    tiers,
    webhooks,
    workers,
)
from functions.http.body_limit import BodyLimit
from functions.http.problems import ERRORS, install_problem_handlers

WEB_DIR = Path(__file__).parent / "web"


class StreamCount:
    """Live streams open per API key, so one key cannot hold every thread and connection."""

    def __init__(self):
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def open(self, key_name: str, most: int) -> bool:
        with self._lock:
            if self._open.get(key_name, 0) >= most:
                return False
            self._open[key_name] = self._open.get(key_name, 0) + 1
            return True

    def close(self, key_name: str) -> None:
        with self._lock:
            self._open[key_name] -= 1


def create_app(deps) -> FastAPI:
    """The API and UI over `deps` (its database, S3 and settings)."""
    app = FastAPI(
        title="Tierflow", version="1", description=__doc__,
        responses={k: v for k, v in ERRORS.items() if k in (401, 403, 413, 422, 503)},
    )
    app.state.deps = deps  # what the routes' dependencies read (functions.http.dependencies.get_deps)
    app.state.stopping = threading.Event()  # set when the server shuts down: live streams end
    app.state.loops = []  # the Supervised loops this server runs, for /readyz
    app.state.streams = StreamCount()  # live streams open, per key
    # The one LISTEN the live streams share (`serve` swaps in its own stopping event).
    app.state.hub = live.EventHub(deps, lambda: app.state.stopping.is_set())
    install_problem_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=deps.settings.max_body_bytes)
    # In this order, so the OpenAPI document lists the paths as it always has.
    for module in (session, tiers, models, scenes, live, deliveries, projects, webhooks, workers, dead_letters, health):
        app.include_router(module.router)

    @app.get("/", include_in_schema=False)
    def web_ui() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    return app
