"""/healthz and /readyz: what a load balancer, systemd or Kubernetes asks before sending work.

No key is needed (probes have none), and the answers name what is wrong without its details.
"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from functions.http.dependencies import Deps
from shared.runtime.health import not_ready

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: `reasons` says why"}})
def readyz(request: Request, deps: Deps) -> JSONResponse:
    """Ready when the database answers, every loop this server runs (the embedded bus, the
    sweeper, the event pruning) completed a cycle recently and is not in an outage, and its local
    workers run (shared.runtime.health)."""
    reasons = not_ready(deps, request.app.state.loops)
    return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)
