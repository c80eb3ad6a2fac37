"""Cursor pagination, the same on every list route: `limit` and `after` in, a JSON array out and,
when more items follow, an RFC 8288 `Link: </api/scenes?after=123&limit=100&project=fox>; rel="next"`
header (a relative URL keeping the request's other query parameters); the last page has none.

`after` is the id (or name) of the last item of the previous page. Lists shown newest first
(scenes, deliveries, workers) continue with older items; the others with the next ones up.
A cursor, unlike an offset, neither skips nor repeats an item when items are added meanwhile.
"""

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import Query, Request, Response

from events.models import MAX_ID

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_NAME_CURSOR = 1000  # characters of a name cursor (names are far shorter)

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most this many items (1 to {MAX_LIMIT})")]
# Newest-first lists: the id of the last item of the previous page; this page has the older ones.
OlderThan = Annotated[int | None, Query(
    ge=1, le=MAX_ID, description="a cursor: the id of the last item of the previous page (this page: older ones); "
                                 "follow the `Link: rel=\"next\"` header rather than building it")]
# Ascending lists by id.
AfterId = Annotated[int | None, Query(
    ge=1, le=MAX_ID, description="a cursor: the id of the last item of the previous page (this page: the next ones); "
                                 "follow the `Link: rel=\"next\"` header rather than building it")]
# Lists keyed by a name.
AfterName = Annotated[str | None, Query(
    min_length=1, max_length=MAX_NAME_CURSOR,
    description="a cursor: the name of the last item of the previous page (this page: the next ones); "
                "follow the `Link: rel=\"next\"` header rather than building it")]

LINK_HEADER = {"description": 'RFC 8288 `</api/...?after=CURSOR&limit=N&...>; rel="next"` (a relative URL with '
                              "the request's other query parameters) while more items follow; absent on the last page",
               "schema": {"type": "string"}}


def listed(description: str) -> dict:
    """The `responses` entry of a list route: its 200 answer, a JSON array, with the Link header."""
    return {200: {"description": description, "headers": {"Link": LINK_HEADER}}}


T = TypeVar("T")


def page(request: Request, response: Response, items: Sequence[T], limit: int, cursor: Callable[[T], Any]) -> list[T]:
    """The first `limit` of `items` (fetched as `limit + 1`, so one more says another page
    follows), setting the `Link: rel="next"` header on `response` when it does; `cursor(item)` is
    what `after` is for the next page."""
    shown = list(items[:limit])
    if len(items) > limit:
        others = [(k, v) for k, v in request.query_params.multi_items() if k not in ("after", "limit")]
        query = urlencode([("after", cursor(shown[-1])), ("limit", limit), *others])
        response.headers["Link"] = f'<{request.url.path}?{query}>; rel="next"'
    return shown
