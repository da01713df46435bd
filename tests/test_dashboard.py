"""`carsweep dashboard`: optuna-dashboard serves the sweep's study, TensorBoard its trials, both
on 127.0.0.1; read back over HTTP as a browser would (optuna-dashboard's JSON API)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from sweep_runs import cli_env, wait_until

from carsweep.cli import main
from carsweep.results import load_experiment

STATES = {"Complete": "COMPLETE", "Pruned": "PRUNED", "Fail": "FAIL", "Running": "RUNNING"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return json.loads(answer.read())
    except OSError:
        return None  # not listening yet


def listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port`, from the kernel's table."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if int(local_port, 16) == port and state == "0A":  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@dataclass(frozen=True)
class Served:
    server: subprocess.Popen
    port: int  # optuna-dashboard's
    board_port: int  # TensorBoard's
    study: dict  # as optuna-dashboard's API first answered
    runs: dict  # as TensorBoard first answered


@contextmanager
def serving(command: list[str], tmp_path: Path) -> Iterator[Served]:
    """The dashboard `command` starts, given two free ports, its output in tmp_path's out.txt
    and err.txt, once both servers answer; Ctrl-C (SIGINT) at the end of the block, killed
    only if it is still there after that (or the block failed)."""
    port, board_port = free_port(), free_port()
    with (tmp_path / "out.txt").open("w") as out, (tmp_path / "err.txt").open("w") as err:
        server = subprocess.Popen([*command, "--port", str(port), "--tensorboard-port",
                                   str(board_port)], stdout=out, stderr=err, env=cli_env())
    try:
        study = wait_until(lambda: get_json(f"http://127.0.0.1:{port}/api/studies/0"),
                           "optuna-dashboard to answer", 120, server)
        runs = wait_until(lambda: get_json(f"http://127.0.0.1:{board_port}/data/runs"),
                          "TensorBoard to answer", 60, server)
        yield Served(server, port, board_port, study, runs)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()


def tensorboard_runs_with(board_port: int, run: str) -> dict | None:
    """TensorBoard's runs once they include `run`, else None."""
    runs = get_json(f"http://127.0.0.1:{board_port}/data/runs") or {}
    return runs if run in runs else None


@pytest.mark.slow  # the finished sweep fixture
def test_dashboard_serves_the_study_and_tensorboard_the_trials_on_loopback(
        finished_experiment, tmp_path):
    command = [sys.executable, "-m", "carsweep", "dashboard", str(finished_experiment)]
    with serving(command, tmp_path) as dashboard:
        assert listening_addresses(dashboard.port) == {"127.0.0.1"}  # not every address
        assert listening_addresses(dashboard.board_port) == {"127.0.0.1"}
    study, runs = dashboard.study, dashboard.runs
    port, board_port = dashboard.port, dashboard.board_port
    table = load_experiment(finished_experiment).trials.set_index("trial_id")
    assert study["name"] == "carsweep"
    assert study["directions"] == ["minimize"]  # the finished sweep minimises val_loss
    served = {next(a["value"] for a in t["user_attrs"] if a["key"] == "trial_id"): t
              for t in study["trials"]}
    assert sorted(served) == sorted(table.index)
    for trial_id, trial in served.items():
        row = table.loc[trial_id]
        assert STATES[trial["state"]] == row["state"]
        steps = [v["step"] for v in trial["intermediate_values"]]
        assert steps == list(range(1, row["epochs_run"] + 1))
        lr = next(p for p in trial["params"] if p["name"] == "lr")
        assert float(lr["param_external_value"]) == pytest.approx(row["config/lr"])
    assert sorted(runs) == sorted(table["trial_dir"])
    out = (tmp_path / "out.txt").read_text()
    assert f"optuna-dashboard: http://127.0.0.1:{port}/" in out
    assert f"TensorBoard:      http://127.0.0.1:{board_port}/" in out
    assert (tmp_path / "err.txt").read_text() == ""
    assert dashboard.server.returncode == 0


def test_dashboard_refuses_a_folder_without_a_study_and_a_taken_port(tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"carsweep dashboard: error: {tmp_path}: not an experiment "
                                       "folder (no sweep.yaml); give the folder `carsweep sweep` "
                                       "wrote, e.g. results/<name>\n")
    (tmp_path / "sweep.yaml").write_text("name: old\n")
    assert main(["dashboard", str(tmp_path)]) == 2
    assert "no study file (study.journal)" in capsys.readouterr().err
    (tmp_path / "study.journal").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", str(tmp_path), "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"carsweep dashboard: error: --port {port} on 127.0.0.1 "
                                       "is in use; give another --port\n")


# The dashboard of an experiment in a bucket, its mirror brought in step every 0.5 s (30 s as
# shipped: a running sweep uploads every 30 s) so the test sees it follow the bucket.
DASHBOARD_MIRRORING_FAST = """
import sys

import carsweep.cli.dashboard
from carsweep.cli import main

carsweep.cli.dashboard.MIRROR_EVERY_S = 0.5
sys.exit(main(["dashboard", *sys.argv[1:]]))
"""


@pytest.mark.slow  # the finished sweep fixture
def test_dashboard_of_a_bucket_serves_its_study_and_a_mirror_of_its_events_that_follows_it(
        finished_experiment, s3_bucket, tmp_path, monkeypatch):
    from carsweep.storage import location

    state = tmp_path / "state"
    monkeypatch.setenv("CARSWEEP_STATE_DIR", str(state))
    uri = f"{s3_bucket}/results/{finished_experiment.name}"
    bucket = location(uri)
    # what the dashboard reads (the checkpoints, 600 MB, would take seconds to upload)
    for path in finished_experiment.rglob("*"):
        if path.name in ("sweep.yaml", "study.journal") or path.name.startswith(
                "events.out.tfevents"):
            (bucket / path.relative_to(finished_experiment).as_posix()).write_bytes(
                path.read_bytes())
    command = [sys.executable, "-c", DASHBOARD_MIRRORING_FAST, uri]
    with serving(command, tmp_path) as served:
        # A trial that reports after the dashboard started: its events reach TensorBoard.
        first = sorted(served.runs)[0]
        events = next((finished_experiment / first).glob("events.out.tfevents*"))
        (bucket / "trial_later" / events.name).write_bytes(events.read_bytes())
        later = wait_until(lambda: tensorboard_runs_with(served.board_port, "trial_later"),
                           "the new trial in TensorBoard", 60, served.server)
    table = load_experiment(finished_experiment).trials
    trial_ids = [next(a["value"] for a in t["user_attrs"] if a["key"] == "trial_id")
                 for t in served.study["trials"]]
    assert sorted(trial_ids) == sorted(table["trial_id"])  # the study read from the bucket
    assert sorted(served.runs) == sorted(table["trial_dir"])
    assert sorted(later) == sorted([*table["trial_dir"], "trial_later"])
    mirror = state / "buckets" / "s3" / uri.removeprefix("s3://")
    assert sorted(p.relative_to(mirror).parts[0] for p in mirror.rglob("*") if p.is_file()) == \
        sorted([*table["trial_dir"], "trial_later"])  # event files only, nothing else
    out = (tmp_path / "out.txt").read_text()
    assert (f"TensorBoard reads {mirror}, a mirror of the event files in {uri}, brought in "
            "step every 0.5 s") in out
    assert f"(the study: {uri}/study.journal)" in out
    assert (tmp_path / "err.txt").read_text() == ""
    assert served.server.returncode == 0
