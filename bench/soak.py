"""Chaos soak: the whole studio flow on the Kafka runtime while processes are killed and services restart.

One run on real services under one directory: a single-node Kafka broker, the embedded PostgreSQL
and the embedded S3 server. `tierflow relay` (two, one relays at a time) and `tierflow consume`
(two, each with its local warm worker) run as separate processes. The bench plays the studio:
it submits N scenes (2 segments each, tiny model, 2 frames, 1 step) in a project that upscales
approved scenes to Production automatically, approves each Draft once it is generated, and asks
for the delivery of each Production scene once that is generated. Meanwhile a chaos loop
SIGKILLs a random relay, consumer or worker process (workers are found as the consumers'
children), restarts the broker and PostgreSQL, and publishes poison events. A supervisor in the
bench starts a killed relay or consumer again, as systemd or Kubernetes would; a killed worker
is started again by its consumer's local dispatcher.

At the end it checks, from the database, S3 and the dead-letter topics:
- every scene reached its terminal state (Drafts approved, Production scenes generated) and
  every delivery completed, with its manifest in S3 (else: stuck);
- exactly one succeeded attempt per segment, its file matching its sha256 (more: doubled;
  none: lost); exactly one upscale target per approved scene; one delivery.completed per delivery;
- no unsent outbox row (stuck); exactly the poison events dead-lettered (any other dead letter
  counts as lost: an event that was not applied).
recovery_p99_s: right after each fault (a kill, a restart) the bench publishes a canary, an
approval of an already approved scene (it changes nothing), through the outbox; a fault's
recovery is the time from the fault until the canary was applied (relay, broker, consumer group
and database all working again); the 99th percentile, nearest rank. The last line is

    soak: kills=K restarts=R scenes=S lost=0 doubled=0 stuck=0 recovery_p99_s=X

    python bench/soak.py [--quick] [--scenes 30] [--kills 100] [--kill-every 3] [--home DIR] [--seed N]

--quick: 6 scenes, 10 kills, one restart of the broker and of PostgreSQL (the test suite runs it).
Exits 1 when a check fails.
"""

import argparse
import hashlib
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# Run as a script, Python puts bench/ first on sys.path, where bench/events.py would shadow the
# `events` package. Put the repository root there instead.
_BENCH_DIR = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH_DIR.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]

import psycopg  # noqa: E402 - after the path fix

from infra import embedded  # noqa: E402
from shared.adapters import db  # noqa: E402

PROJECT = "soak"
POISON = (b"{not json", b"null", b'{"specversion": "1.0"}', b"\xff\xfe not text")
POISON_TOPICS = ("scene.approved", "upscale.requested", "generation.completed", "delivery.requested")


@dataclass
class Plan:
    scenes: int
    kills: int
    broker_restarts: int
    db_restarts: int
    poison: int = 10
    kill_every: float = 3.0


QUICK = Plan(scenes=6, kills=10, broker_restarts=1, db_restarts=1)
FULL = Plan(scenes=30, kills=100, broker_restarts=3, db_restarts=3)


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def retrying(action, what: str, seconds: float = 120.0):
    """Run `action()`, again while PostgreSQL is out of reach (the bench's own calls ride out the
    restarts it causes)."""
    from shared.errors import ServiceUnavailable

    deadline = time.monotonic() + seconds
    while True:
        try:
            return action()
        except (psycopg.OperationalError, ServiceUnavailable) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: the database stayed out of reach: {exc}") from exc
            time.sleep(0.5)


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


