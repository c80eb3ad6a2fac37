"""/api/workers: the worker fleet, as `tierflow workers list` shows it."""

from typing import Annotated

from fastapi import APIRouter, Query

from functions.http.dependencies import Conn, Deps, Viewer
from shared.domain import fleet

router = APIRouter(tags=["workers"])


@router.get("/api/workers")
def list_workers(_: Viewer, conn: Conn, deps: Deps,
                 everyone: Annotated[bool, Query(alias="all", description="include stopped and lost workers")] = False
                 ) -> list[dict]:
    """Workers: id, host, pid, device, state (idle, busy, stopping; with `all`, stopped and lost
    too), the job in hand, cached models, jobs done, busy, idle and alive seconds."""
    return fleet.list_workers(conn, silent_after_seconds=deps.settings.job_lease_seconds, everyone=everyone)
