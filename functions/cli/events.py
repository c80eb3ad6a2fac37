"""`tierflow events …`, `tierflow relay` and `tierflow consume`: the event runtime from the command line.

Each command works on both runtimes: Kafka when TIERFLOW_KAFKA_BOOTSTRAP is set, otherwise the
embedded bus over the PostgreSQL outbox.
"""

import argparse
import json
import re
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from events import ALL_TOPICS, EVENT_TYPES, envelope_for, topic_for, tracing
from events.errors import validated
from events.topics import STRUCTURED_HEADERS
from functions.cli.jobs import DEPLOYED, start_runtime_workers
from functions.cli.parsing import add_command, add_group
from functions.cli.stack import start_upkeep
from functions.handlers.registry import FUNCTIONS
from shared.errors import InvalidInput, NotFound
from shared.runtime import bus, dead_letters, outbox
from shared.runtime.consumer import Function, Outcome
from shared.runtime.health import address_argument
from shared.runtime.supervise import Supervised


def _functions(names: list[str]) -> list[Function]:
    unknown = [n for n in names if n not in FUNCTIONS]
    if unknown:
        raise NotFound(f"unknown function(s) {', '.join(unknown)} (known: {', '.join(FUNCTIONS)})")
    return [FUNCTIONS[n] for n in names] if names else list(FUNCTIONS.values())


