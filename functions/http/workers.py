"""/api/workers: the worker fleet, as `tierflow workers list` shows it."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from functions.http.dependencies import Conn, Deps, Viewer
from functions.http.paging import DEFAULT_LIMIT, MAX_NAME_CURSOR, Limit, listed, page
from functions.http.problems import ERRORS
from shared.domain import fleet

router = APIRouter(tags=["workers"])

AfterWorker = Annotated[str | None, Query(
    min_length=1, max_length=MAX_NAME_CURSOR,
    description="a cursor: the worker id of the last worker of the previous page (this page: those started "
                "before it); follow the `Link: rel=\"next\"` header rather than building it")]


@router.get("/api/workers", responses={
    **listed("workers, the last started first (a page of them)"),
    404: {**ERRORS[404], "description": "the `after` worker is not in the register (any more)"}})
def list_workers(_: Viewer, conn: Conn, deps: Deps, request: Request, response: Response,
                 everyone: Annotated[bool, Query(alias="all", description="include stopped and lost workers")] = False,
                 limit: Limit = DEFAULT_LIMIT, after: AfterWorker = None) -> list[dict]:
    """Workers: id, host, pid, device, state (idle, busy, stopping; with `all`, stopped and lost
    too), the job in hand, cached models, jobs done, busy, idle and alive seconds."""
    found = fleet.list_workers(conn, silent_after_seconds=deps.settings.job_lease_seconds, everyone=everyone,
                               limit=limit + 1, after=after)
    return page(request, response, found, limit, lambda w: w["worker_id"])
