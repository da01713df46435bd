"""What a user sees and what a trial leaves behind, on the demo's sweep: it prints no warning
the user did not cause, and each trial's process has exited before the next trial reports
(tests/test_release.py says why that matters on a GPU)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sweep_runs import FirstReportWatcher, cli_env, process_exited, sweep_command

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
NOISE = re.compile(r"WARNING|Warning|Traceback")
TRIALS = 2  # the second reports only once the first one's process is gone


def user_env(home: Path) -> dict[str, str]:
    """The CLI's environment as a user's shell has it: no RAY_AUTH_* (the tests' own token
    setting), no RAY_ADDRESS; HOME in tmp_path, where Ray keeps the token it generates."""
    env = {key: value for key, value in cli_env().items()
           if not key.startswith("RAY_AUTH_") and key != "RAY_ADDRESS"}
    return {**env, "HOME": str(home)}


@pytest.mark.slow
def test_demo_sweep_prints_no_warning_and_each_trial_process_exits_before_the_next_reports(
        prepared_dataset, tmp_path):
    """configs/demo.yaml as `make demo` runs it, shrunk to 2 trials of 2 epochs one after the
    other: Ray's token authentication notice and the reporter's sorting UserWarning are gone,
    nothing else warns, and every trial ran in a process of its own that was gone by the time
    the next trial reported its first epoch, none left after the sweep."""
    command = sweep_command(DEMO_CONFIG, prepared_dataset, tmp_path / "results",
                            "--num-samples", str(TRIALS), "--num-cpus", "2",
                            "--set", "max_concurrent_trials=1",
                            "--set", "space.epochs=2", "--set", "space.resize=32")
    watcher = FirstReportWatcher(tmp_path / "results" / "demo")
    watcher.start()
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                                env=user_env(tmp_path / "home"))
    finally:
        watcher.done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best trial:" in result.stdout
    noisy = [line for line in (result.stderr + result.stdout).splitlines() if NOISE.search(line)]
    assert noisy == [], "\n".join(noisy)

    pids = [pid for _, pid in watcher.order]
    assert len(pids) == TRIALS
    assert len(set(pids)) == TRIALS, f"trials shared a process: {watcher.order}"
    assert watcher.alive_at_report == {trial: [] for trial, _ in watcher.order}
    assert [pid for pid in pids if not process_exited(pid)] == []
