"""/api/projects and /api/usage: a project's settings (automatic upscale tier and cost bounds,
as `tierflow projects set` changes them) and the GPU time spent (`tierflow usage`)."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam
from pydantic import Field, StrictInt

from functions.http.dependencies import Admin, Body, Conn, Deps, Viewer
from functions.http.paging import DEFAULT_LIMIT, AfterName, Limit, listed, page
from functions.http.problems import ERRORS
from shared.domain import projects, usage

router = APIRouter(tags=["projects"])

# A project name as the path names it; the bound keeps a PUT inside what PostgreSQL's unique
# index on the name can hold (a longer name is refused with 422, not a server error).
ProjectName = Annotated[str, PathParam(min_length=1, max_length=200, description="a project's name")]


class ProjectChange(Body):
    """What is not given stays as it is; null clears it (the CLI's `none`)."""

    auto_upscale_to: str | None = Field(
        default=None, description="a tier: approved scenes of the project are re-generated at it automatically")
    max_segments: StrictInt | None = Field(default=None, description="at most this many segments per scene (from 1)")
    max_frame_steps: StrictInt | None = Field(
        default=None, description="at most this many frames × steps per segment (from 1)")
    max_artist_tier: str | None = Field(
        default=None, description="the highest tier an artist's key may submit or upscale to")


@router.get("/api/projects", responses=listed("every project's settings, by name (a page of them)"))
def list_projects(_: Viewer, conn: Conn, request: Request, response: Response,
                  limit: Limit = DEFAULT_LIMIT, after: AfterName = None) -> list[dict]:
    """Each in the `GET /api/projects/{name}` form."""
    found = projects.list_settings(conn, after=after, limit=limit + 1)
    return page(request, response, found, limit, lambda p: p["project"])


@router.get("/api/projects/{name}", responses={404: ERRORS[404]})
def show_project(name: ProjectName, _: Viewer, conn: Conn) -> dict:
    """`{"project", "auto_upscale_to", "max_segments", "max_frame_steps", "max_artist_tier"}`
    (the `tierflow projects set NAME --json` form; null: none, unbounded)."""
    return projects.settings(conn, name)


@router.put("/api/projects/{name}", responses={
    404: {**ERRORS[404], "description": "a tier the body names does not exist"}, 422: ERRORS[422]})
def change_project(name: ProjectName, body: ProjectChange, _: Admin, deps: Deps) -> dict:
    """Change the settings the body gives (the project is created when missing), all or, when one
    is refused, none; the answer is the `GET` form as it is now. The same rules and messages as
    `tierflow projects set`."""
    return projects.change(deps, name, body.model_dump(exclude_unset=True))


@router.get("/api/usage", responses={404: {**ERRORS[404], "description": "the `project` does not exist"}})
def show_usage(_: Viewer, conn: Conn,
               project: Annotated[str | None, Query(
                   min_length=1, description="only this project's rows, totals and saving (the fleet stays whole)")]
               = None) -> dict:
    """GPU time per project and tier, totals, each project's realised saving and the fleet's
    utilisation: the `tierflow usage --json` form."""
    if project is not None:
        projects.settings(conn, project)  # a 404 for a project that does not exist, not an empty report
    return usage.device_seconds(conn, project)