def _stop_on_signals() -> threading.Event:
    """SIGTERM and SIGINT ask the loops to finish their current batch and exit."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop


def _report(function: Function, outcome: Outcome) -> None:
    print(
        f"{function.name}: applied {len(outcome.applied)}, duplicates {len(outcome.duplicates)}, "
        f"dead-lettered {len(outcome.dead)}" + (f", deferred {len(outcome.deferred)}" if outcome.deferred else ""),
        flush=True,
    )
    for message, reason in outcome.dead:
        print(f"  dead letter {message.ref}: {reason}", flush=True)
    for message, reason, pause in outcome.deferred:
        print(f"  retrying {message.ref} in {pause:.0f} s: {reason}", flush=True)


# ---------------------------------------------------------------------------------------------
# events publish / tail / dlq


def cmd_events_publish(deps, args) -> int:
    if args.type not in EVENT_TYPES:
        raise InvalidInput(f"unknown event type {args.type!r} (known: {', '.join(EVENT_TYPES)})")
    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--data is not valid JSON ({exc.msg} at character {exc.pos})") from None
    event = validated(EVENT_TYPES[args.type], data, what=f"invalid {args.type} event", at=("data",))
    settings = deps.settings
    if settings.embedded_bus:
        with deps.uow() as uow:
            event_id = uow.emit(event)
    else:
        from shared.runtime.kafka_bus import make_producer

        cloud_event = envelope_for(event, source=deps.source, extensions={"traceparent": tracing.child()})
        producer = make_producer(settings.kafka_bootstrap)
        try:
            producer.send(topic_for(event.type), key=event.subject.encode(), value=cloud_event.to_json(),
                          headers=STRUCTURED_HEADERS).get(timeout=30)
        finally:
            producer.close()
        event_id = cloud_event.id
    published = {"id": event_id, "type": event.type, "subject": event.subject, "topic": topic_for(event.type)}
    if args.json:
        print(json.dumps(published))
    else:
        print(f"published {event.type} {event_id} (subject {event.subject}) to {published['topic']}")
    return 0


def _print_event(payload: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(payload, sort_keys=True), flush=True)
    else:
        data = json.dumps(payload.get("data"), sort_keys=True)
        print(f"{payload.get('time')}  {payload.get('type')}  subject={payload.get('subject')}  "
              f"id={payload.get('id')}  {data}", flush=True)


def cmd_events_tail(deps, args) -> int:
    types = args.types or list(ALL_TOPICS)
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(f"unknown event type(s) {', '.join(unknown)} (known: {', '.join(EVENT_TYPES)})")
    topics = [topic_for(t) for t in types]
    stop = _stop_on_signals()
    deadline = time.monotonic() + args.timeout if args.timeout else None
    shown = 0

    def done() -> bool:
        return stop.is_set() or (args.limit and shown >= args.limit) or (deadline and time.monotonic() > deadline)

    if deps.settings.embedded_bus:
        with deps.connect() as conn:
            start = 0 if args.from_beginning else conn.execute(
                "SELECT COALESCE(MAX(id), 0) AS id FROM outbox").fetchone()["id"]
            while not done():
                rows = conn.execute(
                    "SELECT id, payload FROM outbox WHERE id > %s AND topic = ANY(%s) ORDER BY id LIMIT 100",
                    [start, topics]).fetchall()
                for row in rows:
                    if done():
                        break
                    _print_event(row["payload"], args.json)
                    start, shown = row["id"], shown + 1
                if not rows:
                    time.sleep(0.2)
        return 0

    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        *topics, bootstrap_servers=deps.settings.kafka_bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest" if args.from_beginning else "latest",
    )
    try:
        while not done():
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if done():
                        break
                    try:
                        _print_event(json.loads(record.value), args.json)
                    except ValueError:
                        print(f"(not JSON) {record.topic}-{record.partition}-{record.offset}: {record.value!r}", flush=True)
                    shown += 1
    finally:
        consumer.close()
    return 0


def cmd_events_dlq(deps, args) -> int:
    letters = (dead_letters.on_bus(deps, args.replay) if deps.settings.embedded_bus
               else dead_letters.on_kafka(deps, args.replay))
    if args.json:
        print(json.dumps(letters, indent=2, default=str))
        return 0
    if not letters:
        print("no dead letters")
    for letter in letters:
        print(f"{letter['topic']}  consumer={letter['consumer']}  key={letter['key']}  reason: {letter['reason']}")
    if args.replay and letters:
        print(f"replayed {len(letters)} dead letter(s) to their topics")
    return 0


# ---------------------------------------------------------------------------------------------
# relay and consume


def _start_probes(deps, args, loops: list[Supervised]) -> list:
    """`--health-port`: answer /healthz and /readyz; `--metrics-port` (consume): /metrics
    (shared.runtime.health); returns the servers to shut down."""
    from shared.runtime.health import not_ready, serve_metrics, serve_probes

    servers = [serve_probes(args.health_port, lambda: not_ready(deps, loops))] if args.health_port else []
    if getattr(args, "metrics_port", None):
        servers.append(serve_metrics(args.metrics_port, deps))
    return servers


def cmd_relay(deps, args) -> int:
    stop = _stop_on_signals()
    settings = deps.settings
    supervised, total, kafka = Supervised("relay"), [0], {}
    # On AWS the relay is the one always-running service (infra/template.yaml): the sweeps run here.
    loops = [supervised] + ([] if args.once else start_upkeep(deps, stop))
    probes = _start_probes(deps, args, loops)

    def loop() -> None:  # again after every outage of PostgreSQL or Kafka
        with deps.connect() as conn:
            outbox.listen_for_outbox(conn)
            if settings.embedded_bus:
                relay_once = lambda: bus.relay_to_bus(conn, DEPLOYED)  # noqa: E731
            else:
                from shared.runtime.kafka_bus import (
                    ensure_topics,
                    make_producer,
                    relay_to_kafka,
                )

                if "producer" not in kafka:
                    ensure_topics(settings.kafka_bootstrap, settings.kafka_partitions)
                    kafka["producer"] = make_producer(settings.kafka_bootstrap)
                relay_once = lambda: relay_to_kafka(conn, kafka["producer"])  # noqa: E731
            while not stop.is_set():
                sent = relay_once()
                supervised.cycle()
                total[0] += sent
                if sent:
                    print(f"relayed {sent} event(s)", flush=True)
                elif args.once:
                    return
                else:
                    outbox.wait_for_outbox(conn, timeout=1.0)

    try:
        supervised.run(loop, stop.is_set)
    finally:
        stop.set()
        for server in probes:
            server.shutdown()
    print(f"relay stopped after {total[0]} event(s)", flush=True)
    return 0


def cmd_consume(deps, args) -> int:
    functions = _functions(args.functions)
    stop = _stop_on_signals()
    if any(f.name == "on_generation_requested" for f in functions):
        start_runtime_workers(deps)
    loops = [] if args.once else start_upkeep(deps, stop)
    probes = _start_probes(deps, args, loops)
    try:
        return _consume(deps, args, functions, stop, loops)
    finally:
        stop.set()
        for server in probes:
            server.shutdown()
        deps.close()  # the local workers finish or give back their jobs; queued ones wait for the next start


def _consume(deps, args, functions, stop, loops: list[Supervised]) -> int:
    """Run `functions` until `stop`; each loop's supervision joins `loops` (for the probes)."""
    settings = deps.settings
    names = ", ".join(f.name for f in functions)
    if settings.embedded_bus:
        print(f"consuming on the embedded bus: {names}", flush=True)
        if args.once:
            bus.drain(deps, DEPLOYED, functions, on_outcome=_report)
        else:
            loops.append(bus_loop := Supervised("embedded bus"))
            bus.run_bus(deps, DEPLOYED, functions, should_stop=stop.is_set, on_outcome=_report, supervision=bus_loop)
        return 0

    from shared.runtime.kafka_bus import (
        KafkaFunctionRunner,
        ensure_topics,
        make_producer,
    )

    ensure_topics(settings.kafka_bootstrap, settings.kafka_partitions)
    producer = make_producer(settings.kafka_bootstrap)
    idle_since = [time.monotonic()]

    def on_outcome(function, outcome):
        idle_since[0] = time.monotonic()
        _report(function, outcome)

    def should_stop() -> bool:
        return stop.is_set() or (args.once and time.monotonic() - idle_since[0] > args.idle_seconds)

    runners = [KafkaFunctionRunner(deps, f, settings.kafka_bootstrap, producer, instance_id=args.instance_id)
               for f in functions]
    loops += [r.supervised for r in runners]
    print(f"consuming from Kafka at {settings.kafka_bootstrap}: {names}", flush=True)
    crashed: list[str] = []

    def run(runner) -> None:
        try:
            runner.run(should_stop, on_outcome)
        except BaseException as exc:  # noqa: BLE001 - a bug: every runner stops and the process says so
            crashed.append(f"{runner.function.name}: {type(exc).__name__}: {exc}")
            stop.set()
            raise

    threads = [threading.Thread(target=run, args=(r,), name=r.function.name) for r in runners]
    for thread in threads:
        thread.start()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.2)  # wake up for signals
    producer.close()
    print(f"consumers stopped at {datetime.now(timezone.utc):%H:%M:%S}", flush=True)
    if crashed:
        print(f"tierflow consume: stopped because a consumer failed: {'; '.join(crashed)}", file=sys.stderr)
        return 1
    return 0


