"""/healthz and /readyz: what a load balancer, systemd or Kubernetes asks before sending work;
/metrics: what Prometheus scrapes.

No key is needed (probes and scrapers have none); the answers name what is wrong without its
details, and the metrics hold counts and seconds, labelled by function, tier and project.
"""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

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


@router.get("/metrics", responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"},
                                   503: {"description": "prometheus-client is not installed"}})
def metrics(deps: Deps) -> Response:
    """This process's `tierflow_*` metrics and the database's state (shared.runtime.metrics)."""
    from shared.runtime.metrics import exposition

    body, content_type = exposition(deps)
    return Response(body, media_type=content_type)
