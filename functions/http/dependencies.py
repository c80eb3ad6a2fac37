"""What the routes depend on: the app's `deps`, a database connection per request, the caller's
API key and role, and the path and body types the routers share."""

from typing import Annotated, Any

import psycopg
from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.security import APIKeyCookie, APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

from events.models import MAX_ID, MAX_SCENES_PER_DELIVERY
from functions.http.problems import Problem
from shared.domain import access
from shared.domain.access import ApiKey

SESSION_COOKIE = "tierflow_api_key"

Id = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a database id")]
DbInt = Annotated[int, Field(ge=0, le=2**31 - 1)]
SceneIds = Annotated[list[Annotated[int, Field(ge=1, le=MAX_ID)]],
                     Field(min_length=1, max_length=MAX_SCENES_PER_DELIVERY)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def get_deps(request: Request):
    """The `deps` (database, S3 and settings) that `create_app` stored on the app."""
    return request.app.state.deps


Deps = Annotated[Any, Depends(get_deps)]


def connection(deps: Deps):
    with deps.connect() as conn:
        yield conn


Conn = Annotated[psycopg.Connection, Depends(connection)]

header_key = APIKeyHeader(name="X-API-Key", auto_error=False)
cookie_key = APIKeyCookie(name=SESSION_COOKIE, auto_error=False)


def role(needed: str):
    def caller(deps: Deps, header: Annotated[str | None, Depends(header_key)],
               cookie: Annotated[str | None, Depends(cookie_key)]) -> ApiKey:
        keys = access.load_keys(deps.settings)
        key = None
        if header:
            key = access.authenticate(keys, header)
        elif cookie:  # the web UI's session
            with deps.connect() as conn:
                key = access.session_key(conn, keys, cookie)
        if key is None:
            raise Problem(401, "Unauthorized", "give a valid API key in the X-API-Key header")
        if not key.may(needed):
            raise Problem(403, "Forbidden", f"the {key.role} role may not do this; it needs {needed}")
        return key

    return caller


Viewer = Annotated[ApiKey, Depends(role("viewer"))]
Artist = Annotated[ApiKey, Depends(role("artist"))]
Admin = Annotated[ApiKey, Depends(role("admin"))]
