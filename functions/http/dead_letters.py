"""/api/dead-letters: admins list the events a function gave up on and replay one after fixing
its cause (`tierflow events dlq [--replay]`, shared.runtime.dead_letters). On the embedded bus
only: on Kafka dead letters are messages on `<topic>.dlq`, with no id to name one by."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from functions.http.dependencies import Admin, Conn, Deps, Id
from functions.http.paging import DEFAULT_LIMIT, AfterId, Limit, listed, page
from functions.http.problems import ERRORS
from shared.errors import Conflict
from shared.runtime import dead_letters

router = APIRouter(tags=["events"])

ON_KAFKA = {**ERRORS[409], "description": "on Kafka (dead letters there have no id: use `tierflow events dlq`)"}


def _embedded_bus_only(deps) -> None:
    if not deps.settings.embedded_bus:
        raise Conflict("on Kafka dead letters are messages on the <topic>.dlq topics, not rows with an id: "
                       "list and replay them with tierflow events dlq [--replay]")


@router.get("/api/dead-letters", responses={**listed("dead letters not replayed yet, oldest first (a page of them)"),
                                            409: ON_KAFKA})
def list_dead_letters(_: Admin, conn: Conn, deps: Deps, request: Request, response: Response,
                      consumer: Annotated[str | None, Query(
                          min_length=1, description="only those this function gave up on (e.g. on_scene_approved)")]
                      = None,
                      limit: Limit = DEFAULT_LIMIT, after: AfterId = None) -> list[dict]:
    """`[{"id", "topic", "dlq", "consumer", "origin", "reason", "key", "value", "failed_at"}]`: the
    `tierflow events dlq --json` form plus the `id` a replay names."""
    _embedded_bus_only(deps)
    found = dead_letters.pending_on_bus(conn, consumer=consumer, after=after, limit=limit + 1)
    return page(request, response, found, limit, lambda letter: letter["id"])


@router.post("/api/dead-letters/{letter_id}/replay", status_code=202, responses={
    404: ERRORS[404], 409: {**ERRORS[409], "description": "replayed already, its event is gone, or on Kafka"}})
def replay_dead_letter(letter_id: Id, _: Admin, deps: Deps) -> dict:
    """Deliver the letter's event again to the function that gave up on it (after you fixed the
    cause) and mark it replayed; the answer is the letter. The function applies it a moment later
    (`serve` runs it; with nothing serving, `tierflow consume --once`)."""
    _embedded_bus_only(deps)
    return dead_letters.replay_one_on_bus(deps, letter_id)
