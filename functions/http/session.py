"""/api/session: the web UI signs in with a key once; its HttpOnly cookie then holds a random
session id (never the key), `Secure` when served over HTTPS, and signing out revokes it."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from functions.http.dependencies import SESSION_COOKIE, Body, Conn, Deps, Viewer, cookie_key
from functions.http.problems import ERRORS, Problem
from shared.domain import access

router = APIRouter(tags=["session"])


class SessionRequest(Body):
    api_key: str


@router.post("/api/session", responses={401: ERRORS[401]})
def sign_in(body: SessionRequest, deps: Deps, conn: Conn, request: Request) -> JSONResponse:
    key = access.authenticate(access.load_keys(deps.settings), body.api_key)
    if key is None:
        raise Problem(401, "Unauthorized", "that API key is not valid")
    response = JSONResponse({"name": key.name, "role": key.role})
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.set_cookie(SESSION_COOKIE, access.start_session(conn, key), max_age=access.SESSION_SECONDS,
                        httponly=True, samesite="strict", secure=secure)
    return response


@router.get("/api/session")
def who_am_i(key: Viewer) -> dict:
    return {"name": key.name, "role": key.role}


@router.delete("/api/session", status_code=204)
def sign_out(conn: Conn, session: Annotated[str | None, Depends(cookie_key)]) -> Response:
    access.end_session(conn, session)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE)
    return response
