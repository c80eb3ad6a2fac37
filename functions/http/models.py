"""/api/models: viewers read the model catalogue, admins add and remove models."""

from fastapi import APIRouter, Request, Response
from pydantic import Field

from functions.http.dependencies import Admin, Body, Conn, Deps, Viewer
from functions.http.paging import DEFAULT_LIMIT, AfterName, Limit, listed, page
from functions.http.problems import ERRORS
from shared.domain import catalogue

router = APIRouter(tags=["models"])


class ModelAdd(Body):
    name: str = Field(description="what jobs call it: letters, digits, '.', '_', '-'")
    source: str = Field(description="a diffusers pipeline directory as workers see it, or an org/name hub id")
    revision: str | None = Field(default=None, description="a hub branch, tag or commit (default: main)")


@router.get("/api/models", responses=listed("the catalogue by name (a page of it)"))
def list_models(_: Viewer, conn: Conn, request: Request, response: Response,
                limit: Limit = DEFAULT_LIMIT, after: AfterName = None) -> list[dict]:
    found = catalogue.rows(conn, after=after, limit=limit + 1)
    return [catalogue.as_json(row) for row in page(request, response, found, limit, lambda r: r["name"])]


@router.get("/api/models/{name}", responses={404: ERRORS[404]})
def show_model(name: str, _: Viewer, conn: Conn) -> dict:
    return catalogue.as_json(catalogue.get(conn, name))


@router.post("/api/models", status_code=201, responses={404: ERRORS[404], 409: ERRORS[409], 503: ERRORS[503]})
def add_model(body: ModelAdd, key: Admin, deps: Deps) -> dict:
    """Pins the source now (a directory: a hash of its files, read on this host; a hub id: the
    commit its revision is); 201 whether it is new or was already there with the same pin."""
    row, _ = deps.add_model(body.name, body.source, body.revision, added_by=key.name)
    return catalogue.as_json(row)


@router.delete("/api/models/{name}", responses={404: ERRORS[404], 409: ERRORS[409]})
def remove_model(name: str, _: Admin, conn: Conn) -> dict:
    return {"removed": catalogue.remove(conn, name)["name"]}
