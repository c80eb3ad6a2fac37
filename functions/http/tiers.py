"""/api/resolution-tiers: viewers list the tiers, admins change them."""

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from functions.http.dependencies import Admin, Body, Conn, DbInt, Viewer
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


@router.get("/api/resolution-tiers")
def list_tiers(_: Viewer, conn: Conn) -> list[dict]:
    return [t.to_json() for t in tiers.list_tiers(conn)]


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
