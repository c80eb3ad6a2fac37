"""Every benchmark starts as the README runs it (`python bench/NAME.py`): a script in bench/ must
not trip over bench/events.py shadowing the `events` package, or over a moved module."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.py") if p.name != "__init__.py"))
def test_the_benchmark_starts_and_explains_its_options(script):
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=120, cwd=BENCH)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: ")
