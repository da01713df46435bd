"""A benchmark script run as a user runs it, for the tests of their small modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, out: Path, timeout: float = 600) -> tuple[dict, str]:
    """`bench/SCRIPT ARGS --json OUT`: its figures and what it printed, once it exited 0 and
    printed the machine's load (every figure says what the machine was doing)."""
    environment = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    done = subprocess.run([sys.executable, str(BENCH / script), *args, "--json", str(out)],
                          capture_output=True, text=True, timeout=timeout, env=environment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "load average" in done.stdout, done.stdout[-2000:]
    return json.loads(out.read_text()), done.stdout
