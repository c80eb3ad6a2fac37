"""/api/deliveries: check, request, list and show deliveries of approved scenes."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from functions.http.dependencies import Artist, Body, Conn, Deps, Id, SceneIds, Viewer
from functions.http.paging import DEFAULT_LIMIT, Limit, OlderThan, listed, page
from functions.http.problems import ERRORS
from shared.domain import delivery

router = APIRouter(tags=["deliveries"])

Status = Literal[delivery.DELIVERY_STATUSES]


# Request bodies (responses are the services' documented JSON forms)


class DeliveryRequest(Body):
    project: str
    scene_ids: SceneIds


@router.post("/api/deliveries/preflight")
def preflight(body: DeliveryRequest, _: Artist, conn: Conn, deps: Deps) -> dict:
    """What a delivery of these scenes would be refused for; records nothing."""
    from shared.media.video import probe_video

    reasons = delivery.delivery_problems(conn, deps.s3, deps.bucket, body.project, body.scene_ids, probe_video)
    return {"deliverable": not reasons, "summary": delivery.summary(reasons) if reasons else None,
            "reasons": [r.model_dump(mode="json") for r in reasons]}


@router.post("/api/deliveries", status_code=202, responses={404: ERRORS[404]})
def request_delivery(body: DeliveryRequest, key: Artist, conn: Conn, deps: Deps) -> dict:
    delivery_id = delivery.request_delivery(deps, body.project, body.scene_ids, requested_by=key.name)
    return delivery.get_delivery(conn, delivery_id)


@router.get("/api/deliveries", responses=listed("deliveries, newest first (a page of them)"))
def list_deliveries(_: Viewer, conn: Conn, request: Request, response: Response,
                    project: Annotated[str | None, Query(description="only this project's deliveries")] = None,
                    status: Annotated[Status | None, Query(description="only deliveries in this status")] = None,
                    limit: Limit = DEFAULT_LIMIT, after: OlderThan = None) -> list[dict]:
    """Each in the `GET /api/deliveries/{id}` form without `manifest_url` and `file_urls`: presigning
    them reads every manifest from S3; ask for one delivery to get them."""
    found = delivery.list_deliveries(conn, project, status, limit + 1, after)
    return page(request, response, found, limit, lambda d: d["delivery_id"])


@router.get("/api/deliveries/{delivery_id}", responses={404: ERRORS[404]})
def show_delivery(delivery_id: Id, _: Viewer, conn: Conn, deps: Deps) -> dict:
    return delivery.get_delivery(conn, delivery_id, deps.s3, deps.bucket)
