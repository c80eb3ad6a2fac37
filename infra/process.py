"""What this machine says about a process (Linux /proc), for launchers and the local dispatcher."""

from pathlib import Path


def start_time(pid: int) -> str | None:
    """When a running process started (clock ticks since boot: with the pid, it names the process
    even after the pid is reused); None when it is gone or a zombie, or where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # fields 3 and 22 of stat: state, start time
