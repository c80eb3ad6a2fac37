"""The chaos soak's quick run (bench/soak.py --quick): the whole flow on Kafka through kills of
relays, consumers and workers, a broker restart, a PostgreSQL restart and poison events."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_the_quick_soak_loses_doubles_and_leaves_stuck_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--quick", "--home", str(tmp_path / "soak")],
                          capture_output=True, text=True, timeout=900)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "soak" / "logs").glob("*.log")))
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:] + logs
    found = re.fullmatch(r"soak: kills=(\d+) restarts=(\d+) scenes=6 lost=0 doubled=0 stuck=0 recovery_p99_s=[\d.]+",
                         last)
    assert found, last
    assert int(found[1]) >= 10 and int(found[2]) >= 2  # every kill landed; the broker and PostgreSQL came back
    assert "dead letters: 10 of 10 poison events" in done.stdout
