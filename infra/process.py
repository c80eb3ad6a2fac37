"""What this machine says about a process (Linux /proc), for launchers and the local dispatcher."""

import os
import time
from pathlib import Path


def start_time(pid: int) -> str | None:
    """When a running process started (clock ticks since boot: with the pid, it names the process
    even after the pid is reused); None when it is gone or a zombie, or where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # fields 3 and 22 of stat: state, start time


def age_seconds(pid: int) -> float | None:
    """How long ago a running process started (10 ms resolution); None where /proc cannot say."""
    started = start_time(pid)
    if started is None or not hasattr(time, "CLOCK_BOOTTIME"):
        return None
    return max(0.0, time.clock_gettime(time.CLOCK_BOOTTIME) - int(started) / os.sysconf("SC_CLK_TCK"))
