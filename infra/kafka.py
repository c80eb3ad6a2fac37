"""A native single-node Apache Kafka broker (KRaft mode) for integration tests and CI: no Docker.

The broker's jars come from Maven Central, fetched once with Maven and cached outside the repo
(default `~/.cache/tierflow/kafka-<version>/`, so CI runs on the same machine reuse them; Maven's
own ~/.m2 is a second cache). A broker is a plain `java ... kafka.Kafka server.properties`
process in its own session, bound to 127.0.0.1 only, with everything it writes under one
data directory:

    data_dir/server.properties   generated broker config (fresh ports on every start)
    data_dir/log4j2.properties   logging config: the broker logs to a file, never to stdout
    data_dir/kraft/              log.dirs: the metadata log and every topic's partitions
    data_dir/logs/server.log     the broker's log (log4j2)
    data_dir/logs/kafka.out      the JVM's stdout/stderr (crashes before logging is up)
    data_dir/logs/format.out     the storage tool's output

Cache layout:

    cache_dir/pom.xml            the one dependency Maven resolves (+ the logging backend)
    cache_dir/lib/*.jar          the broker's runtime classpath
    cache_dir/classpath.txt      the completion marker: written last, read by every later call
    cache_dir/fetch.lock         serialises concurrent fetches (fcntl)
    cache_dir/maven.log          Maven's output of the last fetch

CLI:
    python -m infra.kafka fetch [--version V] [--cache-dir DIR]   pre-fetch; prints the cache dir
    python -m infra.kafka run --dir DIR [--partitions N]          prints `bootstrap=HOST:PORT`,
                                                                  runs until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import atexit
import base64
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from infra.net import free_ports, port_open

# 4.1.x: the newest line the brief names as known-good; kafka-python 3.x speaks its protocol
# versions (4.0 dropped the pre-2.1 ones, KIP-896). Other 4.x versions work via `version=`.
DEFAULT_VERSION = "4.1.1"

# Kafka 4.x logs through slf4j 1.7 into log4j2, but its POM does not bring a complete backend:
# 4.0.x declares no log4j artifact at all (the binary distribution bundles them), 4.1.x brings
# log4j-api/-core 2.24.3 but no slf4j binding, so slf4j would fall back to a no-op logger and
# the broker log would be empty. Declaring api + core + slf4j binding at one version (the one
# 4.1 uses) gives every 4.x version a matching, working backend (Maven's nearest-wins rule makes
# these direct dependencies override Kafka's transitive ones).
LOG4J_VERSION = "2.24.3"

# Pinned, because Maven 3.8's default dependency plugin (2.8) is old and its defaults differ.
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
MAVEN_TIMEOUT_SECONDS = 900.0

# -Xms/-Xmx as the brief says: plenty for a test broker; the JVM's default (1/4 of RAM) would
# take gigabytes on a 24 GiB machine.
JVM_HEAP = ["-Xms256m", "-Xmx512m"]
# C1 only: a test broker starts ~1.5 s (about a third) faster and leaves the 2 cores to the
# tests instead of C2 compiler threads; its lower peak throughput does not matter at test loads.
JVM_FLAGS = ["-XX:+UseG1GC", "-XX:TieredStopAtLevel=1"]
FORMAT_JVM_HEAP = ["-Xms64m", "-Xmx256m"]

MARKER = "classpath.txt"
FATAL_STARTUP_LINE = "Exiting Kafka due to fatal exception during startup"


class KafkaLauncherError(RuntimeError):
    """Fetching the jars or starting/stopping the broker failed; the message has the log tail."""


# ---------------------------------------------------------------------------------------------
# Fetching the jars


def default_cache_dir(version: str = DEFAULT_VERSION) -> Path:
    """`~/.cache/tierflow/kafka-<version>` ($XDG_CACHE_HOME instead of ~/.cache when set)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "tierflow" / f"kafka-{version}"


