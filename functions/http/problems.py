"""Error documents (RFC 9457 problem+json): the exception the routes raise, how the services'
refusals map to statuses, and the schema the OpenAPI document gives every error response."""

import logging

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from shared.errors import Conflict, InvalidInput, NotFound, ServiceUnavailable, TierflowError

log = logging.getLogger(__name__)


class Problem(Exception):
    def __init__(self, status: int, title: str, detail: str, **extra):
        self.status, self.title, self.detail, self.extra = status, title, detail, extra


def problem_response(status: int, title: str, detail: str, headers: dict | None = None, **extra) -> JSONResponse:
    return JSONResponse({"type": "about:blank", "title": title, "status": status, "detail": detail, **extra},
                        status_code=status, media_type="application/problem+json", headers=headers)


_STATUS_OF = [(InvalidInput, 422, "Invalid input"), (NotFound, 404, "Not found"), (Conflict, 409, "Conflict"),
              (ServiceUnavailable, 503, "Service unavailable"), (TierflowError, 409, "Refused")]

PROBLEM_SCHEMA = {"application/problem+json": {"schema": {
    "type": "object", "required": ["title", "status", "detail"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "errors": {"type": "array"}}}}}
ERRORS = {status: {"description": text, "content": PROBLEM_SCHEMA} for status, text in [
    (401, "no valid API key"), (403, "the key's role may not do this"), (404, "not found"),
    (409, "refused by a rule"), (413, "the request body is over TIERFLOW_MAX_BODY_BYTES"), (422, "invalid input"),
    (503, "a service is unavailable")]}


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    def on_problem(request: Request, exc: Problem):
        headers = {"WWW-Authenticate": "ApiKey"} if exc.status == 401 else None
        return problem_response(exc.status, exc.title, exc.detail, headers, **exc.extra)

    @app.exception_handler(TierflowError)
    def on_refusal(request: Request, exc: TierflowError):
        status, title = next((s, t) for kind, s, t in _STATUS_OF if isinstance(exc, kind))
        return problem_response(status, title, str(exc))

    @app.exception_handler(psycopg.errors.DataError)
    def on_bad_value(request: Request, exc: psycopg.errors.DataError):
        # Values the schema lets through but PostgreSQL refuses (a NUL character, a number out of range).
        return problem_response(422, "Invalid input", f"PostgreSQL refused a value: {exc.diag.message_primary or exc}")

    @app.exception_handler(RequestValidationError)
    def on_invalid(request: Request, exc: RequestValidationError):
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem_response(422, "Invalid input", detail, errors=errors)

    @app.exception_handler(HTTPException)
    def on_http(request: Request, exc: HTTPException):
        return problem_response(exc.status_code, str(exc.detail), f"{request.method} {request.url.path}: {exc.detail}")

    @app.exception_handler(Exception)
    def on_bug(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return problem_response(500, "Internal server error", "the server failed; its log has the details")
