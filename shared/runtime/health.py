"""Liveness and readiness, one rule for every long-running process: `serve` answers them at
/healthz and /readyz, `consume`, `relay` and `worker serve` on `--health-port` (and metrics on
`--metrics-port`).

Ready means: the database answers, every loop the process runs completed a cycle recently and is
not in an outage (shared.runtime.supervise), and its local workers, if any, keep running. The
reasons name what is wrong without its details (probes need no key).
"""

import json
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg

from shared.adapters import db
from shared.errors import InvalidInput, ServiceUnavailable
from shared.runtime.supervise import Supervised


def not_ready(deps, loops: Sequence[Supervised]) -> list[str]:
    """Why the process cannot do its work now (empty: ready)."""
    reasons = []
    try:
        with db.connect(deps.database_url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except (psycopg.OperationalError, ServiceUnavailable) as exc:
        reasons.append(f"database: unreachable ({type(exc).__name__})")
    reasons += [problem for loop in loops if (problem := loop.problem())]
    dispatcher = deps.__dict__.get("dispatcher")  # only when this process runs jobs
    if getattr(dispatcher, "failure", None):
        reasons.append("local workers: they keep exiting right after starting (see the worker logs)")
    return reasons


def parse_address(text: str) -> tuple[str, int]:
    """"PORT" (on 127.0.0.1) or "HOST:PORT" (0.0.0.0:8081 in a container)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 < number < 65536:
        raise InvalidInput(f"a port is PORT or HOST:PORT with a port from 1 to 65535, not {text!r}")
    return host or "127.0.0.1", number


def address_argument(text: str) -> str:
    """An argparse `type` for --health-port: a bad value is a usage error."""
    import argparse

    try:
        parse_address(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def serve_probes(address: str, check: Callable[[], list[str]]) -> ThreadingHTTPServer:
    """Answer GET /healthz (200 while the process runs) and GET /readyz (200, or 503 with the
    reasons `check()` gives) at `address`, in a daemon thread; the caller shuts the server down."""
    def readyz() -> tuple[int, str, bytes]:
        reasons = check()
        return 503 if reasons else 200, "application/json", json.dumps({"ready": not reasons,
                                                                        "reasons": reasons}).encode()

    return serve_http(address, {"/healthz": lambda: (200, "application/json", b'{"status": "ok"}'),
                                "/readyz": readyz}, "health probes")


def serve_metrics(address: str, deps) -> ThreadingHTTPServer:
    """`--metrics-port`: GET /metrics, Prometheus text (shared.runtime.metrics), in a daemon thread."""
    from shared.runtime import metrics

    def scrape() -> tuple[int, str, bytes]:
        try:
            body, content_type = metrics.exposition(deps)
        except ServiceUnavailable as exc:
            return 503, "text/plain; charset=utf-8", str(exc).encode()
        return 200, content_type, body

    if not metrics.available():
        metrics.exposition(deps)  # raises: which extra to install, at start rather than at each scrape
    return serve_http(address, {"/metrics": scrape}, "metrics")


def serve_http(address: str, routes: dict[str, Callable[[], tuple[int, str, bytes]]],
               what: str) -> ThreadingHTTPServer:
    """GET on each route's path answered with its (status, content type, body), at `address`
    ("[HOST:]PORT"), in a daemon thread."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            route = routes.get(self.path.split("?")[0])
            if route is None:
                status, content_type, body = 404, "application/json", json.dumps(
                    {"detail": f"only {' and '.join(routes)} here"}).encode()
            else:
                status, content_type, body = route()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:  # probes and scrapes every few seconds would drown the log
            pass

    host, port = parse_address(address)
    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ServiceUnavailable(f"cannot answer {what} on {host}:{port}: {exc.strerror}") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=what, daemon=True).start()
    return server