def _pom(version: str) -> str:
    def dep(group: str, artifact: str, ver: str) -> str:
        return (f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
                f"<version>{ver}</version></dependency>\n")

    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n'
        "  <modelVersion>4.0.0</modelVersion>\n"
        "  <groupId>tierflow.infra</groupId><artifactId>kafka-broker-classpath</artifactId>"
        f"<version>{version}</version>\n"
        "  <packaging>pom</packaging>\n"
        "  <dependencies>\n"
        + dep("org.apache.kafka", "kafka_2.13", version)
        + dep("org.apache.logging.log4j", "log4j-api", LOG4J_VERSION)
        + dep("org.apache.logging.log4j", "log4j-core", LOG4J_VERSION)
        + dep("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION)
        + "  </dependencies>\n</project>\n"
    )


def _read_marker(cache_dir: Path) -> str | None:
    """The cached classpath if the marker exists and every jar it names is still there."""
    try:
        classpath = (cache_dir / MARKER).read_text().strip()
    except OSError:
        return None
    jars = classpath.split(os.pathsep) if classpath else []
    if not jars or not all(Path(jar).is_file() for jar in jars):
        return None  # half-deleted cache: fetch again
    return classpath


@contextmanager
def _file_lock(path: Path):
    with open(path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run_maven(cache_dir: Path, output_dir: Path) -> None:
    """Resolve the POM in cache_dir and copy its runtime dependencies into output_dir."""
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaLauncherError("Maven (`mvn`) is not on PATH: it is needed once to fetch Kafka's jars")
    log_path = cache_dir / "maven.log"
    command = [
        mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(cache_dir / "pom.xml"),
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        f"-DoutputDirectory={output_dir}",
        "-DincludeScope=runtime",  # what the broker needs to run, no test/provided jars
    ]
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(command, cwd=cache_dir, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=MAVEN_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            raise KafkaLauncherError(
                f"Maven did not finish fetching Kafka in {MAVEN_TIMEOUT_SECONDS:.0f}s; "
                f"log {log_path}:\n{_tail(log_path)}") from None
    if done.returncode != 0:
        raise KafkaLauncherError(
            f"Maven failed (exit {done.returncode}) fetching org.apache.kafka:kafka_2.13 "
            f"from {cache_dir / 'pom.xml'}; log {log_path}:\n{_tail(log_path)}")


def fetch_kafka(version: str = DEFAULT_VERSION, cache_dir: Path | None = None) -> str:
    """Make sure Kafka `version`'s broker jars are cached and return the Java classpath.

    The first call runs Maven once (a few tens of seconds with an empty ~/.m2); every later
    call, in any process, only reads the marker file. Concurrent first calls are serialised by
    an fcntl lock, and the marker is written last (atomically), so a crashed or racing fetch
    never leaves a cache that looks complete but is not.
    Raises KafkaLauncherError (with the tail of Maven's output) if fetching fails.
    """
    cache_dir = (cache_dir or default_cache_dir(version)).expanduser().resolve()
    classpath = _read_marker(cache_dir)
    if classpath is not None:
        return classpath  # fast path: no lock, no Maven
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(cache_dir / "fetch.lock"):
        # Another process may have finished the fetch while this one waited for the lock.
        classpath = _read_marker(cache_dir)
        if classpath is not None:
            return classpath
        lib, staging = cache_dir / "lib", cache_dir / "lib.partial"
        shutil.rmtree(staging, ignore_errors=True)  # leftovers of an interrupted fetch
        (cache_dir / "pom.xml").write_text(_pom(version))
        _run_maven(cache_dir, staging)
        jars = sorted(staging.glob("*.jar"))
        if not any(jar.name.startswith(f"kafka_2.13-{version}") for jar in jars):
            raise KafkaLauncherError(f"Maven succeeded but {staging} has no kafka_2.13-{version} jar")
        shutil.rmtree(lib, ignore_errors=True)
        staging.rename(lib)
        classpath = os.pathsep.join(str(lib / jar.name) for jar in jars)
        partial_marker = cache_dir / (MARKER + ".partial")
        partial_marker.write_text(classpath + "\n")
        os.replace(partial_marker, cache_dir / MARKER)
        return classpath


# ---------------------------------------------------------------------------------------------
# Running a broker


@dataclass(eq=False)
class KafkaBroker:
    """A running broker started by `start_broker`; `stop()` it (or use it as a context manager)."""

    bootstrap: str  # "127.0.0.1:PORT", the PLAINTEXT listener
    pid: int
    data_dir: Path
    log_file: Path  # the broker's log4j log
    _process: subprocess.Popen = field(repr=False)
    _classpath: str = field(repr=False, default="")

    @property
    def returncode(self) -> int | None:
        """None while running; 143 after a clean SIGTERM shutdown (the JVM's 128+15), -9 if killed."""
        return self._process.poll()

    def is_running(self) -> bool:
        """True while the broker process has not exited."""
        return self._process.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM (Kafka's clean shutdown), wait up to `timeout` s, then SIGKILL. Idempotent."""
        _terminate(self._process, timeout)

    def restart(self, timeout: float = 120) -> None:
        """Stop the broker cleanly and start it again on the same ports with the same data, as a
        broker restart in production does; returns once it serves again."""
        self.stop()
        port = int(self.bootstrap.rsplit(":", 1)[1])
        again = _launch(java_executable(), self._classpath, self.data_dir, port, time.monotonic() + timeout)
        self.pid, self._process = again.pid, again._process

    def __enter__(self) -> KafkaBroker:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# Brokers of this process that have not been stopped: killed at interpreter exit, so a test run
# that forgets (or fails before) `stop()` does not leave a JVM behind.
_UNSTOPPED: dict[int, subprocess.Popen] = {}


def _terminate(process: subprocess.Popen, timeout: float) -> None:
    if process.poll() is None:
        # Own session => pgid == pid; signal the group so nothing the JVM spawned survives.
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait()
    _UNSTOPPED.pop(process.pid, None)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_UNSTOPPED.values()):
        _terminate(process, timeout=10)


def _cluster_id() -> str:
    # Kafka's Uuid.toString format: 16 random bytes, URL-safe base64 without padding. Like
    # Uuid.randomUuid, avoid a leading "-", which the storage tool's argv parser takes for a flag.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def _server_properties(data_dir: Path, port: int, controller_port: int, partitions: int) -> str:
    settings = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # A static voter set: nothing port-specific goes into the formatted storage (unlike
        # the dynamic quorum's `controller.quorum.bootstrap.servers` + `format --standalone`,
        # which records the controller endpoint), so a data dir can be restarted on new ports.
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir / "kraft"),
        "num.partitions": str(partitions),
        "default.replication.factor": "1",
        "auto.create.topics.enable": "true",
        # Internal topics default to replication factor 3 and 50 partitions: impossible on one
        # node, and slow to create (the first consumer group would wait for 50 partitions).
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Consumers join at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
        # Small segments and short retention: a test broker's data is throwaway.
        "log.segment.bytes": str(16 * 1024 * 1024),
        "log.retention.hours": "24",
        "log.retention.check.interval.ms": "60000",
        # Fewer threads and a small cleaner buffer (128 MiB by default, on the heap) fit 2 cores
        # and -Xmx512m.
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


_LOG4J2_PROPERTIES = """\
# Everything to one file; ${sys:kafka.logs.dir} is passed as -Dkafka.logs.dir.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
# One line per request at DEBUG/TRACE: far too much even for a log file.
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def java_executable() -> str:
    """The `java` of JAVA_HOME, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    if candidate is not None and candidate.is_file():
        return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaLauncherError("no `java` on PATH (and no JAVA_HOME): Kafka needs Java 17+")
    return found


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        # Maven colours some output even in batch mode; escape codes only garble an error message.
        return _ANSI_ESCAPE.sub("", path.read_text(errors="replace"))[-chars:].strip()
    except OSError:
        return "(no log)"


def _jvm_properties(data_dir: Path) -> list[str]:
    return [
        "-Djava.awt.headless=true",
        f"-Dkafka.logs.dir={data_dir / 'logs'}",
        f"-Dlog4j2.configurationFile={data_dir / 'log4j2.properties'}",
        # log4j2's own shutdown hook would stop logging while Kafka's hook is still shutting
        # down, losing exactly the lines that show whether the shutdown was clean; the file
        # appender flushes every line, so there is nothing for log4j's hook to do.
        "-Dlog4j2.shutdownHookEnabled=false",
    ]


def _format_storage(java: str, classpath: str, data_dir: Path, deadline: float) -> None:
    if (data_dir / "kraft" / "meta.properties").is_file():
        # Already formatted (a restart): keep its cluster id and data. Not `--ignore-formatted`
        # with a new id: the tool still checks the id and fails on the mismatch. The broker
        # itself verifies meta.properties when it starts.
        return
    log_path = data_dir / "logs" / "format.out"
    command = [
        java, *FORMAT_JVM_HEAP, *JVM_FLAGS, *_jvm_properties(data_dir), "-cp", classpath,
        "kafka.tools.StorageTool", "format",
        "-t", _cluster_id(), "-c", str(data_dir / "server.properties"),
    ]
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(command, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            raise KafkaLauncherError(f"formatting Kafka storage timed out; log {log_path}:\n{_tail(log_path)}") from None
    if done.returncode != 0:
        raise KafkaLauncherError(
            f"formatting Kafka storage failed (exit {done.returncode}); log {log_path}:\n{_tail(log_path)}")


def _serves(bootstrap: str) -> bool:
    """True once a real Kafka client gets metadata from the broker (not just an open port)."""
    from kafka.admin import KafkaAdminClient  # kafka-python; imported late: only a probe needs it

    try:
        # Short timeouts (bootstrap defaults to 30 s): if something else answers on the port,
        # the wait loop must get back to checking Kafka's log and process quickly.
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="tierflow-kafka-launcher",
                                 bootstrap_timeout_ms=3000, request_timeout_ms=3000)
    except Exception:  # NoBrokersAvailable and friends: not ready yet
        return False
    try:
        admin.list_topics()
        return True
    except Exception:
        return False
    finally:
        admin.close()


def start_broker(data_dir: Path, *, version: str = DEFAULT_VERSION, partitions: int = 1,
                 timeout: float = 120) -> KafkaBroker:
    """Start a single-node KRaft broker+controller on 127.0.0.1 and wait until it serves.

    Fetches the jars if needed (`fetch_kafka`), picks two free ports, writes server.properties
    and a log4j2 config into `data_dir`, formats the storage (a random cluster id; an already
    formatted `data_dir` is reused as it is, topics and offsets included) and runs
    `java kafka.Kafka` in its own session with its output in `data_dir/logs/`. Returns once a
    Kafka admin client can list topics. `partitions` is the broker's `num.partitions`, used for
    auto-created topics. Raises KafkaLauncherError with the log tail if the broker exits early
    or does not serve within `timeout` seconds (the process is killed then).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    deadline = time.monotonic() + timeout
    data_dir = Path(data_dir).resolve()
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    classpath = fetch_kafka(version)
    java = java_executable()
    (data_dir / "log4j2.properties").write_text(_LOG4J2_PROPERTIES)
    attempts = 3
    for attempt in range(1, attempts + 1):
        port, controller_port = free_ports(2)
        (data_dir / "server.properties").write_text(
            _server_properties(data_dir, port, controller_port, partitions))
        if attempt == 1:
            _format_storage(java, classpath, data_dir, deadline)
        try:
            return _launch(java, classpath, data_dir, port, deadline)
        except _PortTaken:
            if attempt == attempts:
                log_file = data_dir / "logs" / "server.log"
                clashes = [line for line in _read_from(log_file, 0).splitlines() if "Address already in use" in line]
                raise KafkaLauncherError(
                    f"Kafka could not bind its ports in {attempts} attempts (other processes took "
                    f"them first); log {log_file}:\n" + "\n".join(clashes[-3:])) from None
    raise AssertionError("unreachable")


class _PortTaken(Exception):
    """Another process took a chosen port between our probe and Kafka's bind: pick new ones."""


def _launch(java: str, classpath: str, data_dir: Path, port: int, deadline: float) -> KafkaBroker:
    out_path = data_dir / "logs" / "kafka.out"
    log_file = data_dir / "logs" / "server.log"
    # Only this launch's part of the (appended) logs tells why it failed.
    log_start = log_file.stat().st_size if log_file.exists() else 0
    out_start = out_path.stat().st_size if out_path.exists() else 0
    command = [java, *JVM_HEAP, *JVM_FLAGS, *_jvm_properties(data_dir), "-cp", classpath,
               "kafka.Kafka", str(data_dir / "server.properties")]
    with open(out_path, "ab") as out:
        process = subprocess.Popen(command, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    _UNSTOPPED[process.pid] = process
    bootstrap = f"127.0.0.1:{port}"
    broker = KafkaBroker(bootstrap=bootstrap, pid=process.pid, data_dir=data_dir,
                         log_file=log_file, _process=process, _classpath=classpath)
    try:
        while True:
            this_run = _read_from(log_file, log_start)
            # After a fatal startup error Kafka logs this at once but its JVM can take ~30 s more
            # to exit (seen with a port taken): treat the line like the exit itself.
            fatal = FATAL_STARTUP_LINE in this_run
            if fatal or process.poll() is not None:
                _terminate(process, timeout=5)
                if "Address already in use" in this_run + _read_from(out_path, out_start):
                    raise _PortTaken
                raise KafkaLauncherError(
                    f"Kafka failed to start (exit code {process.returncode}); "
                    f"{out_path}:\n{_tail(out_path, 1500)}\n{log_file}:\n{this_run[-3000:].strip()}")
            # The data listener accepts connections only once the broker is unfenced, so an open
            # port is the cheap signal; the admin probe then proves requests are served.
            if port_open(port) and _serves(bootstrap):
                return broker
            if time.monotonic() > deadline:
                raise KafkaLauncherError(
                    f"Kafka did not serve on {bootstrap} in time; {log_file}:\n{_tail(log_file)}")
            time.sleep(0.25)
    except BaseException:
        # Including KeyboardInterrupt: never leave a half-started JVM behind.
        broker.stop(timeout=10)
        raise


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# CLI


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


def main(argv: list[str] | None = None) -> int:
    """`fetch` pre-fetches the jars; `run --dir DIR` runs a broker in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m infra.kafka", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="fetch and cache the broker's jars; print the cache dir")
    fetch.add_argument("--version", default=DEFAULT_VERSION)
    fetch.add_argument("--cache-dir", type=Path)
    run = commands.add_parser("run", help="run a broker until SIGTERM/SIGINT; prints bootstrap=HOST:PORT")
    run.add_argument("--dir", type=Path, required=True, help="data directory (created if missing)")
    run.add_argument("--version", default=DEFAULT_VERSION)
    run.add_argument("--partitions", type=int, default=1, help="num.partitions for auto-created topics")
    run.add_argument("--timeout", type=float, default=120, help="seconds to wait for the broker to serve")
    args = parser.parse_args(argv)

    try:
        if args.command == "fetch":
            cache_dir = (args.cache_dir or default_cache_dir(args.version)).expanduser().resolve()
            fetch_kafka(args.version, cache_dir)
            print(cache_dir)
            return 0
        return _run(args)
    except KafkaLauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args) -> int:
    # A signal raises _Stop wherever we are: during start_broker that kills the half-started JVM
    # (its cleanup path); while waiting it leads to the clean stop below.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    try:
        broker = start_broker(args.dir, version=args.version, partitions=args.partitions,
                              timeout=args.timeout)
    except _Stop:
        return 130
    try:
        print(f"bootstrap={broker.bootstrap}", flush=True)
        print(f"kafka {args.version} pid {broker.pid}; log {broker.log_file}", file=sys.stderr, flush=True)
        while broker.is_running():
            time.sleep(1)
        print(f"error: the broker exited on its own; see {broker.log_file}", file=sys.stderr)
        return 1
    except _Stop:
        return 0
    finally:
        # A second signal must not interrupt the clean shutdown.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