def _instance_name(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,200}", text):
        raise argparse.ArgumentTypeError(f"--instance-id takes 1 to 200 letters, digits, '.', '_' or '-', not {text!r}")
    return text


HEALTH_PORT_HELP = ("answer GET /healthz and /readyz on this port (host 127.0.0.1 unless given, "
                    "e.g. 0.0.0.0:8081 in a container)")


METRICS_PORT_HELP = ("answer GET /metrics (Prometheus text; the observability extra) on this port (host 127.0.0.1 "
                     "unless given)")


def register(commands) -> None:
    """Add these commands to the `tierflow` parser."""
    event_commands = add_group(commands, "events", "publish, follow and repair events")
    publish = add_command(event_commands, "publish", cmd_events_publish, "validate an event and publish it")
    publish.add_argument("type", metavar="TYPE", help=f"event type: {', '.join(EVENT_TYPES)}")
    publish.add_argument("--data", required=True, metavar="JSON", help="the event's data, e.g. '{\"scene_id\": 12}'")

    tail = add_command(event_commands, "tail", cmd_events_tail, "follow events as they are published")
    tail.add_argument("types", nargs="*", metavar="TYPE", help="event types to follow (default: all)")
    tail.add_argument("--from-beginning", action="store_true", help="start with the oldest event kept")
    tail.add_argument("--limit", type=int, default=0, help="exit after this many events")
    tail.add_argument("--timeout", type=float, default=0, help="exit after this many seconds")

    dlq = add_command(event_commands, "dlq", cmd_events_dlq, "list dead letters; --replay sends them back")
    dlq.add_argument("--replay", action="store_true", help="re-deliver every listed dead letter after a fix")

    relay = add_command(commands, "relay", cmd_relay, "publish the outbox (to Kafka, or the embedded bus)",
                        json_output=False)
    relay.add_argument("--once", action="store_true", help="exit when the outbox is empty")
    relay.add_argument("--health-port", metavar="[HOST:]PORT", type=address_argument, help=HEALTH_PORT_HELP)

    consume = add_command(commands, "consume", cmd_consume, "run event handlers (one consumer group each)",
                          json_output=False)
    consume.add_argument("functions", nargs="*", metavar="FUNCTION", help="functions to run (default: all)")
    consume.add_argument("--once", action="store_true", help="exit when nothing is left to process")
    consume.add_argument("--idle-seconds", type=float, default=3.0,
                         help="with --once on Kafka: how long without records counts as nothing left")
    consume.add_argument("--health-port", metavar="[HOST:]PORT", type=address_argument, help=HEALTH_PORT_HELP)
    consume.add_argument("--metrics-port", metavar="[HOST:]PORT", type=address_argument, help=METRICS_PORT_HELP)
    consume.add_argument("--instance-id", metavar="NAME", type=_instance_name,
                         help="on Kafka, a stable name for this process (a pod or systemd instance name): started "
                              "again under the same name it takes its partitions back at once, without a rebalance "
                              "(static membership); never two running processes with one name")
