"""/api/webhooks: admins register the endpoints told of events (shared.domain.webhooks)."""

from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import Field

from functions.http.dependencies import Admin, Body, Conn, Deps
from functions.http.paging import DEFAULT_LIMIT, AfterId, Limit, listed, page
from functions.http.problems import ERRORS
from shared.domain import webhooks

router = APIRouter(tags=["webhooks"])

EventType = Literal[webhooks.NOTIFIABLE]


class WebhookAdd(Body):
    url: str = Field(description="an http:// or https:// URL that takes POSTed CloudEvents (structured mode)")
    events: list[EventType] = Field(min_length=1, description="the event types it takes")
    project: str | None = Field(default=None, description="only events of this project's scenes and deliveries")


@router.get("/api/webhooks", responses=listed("the endpoints by id (a page of them)"))
def list_webhooks(_: Admin, conn: Conn, request: Request, response: Response,
                  limit: Limit = DEFAULT_LIMIT, after: AfterId = None) -> list[dict]:
    """The endpoints, without their secrets: undelivered events, the last error, failing or disabled and why."""
    found = webhooks.list_endpoints(conn, after=after, limit=limit + 1)
    return page(request, response, found, limit, lambda e: e["id"])


@router.post("/api/webhooks", status_code=201, responses={404: ERRORS[404], 422: ERRORS[422]})
def add_webhook(body: WebhookAdd, key: Admin, deps: Deps) -> dict:
    """Register an endpoint. The answer carries its signing secret (`secret`, whsec_…), and only this answer."""
    return webhooks.add_endpoint(deps, body.url, body.events, body.project, created_by=key.name)


@router.delete("/api/webhooks/{webhook_id}", responses={404: ERRORS[404]})
def remove_webhook(webhook_id: int, _: Admin, deps: Deps) -> dict:
    """Delete an endpoint and its undelivered events; the answer is what it was."""
    return webhooks.remove_endpoint(deps, webhook_id)


@router.post("/api/webhooks/{webhook_id}/enable", responses={404: ERRORS[404]})
def enable_webhook(webhook_id: int, _: Admin, deps: Deps) -> dict:
    """Enable an endpoint that was disabled after failing for a day; its undelivered events go out."""
    return webhooks.enable_endpoint(deps, webhook_id)
