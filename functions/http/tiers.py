"""/api/resolution-tiers: viewers list the tiers, admins change them."""

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import Field

from functions.http.dependencies import Admin, Body, Conn, DbInt, Viewer
from functions.http.paging import DEFAULT_LIMIT, AfterName, Limit, listed, page
from functions.http.problems import ERRORS
from shared.domain import tiers

router = APIRouter(tags=["tiers"])


# Request bodies (responses are the services' documented JSON forms)


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


@router.get("/api/resolution-tiers", responses={
    **listed("the tiers, lowest rank first (a page of them)"),
    404: {**ERRORS[404], "description": "the `after` tier does not exist (any more)"}})
def list_tiers(_: Viewer, conn: Conn, request: Request, response: Response,
               limit: Limit = DEFAULT_LIMIT, after: AfterName = None) -> list[dict]:
    """`after` is a tier's name: this page has the tiers ranked above it."""
    found = tiers.list_tiers(conn)  # a handful: ranked here rather than in SQL
    if after is not None:
        mark = tiers.get_tier(conn, after)
        found = [t for t in found if (t.sort_order, t.id) > (mark.sort_order, mark.id)]
    return [t.to_json() for t in page(request, response, found, limit, lambda t: t.name)]


@router.post("/api/resolution-tiers", status_code=201, responses={409: ERRORS[409]})
def create_tier(body: TierCreate, _: Admin, conn: Conn) -> dict:
    return tiers.create_tier(conn, **body.model_dump()).to_json()


@router.patch("/api/resolution-tiers/{name}", responses={404: ERRORS[404], 409: ERRORS[409]})
def change_tier(name: str, body: TierChange, _: Admin, conn: Conn) -> dict:
    changes = body.model_dump(exclude_unset=True)
    if "name" in changes:
        changes["new_name"] = changes.pop("name")
    return tiers.update_tier(conn, name, **changes).to_json()


@router.delete("/api/resolution-tiers/{name}", responses={404: ERRORS[404], 409: ERRORS[409]})
def delete_tier(name: str, _: Admin, conn: Conn) -> dict:
    return {"deleted": tiers.delete_tier(conn, name).name}
