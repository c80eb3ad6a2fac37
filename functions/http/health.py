"""/healthz and /readyz: what a load balancer, systemd or Kubernetes asks before sending work.

No key is needed (probes have none), and the answers name what is wrong without its details.
"""

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from functions.http.dependencies import Deps
from shared.adapters import db
from shared.errors import ServiceUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict:
    """The process is up and answering."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "not ready: `reasons` says why"}})
def readyz(request: Request, deps: Deps) -> JSONResponse:
    """Ready when the database answers, every loop this server runs (the embedded bus, the lease
    sweeper) completed a cycle recently and is not in an outage, and its local workers run."""
    reasons = []
    try:
        with db.connect(deps.database_url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except (psycopg.OperationalError, ServiceUnavailable) as exc:
        reasons.append(f"database: unreachable ({type(exc).__name__})")
    reasons += [problem for loop in request.app.state.loops if (problem := loop.problem())]
    dispatcher = deps.__dict__.get("dispatcher")  # only when this process runs jobs
    if getattr(dispatcher, "failure", None):
        reasons.append("local workers: they keep exiting right after starting (see the worker logs)")
    return JSONResponse({"ready": not reasons, "reasons": reasons}, status_code=503 if reasons else 200)
