"""`tierflow db …`, `stack …` and `config show`: the schema and its retention, the embedded servers
and the settings."""

import threading

from functions.cli.parsing import add_command, add_group, positive_number, print_json, print_table
from shared.adapters import db
from shared.runtime import drive, outbox
from shared.runtime.supervise import Supervised


def cmd_db_migrate(deps, args) -> int:
    with deps.connect(check_schema=False) as conn:
        applied = db.migrate(conn)
    if args.json:
        print_json({"applied": [f"{m.version}_{m.name}" for m in applied]})
    elif applied:
        for m in applied:
            print(f"applied {m.version}_{m.name}")
    else:
        print("schema is up to date; nothing to apply")
    return 0


def cmd_db_status(deps, args) -> int:
    with deps.connect(check_schema=False) as conn:
        rows = db.migration_status(conn)
    if args.json:
        print_json([{**r, "applied_at": r["applied_at"].isoformat() if r["applied_at"] else None} for r in rows])
        return 0
    print_table(
        ["VERSION", "NAME", "STATE"],
        [[r["version"], r["name"], f"applied {r['applied_at']:%Y-%m-%d %H:%M:%S}" if r["applied_at"] else "pending"]
         for r in rows],
    )
    return 0


def _stack_status(deps) -> dict:
    from infra import embedded

    settings = deps.settings
    running = embedded.status(settings.home)
    postgres = (
        {"mode": "embedded", **running["postgres"]}
        if settings.embedded_database
        else {"mode": "external", "url": settings.masked()["database_url"]}
    )
    s3 = (
        {"mode": "embedded", **running["s3"], "bucket": settings.s3_bucket}
        if settings.embedded_s3
        else {"mode": "external", "url": settings.s3_endpoint_url, "bucket": settings.s3_bucket}
    )
    return {"home": str(settings.home.resolve()), "postgres": postgres, "s3": s3}


def cmd_stack_status(deps, args) -> int:
    status = _stack_status(deps)
    if args.json:
        print_json(status)
        return 0
    print(f"home: {status['home']}")
    for service in ("postgres", "s3"):
        info = status[service]
        if info["mode"] == "external":
            print(f"{service}: external at {info['url']}")
        elif info["running"]:
            print(f"{service}: running (pid {info['pid']}) at {info['url']}, data in {info['data_dir']}")
        else:
            print(f"{service}: stopped (starts on first use), data in {info['data_dir']}")
    return 0


def cmd_stack_stop(deps, args) -> int:
    from infra import embedded

    stopped = embedded.stop(deps.settings.home)
    if args.json:
        print_json({"stopped": stopped})
    else:
        for service, was_running in stopped.items():
            print(f"{service}: {'stopped' if was_running else 'was not running'}")
    return 0


def cmd_config_show(deps, args) -> int:
    shown = deps.settings.masked()
    if args.json:
        print_json(shown)
    else:
        print_table(["SETTING", "VALUE"], [[f"TIERFLOW_{k.upper()}", v] for k, v in shown.items()])
    return 0


def cmd_db_prune(deps, args) -> int:
    days = deps.settings.event_retention_days if args.older_than is None else args.older_than
    outbox.check_retention(deps.settings, days)
    with deps.connect() as conn:
        deleted = outbox.prune(conn, days)
    if args.json:
        print_json({"older_than_days": days, "deleted": deleted})
    else:
        print(f"deleted {deleted['outbox']} sent event(s) and {deleted['processed_events']} applied-event "
              f"record(s) older than {days:g} days")
    return 0


def start_upkeep(deps, stop) -> list[Supervised]:
    """The background loops of `serve`, `consume` and `relay`, threads until `stop` is set: the
    sweeper (lost workers' jobs, undecided deliveries), the hourly event pruning and the webhook
    sender; returns their supervisions."""
    def say(line: str) -> None:
        print(line, flush=True)

    sweeper = Supervised("sweeper", say, stale_after=max(60.0, 3 * drive.sweep_period(deps.settings)))
    pruning = Supervised("event pruning", say, stale_after=3 * drive.PRUNE_EVERY_SECONDS)
    # Stale only when stuck: a round POSTs up to 50 events, each given TIERFLOW_WEBHOOK_TIMEOUT_SECONDS.
    sender = Supervised("webhook sender", say, stale_after=60.0 + 50 * deps.settings.webhook_timeout_seconds)
    for name, loop, supervised in (("sweeper", drive.sweep_until, sweeper), ("event-pruning", drive.prune_until, pruning),
                                   ("webhook-sender", drive.send_webhooks_until, sender)):
        threading.Thread(target=loop, name=name, daemon=True, args=(deps, stop.is_set, supervised)).start()
    return [sweeper, pruning, sender]


def register_db(commands) -> None:
    """Add `db` to the `tierflow` parser."""
    db_commands = add_group(commands, "db", "database schema migrations and retention")
    add_command(db_commands, "migrate", cmd_db_migrate, "apply pending migrations, each in a transaction")
    add_command(db_commands, "status", cmd_db_status, "list applied and pending migrations")
    prune = add_command(db_commands, "prune", cmd_db_prune,
                        "delete sent outbox events and applied-event records older than the retention, in batches")
    prune.add_argument("--older-than", type=positive_number, metavar="DAYS",
                       help="the retention in days (default TIERFLOW_EVENT_RETENTION_DAYS, 7); on Kafka at least a "
                            "day longer than the broker keeps events")


def register(commands) -> None:
    """Add `stack` to the `tierflow` parser."""
    stack_commands = add_group(commands, "stack", "the embedded PostgreSQL and S3 servers")
    add_command(stack_commands, "status", cmd_stack_status, "show the database and S3 servers in use")
    add_command(stack_commands, "stop", cmd_stack_stop, "stop the embedded servers (data is kept)")


def register_config(commands) -> None:
    """Add `config` to the `tierflow` parser."""
    config_commands = add_group(commands, "config", "configuration")
    add_command(config_commands, "show", cmd_config_show, "print every setting, secrets masked")
