"""What a user sees: the demo's sweep step prints no warning the user did not cause."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sweep_runs import cli_env, sweep_command

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
NOISE = re.compile(r"WARNING|Warning|Traceback")


def user_env(home: Path) -> dict[str, str]:
    """The CLI's environment as a user's shell has it: no RAY_AUTH_* (the tests' own token
    setting), no RAY_ADDRESS; HOME in tmp_path, where Ray keeps the token it generates."""
    env = {key: value for key, value in cli_env().items()
           if not key.startswith("RAY_AUTH_") and key != "RAY_ADDRESS"}
    return {**env, "HOME": str(home)}


@pytest.mark.slow
def test_demo_sweep_prints_no_warning_and_no_traceback(prepared_dataset, tmp_path):
    """configs/demo.yaml as `make demo` runs it, shrunk to 2 trials of 2 epochs: Ray's token
    authentication notice and the reporter's sorting UserWarning are gone, and nothing else
    warns."""
    command = sweep_command(DEMO_CONFIG, prepared_dataset, tmp_path / "results",
                            "--num-samples", "2", "--num-cpus", "2",
                            "--set", "space.epochs=2", "--set", "space.resize=32")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env=user_env(tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best trial:" in result.stdout
    noisy = [line for line in (result.stderr + result.stdout).splitlines() if NOISE.search(line)]
    assert noisy == [], "\n".join(noisy)
