"""Shared fixtures: one small synthetic source and its prepared dataset, made once per session.

    synthetic_source   carsweep synth output: 4 classes (round, square, triangle, bar
                       headlights), 24 train + 8 test images per class, 64 px, seed 0,
                       class-csv layout with car boxes, parts.csv with headlight boxes
    prepared_dataset   the folder `prepare` made of it: official split, val fraction 0.25
                       (per class: 18 train, 6 val, 8 test), parts.csv carried over
    finished_experiment  the experiment folder of one real 4-trial ASHA sweep (Ray Tune +
                       Optuna, 3 epochs at 32 px, 2 local Ray CPUs) on a copy of that dataset
                       whose test images were garbage bytes while it ran: for the sweep's
                       files, status, TensorBoard, the dashboard, results, export, predict
    finished_analysis  `carsweep analyze --epochs 2 --seeds 2` of it, in a linked copy (the
                       finished experiment itself never gets an analysis/ folder)
    two_node_ray       a two-node loopback Ray cluster (module scope), joined by the test
    s3_bucket          s3://<a new, empty bucket> on an S3-compatible server on 127.0.0.1
                       (moto_server, one per session: tests/bucket_server.py), with AWS_*
                       pointing at it for this test (and the Ray and CLI processes it starts)

Every process of the session (Ray's too) puts decoded caches in SESSION_CACHE_DIR
($CARSWEEP_CACHE_DIR), removed at the end.

All are read-only for tests: a test that changes one makes its own copy in tmp_path.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from bucket_server import create_bucket, running_bucket_server  # no carsweep import there
from sweep_runs import ANALYZE, FINISHED_SWEEP, linked_copy  # no carsweep import in there

# Decoded caches go to a folder of this session, never to the machine's /tmp/carsweep-cache-USER:
# set before anything imports carsweep, and inherited by every Ray and CLI process started.
SESSION_CACHE_DIR = Path(tempfile.mkdtemp(prefix="carsweep-test-caches-"))
os.environ["CARSWEEP_CACHE_DIR"] = str(SESSION_CACHE_DIR)

from carsweep.data.prepare import prepare_dataset  # noqa: E402
from carsweep.data.synth import make_synthetic_dataset  # noqa: E402

# Every Ray the tests start binds 127.0.0.1 and runs with token authentication, one token for
# the session, given to every process through the environment (tests/sweep_runs.py copies it
# into the CLI subprocesses at call time). Without this, the first local ray.init turns token
# mode on in this process only (Ray >= 2.59 does so for local clusters), and a loopback
# cluster started afterwards rejects the sweep subprocesses that join it. Nothing is written
# to ~/.ray.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

SYNTH = {"classes": 4, "per_class": 24, "test_per_class": 8, "size": 64, "seed": 0}


@pytest.fixture(scope="session")
def synthetic_source(tmp_path_factory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "source", **SYNTH)


@pytest.fixture(scope="session")
def prepared_dataset(synthetic_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "data"
    prepare_dataset(synthetic_source, out, split="official", val_fraction=0.25, seed=0,
                    warn=_no_warnings)
    return out


@pytest.fixture(scope="session")
def finished_experiment(prepared_dataset, tmp_path_factory) -> Path:
    """The folder of a finished sweep (sweep.yaml, trials.csv, trial_*/ with checkpoints).

    It ran on this fixture's copy of the prepared dataset while every test image there was
    garbage bytes, so no trial could have read one and gone on; they are put back after."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from carsweep.config.sweep import load_sweep
    from carsweep.data.manifest import load_dataset
    from carsweep.search import run_sweep

    folder = tmp_path_factory.mktemp("finished")
    data = shutil.copytree(prepared_dataset, folder / "data")
    dataset = load_dataset(data)
    originals = {path: path.read_bytes()
                 for path in map(dataset.image_path, dataset.rows("test")["path"])}
    path = folder / "finished.yaml"
    path.write_text(yaml.safe_dump(FINISHED_SWEEP))
    config = load_sweep(path, [f"dataset={data}", f"storage_path={folder / 'results'}"])
    # A fresh local Ray even where another one runs on the machine (ray.init() with no address
    # joins the one in /tmp/ray/ray_current_cluster otherwise); only for this sweep.
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = "local"
    try:
        for image in originals:
            image.write_bytes(b"not an image: the sweep must never read the test split")
        outcome = run_sweep(config, verbose=0)
    finally:
        for image, content in originals.items():
            image.write_bytes(content)
        if previous is None:
            del os.environ["RAY_ADDRESS"]
        else:
            os.environ["RAY_ADDRESS"] = previous
    assert outcome.trials == FINISHED_SWEEP["num_samples"], outcome
    assert not outcome.errors, outcome
    assert not outcome.interrupted, outcome
    return outcome.experiment


@pytest.fixture(scope="session")
def finished_analysis(finished_experiment, tmp_path_factory) -> Path:
    """The analysis folder `carsweep analyze` wrote for a linked copy of the finished sweep."""
    from carsweep.cli import main

    copy = linked_copy(finished_experiment, tmp_path_factory.mktemp("analyzed") / "experiment")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        code = main(["analyze", str(copy), "--epochs", str(ANALYZE["epochs"]),
                     "--seeds", str(ANALYZE["seeds"]), "--device", "cpu"])
    assert code == 0, printed.getvalue()[-3000:]
    return copy / "analysis"


@pytest.fixture(scope="module")
def two_node_ray():
    """A head and a worker node on loopback, 1 CPU each, joined by this process (one per test
    module); `carsweep sweep --check` and the node tasks run on both."""
    import ray
    from ray.cluster_utils import Cluster

    loopback = {"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=loopback)
    cluster.add_node(**loopback)
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", logging_level="ERROR",
             log_to_driver=False)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def bucket_server(tmp_path_factory):
    with running_bucket_server(tmp_path_factory.mktemp("s3") / "moto_server.log") as server:
        yield server


@pytest.fixture
def s3_bucket(bucket_server, monkeypatch) -> str:
    """`s3://NAME` of a new, empty bucket; the AWS_* variables name the server until the test
    ends."""
    for key, value in bucket_server.environment().items():
        monkeypatch.setenv(key, value)
    name = f"carsweep-{secrets.token_hex(6)}"
    create_bucket(bucket_server, name)
    return f"s3://{name}"


def _no_warnings(line: str) -> None:
    raise AssertionError(f"the shared synthetic dataset should prepare cleanly: {line}")


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(SESSION_CACHE_DIR, ignore_errors=True)
