"""Liveness and readiness, one rule for every long-running process: `serve` answers them at
/healthz and /readyz, `consume`, `relay` and `worker serve` on `--health-port`.

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
        raise InvalidInput(f"--health-port takes PORT or HOST:PORT with a port from 1 to 65535, not {text!r}")
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
    class Probes(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path == "/healthz":
                status, body = 200, {"status": "ok"}
            elif self.path == "/readyz":
                reasons = check()
                status, body = (503 if reasons else 200), {"ready": not reasons, "reasons": reasons}
            else:
                status, body = 404, {"detail": "only /healthz and /readyz are here"}
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:  # probes every few seconds would drown the log
            pass

    host, port = parse_address(address)
    try:
        server = ThreadingHTTPServer((host, port), Probes)
    except OSError as exc:
        raise ServiceUnavailable(f"cannot answer health probes on {host}:{port}: {exc.strerror}") from exc
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-probes", daemon=True).start()
    return server
