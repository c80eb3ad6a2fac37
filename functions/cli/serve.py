"""`tierflow serve` (the HTTP API and web UI) and `tierflow api-keys` (who may use them)."""

import json
import sys
import threading

from functions.cli.jobs import DEPLOYED, start_runtime_workers
from functions.cli.parsing import add_command, add_group
from functions.cli.stack import start_upkeep
from shared.domain import access
from shared.runtime.supervise import Supervised


def cmd_serve(deps, args) -> int:
    import uvicorn

    from functions.http.app import create_app
    from shared.runtime import bus

    settings = deps.settings
    stop, runtime, crashed = threading.Event(), None, []

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # SIGTERM/SIGINT is the normal way to stop: at once nothing new starts (no event
            # applied, no job claimed, live streams end); within the grace period the server
            # closes its connections and the local workers finish or give back their jobs; exit 0.
            # (uvicorn would re-raise the signal once it has shut down.)
            self.should_exit = True
            stop.set()
            if settings.dispatcher == "local" and "dispatcher" in deps.__dict__:
                deps.dispatcher.stop()

    keys_file, new_key = access.ensure_local_admin_key(settings)
    access.load_keys(settings)  # a broken keys setting is refused now, not at the first request
    deps.connect().close()  # the database is reachable (and the embedded one migrated) before we listen
    # On the embedded bus this process also runs the handlers and the local workers, so a job
    # submitted in the browser is generated with nothing else running; on Kafka they run elsewhere.
    app = create_app(deps)
    app.state.stopping = stop
    server = Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                   timeout_graceful_shutdown=settings.shutdown_grace_seconds))

    bus_loop = Supervised("embedded bus")

    def run_runtime() -> None:
        try:
            bus.run_bus(deps, DEPLOYED, DEPLOYED, should_stop=stop.is_set, supervision=bus_loop)
        except BaseException as exc:  # noqa: BLE001 - a bug: serve must not go on without its handlers
            crashed.append(f"{type(exc).__name__}: {exc}")
            server.should_exit = True
            raise

    url = f"http://{args.host}:{args.port}/"
    print(f"Tierflow at {url} (API under {url}api, OpenAPI at {url}openapi.json)", flush=True)
    if new_key:
        print(f"API keys: {keys_file} (hashes only); the admin key local-admin, shown only now: {new_key}", flush=True)
    else:
        print(f"API keys: {keys_file} (hashes only; `tierflow api-keys create` adds one)" if keys_file
              else "API keys: from TIERFLOW_API_KEYS", flush=True)
    if settings.embedded_bus and not args.api_only:
        start_runtime_workers(deps)
        app.state.loops = [bus_loop, *start_upkeep(deps, stop)]
        runtime = threading.Thread(target=run_runtime, name="embedded-bus", daemon=True)
        runtime.start()
        print("handlers, the sweeper and the local workers run with this process (embedded bus)", flush=True)
    try:
        server.run()
    finally:
        stop.set()
        if runtime:
            runtime.join(timeout=10)
        deps.close()  # the local workers finish or give back their jobs; queued ones wait for the next start
    if crashed:
        print(f"tierflow serve: stopped because the embedded bus failed: {crashed[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_api_keys_create(deps, args) -> int:
    key, clear = access.add_key(deps.settings, args.name, args.role)
    if args.json:
        print(json.dumps({"name": key.name, "role": key.role, "key": clear}))
    else:
        print(f"created {key.role} key {key.name!r} in {deps.settings.api_keys_file} (shown only now):\n{clear}")
    return 0


def cmd_api_keys_list(deps, args) -> int:
    keys = [{"name": k.name, "role": k.role} for k in access.load_keys(deps.settings)]
    if args.json:
        print(json.dumps(keys, indent=2))
    else:
        for key in keys:
            print(f"{key['role']:<7} {key['name']}")
    return 0


def register(commands) -> None:
    """Add `serve` and `api-keys` to the `tierflow` parser."""
    serve = add_command(commands, "serve", cmd_serve, "serve the HTTP API and the web UI", json_output=False)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
    serve.add_argument("--api-only", action="store_true",
                       help="do not run the handlers here even on the embedded bus (`tierflow consume` runs them)")

    key_commands = add_group(commands, "api-keys", "keys for the HTTP API and web UI")
    create = add_command(key_commands, "create", cmd_api_keys_create, "add a key to the keys file and print it")
    create.add_argument("name", help="who or what uses the key, e.g. ana or render-farm")
    create.add_argument("--role", required=True, choices=access.ROLES,
                        help="viewer: read; artist: also submit, approve, upscale, deliver; admin: also tiers")
    add_command(key_commands, "list", cmd_api_keys_list, "list the keys' names and roles (never the keys)")
