"""Outgoing webhooks: trackers (ShotGrid/Flow, ftrack, Kitsu) and review tools are told when
something happens, without polling.

An admin registers an endpoint for some event types (and optionally one project). The
`on_event_webhooks` handler writes one delivery row per matching endpoint in the transaction
that applies the event, so nothing is lost while a receiver is down, and it never waits on a
receiver. The sender (`send_due`, a loop of `serve`, `consume` and `relay`) POSTs each as a
CloudEvent in the HTTP binding's structured mode, signed per the Standard Webhooks
specification (`webhook-id` = the event's id, the same on every try, so a receiver de-duplicates;
`webhook-timestamp`; `webhook-signature`), and retries a failure with a doubling backoff. An
endpoint that has failed every try for TIERFLOW_WEBHOOK_DISABLE_AFTER_SECONDS (a day) is disabled
with the reason; its undelivered events wait, and go out once an admin enables it again.
"""

import base64
import json
import secrets
import urllib.error
import urllib.request
from datetime import UTC, datetime
from urllib.parse import urlsplit

import psycopg
from psycopg.types.json import Jsonb
from standardwebhooks import Webhook

from events import EVENT_TYPES
from shared.errors import InvalidInput, NotFound

# What an endpoint may ask for: every event type but the progress reports (many per job; the
# live stream carries them).
NOTIFIABLE = tuple(t for t in EVENT_TYPES if not t.endswith(".progress"))
MAX_BACKOFF_SECONDS = 3600.0
# A try in progress is not tried again before this (a sender killed mid-POST: the row comes due again).
CLAIM_SECONDS = 300.0

_COLUMNS = """e.id, e.url, e.event_types, p.name AS project, e.created_by, e.created_at, e.failing_since,
              e.disabled_at, e.disabled_reason,
              (SELECT count(*) FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.delivered_at IS NULL)
                  AS undelivered,
              (SELECT max(d.delivered_at) FROM webhook_deliveries d WHERE d.endpoint_id = e.id) AS last_delivered_at,
              (SELECT d.last_error FROM webhook_deliveries d WHERE d.endpoint_id = e.id AND d.last_error IS NOT NULL
               ORDER BY d.id DESC LIMIT 1) AS last_error"""


def _checked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"webhook URL {url!r} is not an http:// or https:// URL with a host")
    if len(url) > 2000:
        raise InvalidInput(f"webhook URL is {len(url)} characters long; at most 2000")
    return url


def _checked_types(event_types) -> list[str]:
    types = list(dict.fromkeys(event_types or []))
    if not types:
        raise InvalidInput(f"name at least one event type (one of: {', '.join(NOTIFIABLE)})")
    unknown = [t for t in types if t not in NOTIFIABLE]
    if unknown:
        raise InvalidInput(f"not an event type a webhook can take: {', '.join(unknown)} "
                           f"(one of: {', '.join(NOTIFIABLE)})")
    return types


def add_endpoint(deps, url: str, event_types, project: str | None = None, created_by: str | None = None) -> dict:
    """Register an endpoint; returns it with its signing secret, which is shown only now."""
    url, types = _checked_url(url), _checked_types(event_types)
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with deps.uow() as uow:
        project_id = None
        if project is not None:
            row = uow.conn.execute("SELECT id FROM projects WHERE name = %s", [project]).fetchone()
            if row is None:
                raise NotFound(f"project {project!r} does not exist")
            project_id = row["id"]
        endpoint_id = uow.conn.execute(
            """INSERT INTO webhook_endpoints (url, event_types, project_id, secret, created_by)
               VALUES (%s, %s, %s, %s, %s) RETURNING id""", [url, types, project_id, secret, created_by]
        ).fetchone()["id"]
        return {**get_endpoint(uow.conn, endpoint_id), "secret": secret}


def list_endpoints(conn: psycopg.Connection, *, after: int | None = None, limit: int | None = None) -> list[dict]:
    """The endpoints by id; with `after` (an id, the cursor of the previous page) those after it."""
    rows = conn.execute(f"SELECT {_COLUMNS} FROM webhook_endpoints e LEFT JOIN projects p ON p.id = e.project_id "
                        "WHERE %(after)s::bigint IS NULL OR e.id > %(after)s::bigint ORDER BY e.id LIMIT %(limit)s",
                        {"after": after, "limit": limit}).fetchall()
    return [_json(row) for row in rows]


def get_endpoint(conn: psycopg.Connection, endpoint_id: int) -> dict:
    row = conn.execute(f"SELECT {_COLUMNS} FROM webhook_endpoints e LEFT JOIN projects p ON p.id = e.project_id "
                       "WHERE e.id = %s", [endpoint_id]).fetchone()
    if row is None:
        raise NotFound(f"webhook {endpoint_id} does not exist")
    return _json(row)


def remove_endpoint(deps, endpoint_id: int) -> dict:
    """Delete an endpoint and its undelivered events; returns what it was."""
    with deps.uow() as uow:
        endpoint = get_endpoint(uow.conn, endpoint_id)
        uow.conn.execute("DELETE FROM webhook_endpoints WHERE id = %s", [endpoint_id])
    return endpoint


def enable_endpoint(deps, endpoint_id: int) -> dict:
    """Enable a disabled endpoint again: its undelivered events go out now."""
    with deps.uow() as uow:
        get_endpoint(uow.conn, endpoint_id)
        uow.conn.execute("UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL "
                         "WHERE id = %s", [endpoint_id])
        uow.conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() "
                         "WHERE endpoint_id = %s AND delivered_at IS NULL", [endpoint_id])
        return get_endpoint(uow.conn, endpoint_id)


def _json(row: dict) -> dict:
    out = dict(row)
    for key in ("created_at", "failing_since", "disabled_at", "last_delivered_at"):
        out[key] = out[key].isoformat() if out[key] else None
    out["enabled"] = out["disabled_at"] is None
    return out


