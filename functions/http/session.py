"""/api/session: the web UI keeps the key in an HttpOnly cookie, not in JavaScript."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from functions.http.dependencies import SESSION_COOKIE, Body, Deps, Viewer
from functions.http.problems import ERRORS, Problem
from shared.domain import access

router = APIRouter(tags=["session"])


class SessionRequest(Body):
    api_key: str


@router.post("/api/session", responses={401: ERRORS[401]})
def sign_in(body: SessionRequest, deps: Deps) -> JSONResponse:
    key = access.authenticate(access.load_keys(deps.settings), body.api_key)
    if key is None:
        raise Problem(401, "Unauthorized", "that API key is not valid")
    response = JSONResponse({"name": key.name, "role": key.role})
    response.set_cookie(SESSION_COOKIE, body.api_key, httponly=True, samesite="strict")
    return response


@router.get("/api/session")
def who_am_i(key: Viewer) -> dict:
    return {"name": key.name, "role": key.role}


@router.delete("/api/session", status_code=204)
def sign_out() -> Response:
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE)
    return response