@dataclass
class Supervisor:
    """The relay and consumer processes, started again when they die (as systemd would)."""

    env: dict
    logs: Path
    commands: dict[str, list[str]]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    restarted: int = 0
    stopping: bool = False

    def start(self, name: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen([sys.executable, "-m", "functions.cli", *self.commands[name]],
                                                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def start_all(self) -> None:
        for name in self.commands:
            self.start(name)

    def keep_running(self) -> None:
        for name, process in list(self.processes.items()):
            if not self.stopping and process.poll() is not None:
                if process.returncode not in (0, -signal.SIGKILL):
                    say(f"{name} exited with {process.returncode} (see {self.logs / (name + '.log')}); starting it again")
                self.start(name)
                self.restarted += 1

    def victims(self) -> list[tuple[str, int]]:
        """What a kill may hit: every relay and consumer, and the workers the consumers run."""
        alive = [(name, p.pid) for name, p in self.processes.items() if p.poll() is None]
        workers = [(f"worker of {name}", child) for name, pid in alive if name.startswith("consume")
                   for child in children_of(pid)]
        return alive + workers

    def stop(self) -> None:
        self.stopping = True
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()


class Chaos:
    """Kills, restarts and poison events, spread over the plan's window; each fault's time kept."""

    def __init__(self, plan: Plan, rng: random.Random, supervisor: Supervisor, broker, home: Path, bootstrap: str,
                 canary):
        self.plan, self.rng, self.supervisor, self.broker, self.home = plan, rng, supervisor, broker, home
        self.canary = canary  # emits a no-op event through the whole pipeline; returns its id
        self.bootstrap = bootstrap
        self.kills = self.restarts = 0
        self.faults: list[tuple[float, str]] = []  # time.time() of each fault, and its canary's event id
        self.poison_sent: list[str] = []  # "topic-partition-offset" of each poison event
        self.done = threading.Event()
        self.error: BaseException | None = None

    def schedule(self) -> list[tuple[float, str]]:
        window = self.plan.kills * self.plan.kill_every
        steps = [(i * self.plan.kill_every + self.rng.uniform(0, self.plan.kill_every / 2), "kill")
                 for i in range(self.plan.kills)]
        for kind, count in (("restart_broker", self.plan.broker_restarts),
                            ("restart_postgres", self.plan.db_restarts)):
            steps += [((i + 0.5) * window / count + self.rng.uniform(-1, 1), kind) for i in range(count)]
        steps += [(self.rng.uniform(0, window), "poison") for _ in range(self.plan.poison)]
        return sorted(steps)

    def run(self) -> None:
        try:
            start = time.monotonic()
            for at, kind in self.schedule():
                time.sleep(max(0.0, start + at - time.monotonic()))
                getattr(self, kind)()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            self.done.set()

    def kill(self) -> None:
        victims = self.supervisor.victims()
        if not victims:
            return
        name, pid = self.rng.choice(victims)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills += 1
        self.fault(time.time())

    def fault(self, at: float) -> None:
        self.faults.append((at, retrying(self.canary, "sending a canary")))

    def restart_broker(self) -> None:
        say("restarting the Kafka broker")
        at = time.time()
        self.broker.restart()
        self.restarts += 1
        self.fault(at)

    def restart_postgres(self) -> None:
        say("restarting PostgreSQL")
        at = time.time()
        embedded.restart_postgres(self.home, down_seconds=2.0)
        self.restarts += 1
        self.fault(at)

    def poison(self) -> None:
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", retries=10)
        try:
            topic = self.rng.choice(POISON_TOPICS)
            metadata = producer.send(topic, key=b"poison", value=self.rng.choice(POISON)).get(timeout=60)
            self.poison_sent.append(f"{metadata.topic}-{metadata.partition}-{metadata.offset}")
        finally:
            producer.close()


def play_the_studio(deps, plan: Plan, deadline: float) -> dict:
    """Submit the scenes, approve each generated Draft, deliver each generated Production scene,
    until every delivery is decided or `deadline`; returns what was asked."""
    from shared.domain import delivery, scenes, upscale
    from shared.domain.recipe import SegmentSpec

    retrying(lambda: upscale.set_auto_upscale(deps, PROJECT, "production"), "setting the policy")
    drafts = []
    for i in range(plan.scenes):
        specs = [SegmentSpec(prompt=f"a lighthouse in a storm, shot {i}.{n}", seed=7000 + 2 * i + n, frames=2, steps=1)
                 for n in range(2)]
        drafts.append(retrying(lambda: scenes.submit_scene(deps, project=PROJECT, name=f"scene-{i}", aspect="16:9",
                                                           segments=specs), "submitting"))
    approved, deliveries = set(), {}

    def step() -> bool:
        with deps.connect() as conn:
            rows = conn.execute(
                "SELECT id, status, upscaled_from_scene_id AS source FROM scenes WHERE id = ANY(%s) "
                "OR upscaled_from_scene_id = ANY(%s)", [drafts, drafts]).fetchall()
            decided = conn.execute("SELECT count(*) AS n FROM deliveries WHERE id = ANY(%s) AND status <> 'requested'",
                                   [list(deliveries.values())]).fetchone()["n"]
        for row in rows:
            if row["source"] is None and row["status"] == "generated" and row["id"] not in approved:
                scenes.approve(deps, row["id"], approved_by="soak")
                approved.add(row["id"])
            elif row["source"] is not None and row["status"] == "generated" and row["id"] not in deliveries:
                deliveries[row["id"]] = delivery.request_delivery(deps, PROJECT, [row["id"]], requested_by="soak")
        return decided == plan.scenes

    while time.monotonic() < deadline:
        if retrying(step, "following the scenes"):
            break
        time.sleep(0.5)
    return {"drafts": drafts, "approved": sorted(approved), "deliveries": deliveries}


def dead_letters(bootstrap: str) -> list[dict]:
    """Every message on the dead-letter topics, as `tierflow events dlq` shows them."""
    from kafka import KafkaConsumer

    from events import ALL_TOPICS, dlq_topic
    from shared.runtime.dead_letters import decoded

    consumer = KafkaConsumer(*[dlq_topic(t) for t in ALL_TOPICS], bootstrap_servers=bootstrap, group_id=None,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)
    try:
        return [decoded(record) for record in consumer]
    finally:
        consumer.close()


def check(deps, asked: dict, poison_sent: list[str], bootstrap: str) -> dict:
    """Count what was lost, doubled or left stuck (see the module's docstring)."""
    problems = {"lost": [], "doubled": [], "stuck": []}
    with deps.connect() as conn:
        drafts = asked["drafts"]
        for row in conn.execute("SELECT id, status FROM scenes WHERE id = ANY(%s)", [drafts]):
            if row["status"] != "approved":
                problems["stuck"].append(f"draft scene {row['id']} is {row['status']}")
        targets = conn.execute("SELECT upscaled_from_scene_id AS source, array_agg(id) AS ids FROM scenes "
                               "WHERE upscaled_from_scene_id = ANY(%s) GROUP BY 1", [drafts]).fetchall()
        by_source = {r["source"]: r["ids"] for r in targets}
        for source in asked["approved"]:
            ids = by_source.get(source, [])
            if len(ids) > 1:
                problems["doubled"].append(f"scene {source} has {len(ids)} upscale targets {ids}")
            elif not ids:
                problems["lost"].append(f"approved scene {source} has no upscale target")
        all_targets = [i for ids in by_source.values() for i in ids]
        for row in conn.execute("SELECT id, status FROM scenes WHERE id = ANY(%s)", [all_targets]):
            if row["status"] != "generated":
                problems["stuck"].append(f"production scene {row['id']} is {row['status']}")
        for row in conn.execute(
                """SELECT g.id, count(*) FILTER (WHERE j.status = 'succeeded') AS won,
                          count(*) FILTER (WHERE j.status IN ('queued', 'running')) AS active
                   FROM segments g JOIN generation_jobs j ON j.segment_id = g.id
                   WHERE g.scene_id = ANY(%s) GROUP BY g.id""", [drafts + all_targets]):
            if row["won"] > 1:
                problems["doubled"].append(f"segment {row['id']} has {row['won']} succeeded attempts")
            elif row["won"] == 0 and not row["active"]:
                problems["lost"].append(f"segment {row['id']} has no succeeded or active attempt")
        for job in conn.execute(
                """SELECT j.id, j.video_key, j.sha256 FROM generation_jobs j JOIN segments g ON g.id = j.segment_id
                   WHERE j.status = 'succeeded' AND g.scene_id = ANY(%s)""", [drafts + all_targets]):
            body = deps.s3.get_object(Bucket=deps.bucket, Key=job["video_key"])["Body"].read()
            if hashlib.sha256(body).hexdigest() != job["sha256"]:
                problems["lost"].append(f"job {job['id']}: {job['video_key']} does not match its sha256")
        for target in all_targets:
            if target not in asked["deliveries"]:
                problems["stuck"].append(f"production scene {target} was never ready for delivery")
        for target, delivery_id in asked["deliveries"].items():
            row = conn.execute("SELECT status, manifest_key FROM deliveries WHERE id = %s", [delivery_id]).fetchone()
            completions = conn.execute(
                "SELECT count(*) AS n FROM outbox WHERE topic = 'delivery.completed' AND message_key = %s",
                [str(delivery_id)]).fetchone()["n"]
            if row["status"] != "completed":
                problems["stuck"].append(f"delivery {delivery_id} of scene {target} is {row['status']}")
            elif completions != 1:
                problems["doubled"].append(f"delivery {delivery_id} was completed {completions} times")
            else:
                deps.s3.head_object(Bucket=deps.bucket, Key=row["manifest_key"])  # raises when missing
        unsent = conn.execute("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL").fetchone()["n"]
        if unsent:
            problems["stuck"].append(f"{unsent} outbox row(s) never sent")
    letters = dead_letters(bootstrap)
    origins = [letter["origin"] for letter in letters]
    for letter in letters:
        if letter["origin"] not in poison_sent:
            problems["lost"].append(f"dead letter of a real event {letter['origin']}: {letter['reason']}")
    for origin in poison_sent:
        if origin not in origins:
            problems["lost"].append(f"poison event {origin} was not dead-lettered")
    copies = len(origins) - len(set(origins))
    return {**problems, "dead_letters": len(set(origins)), "dead_letter_copies": copies}


def canary_scene(deps) -> int:
    """An approved scene outside the soak's project: approving it again changes nothing, so its
    approval is a canary that goes through the relay, the broker and a consumer group."""
    with deps.uow() as uow:
        project = uow.conn.execute("INSERT INTO projects (name) VALUES ('soak-canary') RETURNING id").fetchone()["id"]
        return uow.conn.execute(
            """INSERT INTO scenes (project_id, name, aspect_width, aspect_height, width, height, status,
                                   resolution_tier_id, approved_at)
               VALUES (%s, 'canary', 16, 9, 512, 288, 'approved', (SELECT id FROM resolution_tiers WHERE name = 'draft'),
                       now()) RETURNING id""", [project]).fetchone()["id"]


def recovery(deps, faults: list[tuple[float, str]]) -> tuple[float, list[str]]:
    """For each fault, the seconds from the fault until its canary was applied: the 99th
    percentile (nearest rank), and the canaries never applied."""
    with deps.connect() as conn:
        applied = {r["event_id"]: r["at"] for r in conn.execute(
            "SELECT event_id, EXTRACT(EPOCH FROM processed_at)::float8 AS at FROM processed_events "
            "WHERE event_id = ANY(%s)", [[event_id for _, event_id in faults]])}
    waits = sorted(applied[event_id] - at for at, event_id in faults if event_id in applied)
    never = [f"the canary {event_id} sent after a fault was never applied" for _, event_id in faults
             if event_id not in applied]
    return (waits[max(0, math.ceil(0.99 * len(waits)) - 1)] if waits else 0.0), never


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 scenes, 10 kills, one restart of each service")
    parser.add_argument("--scenes", type=int, help="scenes to take through the flow (default 30)")
    parser.add_argument("--kills", type=int, help="SIGKILLs of relays, consumers and workers (default 100)")
    parser.add_argument("--kill-every", type=float, help="seconds between kills (default 3)")
    parser.add_argument("--home", type=Path, help="where the services keep their data (default: a temporary directory)")
    parser.add_argument("--seed", type=int, default=1, help="the chaos's random seed")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    plan = Plan(scenes=args.scenes or base.scenes, kills=args.kills if args.kills is not None else base.kills,
                broker_restarts=base.broker_restarts, db_restarts=base.db_restarts,
                kill_every=args.kill_every or base.kill_every)
    with tempfile.TemporaryDirectory(prefix="tierflow-soak-") as scratch:
        home = (args.home or Path(scratch)).resolve()
        return soak(plan, home, random.Random(args.seed))


def soak(plan: Plan, home: Path, rng: random.Random) -> int:
    from infra.kafka import start_broker
    from shared.bootstrap import Deps
    from shared.config import Settings
    from shared.media.tiny import build_tiny_model
    from shared.runtime.kafka_bus import ensure_topics

    (home / "logs").mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    url = embedded.postgres_url(home)
    with db.connect(url) as conn:
        db.migrate(conn)
    broker = start_broker(home / "kafka", partitions=4)
    supervisor = None
    try:
        ensure_topics(broker.bootstrap, 4)
        model = str(build_tiny_model(home / "models" / "tiny"))
        settings = {"TIERFLOW_HOME": str(home), "TIERFLOW_DATABASE_URL": url, "TIERFLOW_KAFKA_BOOTSTRAP": broker.bootstrap,
                    "TIERFLOW_MODEL": model, "TIERFLOW_LOCAL_WORKERS": "1", "TIERFLOW_JOB_LEASE_SECONDS": "10",
                    "TIERFLOW_MAX_ATTEMPTS": "20", "TIERFLOW_RETRY_BACKOFF_SECONDS": "0.5",
                    "TIERFLOW_DELIVERY_REDRIVE_SECONDS": "60", "TIERFLOW_SHUTDOWN_GRACE_SECONDS": "5"}
        deps = Deps(Settings(home=home, database_url=url, kafka_bootstrap=broker.bootstrap, model=model))
        _ = deps.s3  # the embedded S3 server (and the bucket), started once here for every process
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("TIERFLOW_")}, **settings}
        supervisor = Supervisor(env, home / "logs", {"relay-1": ["relay"], "relay-2": ["relay"],
                                                     "consume-1": ["consume", "--instance-id", "consume-1"],
                                                     "consume-2": ["consume", "--instance-id", "consume-2"]})
        supervisor.start_all()
        canary = canary_scene(deps)

        def send_canary() -> str:
            from events import SceneApproved

            with deps.uow() as uow:
                return uow.emit(SceneApproved(scene_id=canary, approved_by="soak-canary"))

        chaos = Chaos(plan, rng, supervisor, broker, home, broker.bootstrap, send_canary)
        keeper_stop = threading.Event()

        def keep() -> None:
            while not keeper_stop.wait(0.5):
                supervisor.keep_running()

        threading.Thread(target=keep, name="supervisor", daemon=True).start()
        threading.Thread(target=chaos.run, name="chaos", daemon=True).start()
        say(f"soak: {plan.scenes} scenes, {plan.kills} kills every {plan.kill_every:g} s, "
            f"{plan.broker_restarts} broker and {plan.db_restarts} PostgreSQL restart(s), {plan.poison} poison events")
        window = plan.kills * plan.kill_every
        asked = play_the_studio(deps, plan, deadline=time.monotonic() + window + 60 * plan.scenes + 300)
        chaos.done.wait()
        if chaos.error:
            raise chaos.error
        say(f"chaos over after {chaos.kills} kills and {chaos.restarts} restarts; letting the system settle")
        settle_deadline = time.monotonic() + 120
        while time.monotonic() < settle_deadline:  # what is still in flight (a dead letter, a sent mark)
            with deps.connect() as conn:
                unsent = conn.execute("SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL").fetchone()["n"]
            if not unsent and len({d["origin"] for d in dead_letters(broker.bootstrap)}) >= len(chaos.poison_sent):
                break
            time.sleep(1)
        keeper_stop.set()
        result = check(deps, asked, chaos.poison_sent, broker.bootstrap)
        p99, never = recovery(deps, chaos.faults)
        result["lost"] += never
    finally:
        if supervisor:
            supervisor.stop()
        broker.stop()
        embedded.stop(home)
    for kind in ("lost", "doubled", "stuck"):
        for line in result[kind]:
            say(f"{kind}: {line}")
    say(f"dead letters: {result['dead_letters']} of {len(chaos.poison_sent)} poison events "
        f"({result['dead_letter_copies']} extra copies of one); {supervisor.restarted} process restarts by the "
        f"supervisor; {time.monotonic() - started:.0f} s in all")
    print(f"soak: kills={chaos.kills} restarts={chaos.restarts + supervisor.restarted} scenes={plan.scenes} "
          f"lost={len(result['lost'])} doubled={len(result['doubled'])} stuck={len(result['stuck'])} "
          f"recovery_p99_s={p99:.1f}", flush=True)
    return 0 if not (result["lost"] or result["doubled"] or result["stuck"]) else 1


if __name__ == "__main__":
    sys.exit(main())
