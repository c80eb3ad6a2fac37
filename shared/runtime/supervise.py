"""Long-running loops that outlive outages of PostgreSQL (and Kafka): the embedded bus, the relay,
the Kafka runners.

A loop body opens its own connections and runs until it is told to stop. When it fails because a
service is out of reach, `Supervised.run` logs the outage once, with its cause, waits (a pause that
doubles up to 5 s), and runs the body again, which picks up where the database says it was: every
step is a transaction, so a step cut short is undone, and done again, once. The outage's end is
logged when the body completes a cycle again. Anything else is a bug and is raised: the process
must stop rather than keep serving without the loop.
"""

import time
from collections.abc import Callable

import psycopg

from shared import logs
from shared.errors import ServiceUnavailable


def _transient() -> tuple[type[BaseException], ...]:
    """What an outage of a service looks like from here."""
    errors: tuple[type[BaseException], ...] = (psycopg.OperationalError, ServiceUnavailable)
    try:
        from kafka.errors import KafkaError
    except ImportError:  # the Kafka client is only needed with Kafka configured
        return errors
    return (*errors, KafkaError)


def wait_unless_stopped(should_stop: Callable[[], bool], seconds: float) -> None:
    """Sleep `seconds`, waking every tenth of a second at most to return early once `should_stop()`."""
    deadline = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(min(0.1, seconds))


def log_line(line: str) -> None:
    logs.say(line)


class Supervised:
    """One loop's supervision: its outages, and when it last completed a cycle."""

    def __init__(self, name: str, log: Callable[[str], None] = log_line, longest_pause: float = 5.0,
                 stale_after: float = 30.0):
        self.name, self.log, self.longest_pause, self.stale_after = name, log, longest_pause, stale_after
        self.started = time.monotonic()
        self.last_cycle: float | None = None  # time.monotonic()
        self.failed = False  # it ended with an error
        self._down_since: float | None = None
        self._cause = ""

    def problem(self) -> str | None:
        """Why this loop is not doing its work now (for a readiness probe), or None."""
        now = time.monotonic()
        if self.failed:
            return f"{self.name}: stopped by an error"
        if self._down_since is not None:
            return f"{self.name}: {self._cause} for {now - self._down_since:.0f} s"
        if now - (self.last_cycle or self.started) > self.stale_after:
            return f"{self.name}: no cycle for {now - (self.last_cycle or self.started):.0f} s"
        return None

    def cycle(self) -> None:
        """The body completed a cycle: the loop is alive (and an outage, if any, is over)."""
        self.last_cycle = time.monotonic()
        if self._down_since is not None:
            self.log(f"{self.name}: back after {self.last_cycle - self._down_since:.1f} s")
            self._down_since = None

    def run(self, body: Callable[[], None], should_stop: Callable[[], bool]) -> None:
        """Run `body()` until it returns (it returns when `should_stop()`), again after each outage."""
        transient = _transient()
        try:
            self._run(body, should_stop, transient)
        except BaseException:
            self.failed = True
            raise

    def _run(self, body, should_stop, transient) -> None:
        pause = 0.2
        while not should_stop():
            try:
                body()
                return
            except transient as exc:
                if self._down_since is None:  # a new outage: said once, retried soon
                    self._down_since, pause = time.monotonic(), 0.2
                    self._cause = f"{type(exc).__name__}, a service out of reach"
                    cause = " ".join(str(exc).split()) or type(exc).__name__
                    self.log(f"{self.name}: {type(exc).__name__}: {cause[:300]}; retrying until it is back")
                wait_unless_stopped(should_stop, pause)
                pause = min(2 * pause, self.longest_pause)