def record(conn: psycopg.Connection, cloud_event) -> None:
    """Queue `cloud_event` for every endpoint that takes its type (and its project: the delivery's,
    or its scene's). Runs in the applying transaction, one statement whose answer nobody waits
    for (pipelined in a batch); a redelivered event queues nothing twice."""
    data = cloud_event.data or {}
    conn.execute(
        """INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, payload)
           SELECT e.id, %(id)s, %(type)s, %(payload)s FROM webhook_endpoints e
           WHERE %(type)s = ANY(e.event_types)
             AND (e.project_id IS NULL OR e.project_id = COALESCE(
                      (SELECT id FROM projects WHERE name = %(project)s),
                      (SELECT project_id FROM scenes WHERE id = %(scene)s)))
           ON CONFLICT (endpoint_id, event_id) DO NOTHING""",
        {"id": cloud_event.id, "type": cloud_event.type, "project": data.get("project"),
         "scene": data.get("scene_id") or data.get("source_scene_id"),
         "payload": Jsonb(json.loads(cloud_event.to_json()))})


def send_due(deps, limit: int = 50) -> dict[str, int]:
    """POST the deliveries that are due (enabled endpoints only), each once; returns how many were
    delivered, and a line per failed try (each is tried again later)."""
    settings = deps.settings
    with deps.connect() as conn, conn.transaction():
        # Claimed by moving their next try past the POST, then committed: no row lock is held
        # while a receiver takes its time, and a sender killed now leaves them due again later.
        due = conn.execute(
            """UPDATE webhook_deliveries d SET next_attempt_at = now() + make_interval(secs => %s)
               FROM webhook_endpoints e
               WHERE d.id IN (SELECT d2.id FROM webhook_deliveries d2
                              JOIN webhook_endpoints e2 ON e2.id = d2.endpoint_id AND e2.disabled_at IS NULL
                              WHERE d2.delivered_at IS NULL AND d2.next_attempt_at <= now()
                              ORDER BY d2.id LIMIT %s FOR UPDATE OF d2 SKIP LOCKED)
                 AND e.id = d.endpoint_id
               RETURNING d.id, d.event_id, d.payload, d.attempts, e.id AS endpoint_id, e.url, e.secret""",
            [CLAIM_SECONDS, limit]).fetchall()
    counts = {"delivered": 0, "failures": []}
    down: dict[int, str] = {}  # endpoints that failed this round, and the failure
    for delivery in sorted(due, key=lambda d: d["id"]):  # in event order, per endpoint
        if delivery["endpoint_id"] in down:  # not tried again now: back to the queue, no try counted
            with deps.connect() as conn:
                conn.execute("UPDATE webhook_deliveries SET next_attempt_at = now() + make_interval(secs => %s) "
                             "WHERE id = %s", [settings.webhook_retry_seconds, delivery["id"]])
            continue
        status, error = post(delivery["url"], delivery["secret"], delivery["event_id"], delivery["payload"],
                             settings.webhook_timeout_seconds)
        with deps.connect() as conn, conn.transaction():
            if error is None:
                conn.execute("""UPDATE webhook_deliveries SET delivered_at = now(), attempts = attempts + 1,
                                last_status = %s, last_error = NULL WHERE id = %s""", [status, delivery["id"]])
                conn.execute("UPDATE webhook_endpoints SET failing_since = NULL WHERE id = %s",
                             [delivery["endpoint_id"]])
                counts["delivered"] += 1
            else:
                counts["failures"].append(_failed(conn, delivery, status, error, settings))
                down[delivery["endpoint_id"]] = error
    return counts


def _failed(conn: psycopg.Connection, delivery: dict, status: int | None, error: str, settings) -> str:
    """Record a failed try (and disable the endpoint once it has failed for too long); returns what happened."""
    backoff = min(settings.webhook_retry_seconds * 2 ** delivery["attempts"], MAX_BACKOFF_SECONDS)
    conn.execute("""UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = %s, last_error = %s,
                    next_attempt_at = now() + make_interval(secs => %s) WHERE id = %s""",
                 [status, error, backoff, delivery["id"]])
    endpoint = conn.execute(
        """UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, now()) WHERE id = %s
           RETURNING failing_since, failing_since < now() - make_interval(secs => %s) AS too_long""",
        [delivery["endpoint_id"], settings.webhook_disable_after_seconds]).fetchone()
    said = (f"event {delivery['event_id']} to webhook {delivery['endpoint_id']} ({delivery['url']}) failed: {error}; "
            f"tried again in {backoff:g} s")
    if endpoint["too_long"]:
        reason = (f"every try failed since {endpoint['failing_since'].isoformat(timespec='seconds')}; "
                  f"the last: {error}")
        conn.execute("UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = %s WHERE id = %s",
                     [reason, delivery["endpoint_id"]])
        said = (f"webhook {delivery['endpoint_id']} ({delivery['url']}) is disabled: {reason}; its undelivered "
                f"events wait for `tierflow webhooks enable {delivery['endpoint_id']}`")
    return said


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer that did not take the event (urllib would re-send it as a GET)


_OPENER = urllib.request.build_opener(_NoRedirects)


def post(url: str, secret: str, event_id: str, payload: dict, timeout: float) -> tuple[int | None, str | None]:
    """POST one signed CloudEvent; returns (HTTP status or None, None on success or what went wrong)."""
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    now = datetime.now(UTC)
    request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
        "content-type": "application/cloudevents+json; charset=utf-8",
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
        "user-agent": "tierflow-webhooks",
    })
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return answer.status, None
    except urllib.error.HTTPError as exc:
        return exc.code, f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return None, f"no answer: {reason}"
