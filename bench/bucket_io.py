"""The experiment in a bucket: what a sweep writes there per trial, and `carsweep status` on a
64-trial experiment in the bucket against the same experiment in a folder.

Against moto's S3 server on 127.0.0.1 (tests/bucket_server.py), reached through a relay that
tallies every request and byte the clients send it (bench/http_tally.py): the sweep's driver,
its Ray workers and `status` all talk to the relay, as they would to S3.

1. A real sweep, `carsweep sweep --storage s3://...` (mobilenet_v3_small at 32 px on the CPU,
   fifo, the shipped checkpoint policy: the last epoch, and one every 10 min), with the
   shipped snapshot period. Its requests by kind (checkpoints, the trials' results and
   events, the experiment's own files), per trial and per snapshot of the driver.
2. A 64-trial experiment built from it: the sweep's experiment files, a study of 64 copies of
   its first trial (optuna), and 64 copies of that trial's folder under new ids, each
   checkpoint.pt a stand-in of a few bytes (status only lists it). Uploaded to the bucket
   and kept in a folder; then, in interleaved rounds, `status` on each: in this process (the
   read alone) and as `python -m carsweep status` (what a user waits, imports included).

    .venv/bin/python bench/bucket_io.py [--trials 4] [--epochs 2] [--status-trials 64]
    .venv/bin/python bench/bucket_io.py --small     # 2 trials of 1 epoch, status on 4 trials
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from http_tally import CountingRelay, Request
from machine import describe, load_average

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bucket_server import create_bucket, running_bucket_server  # noqa: E402
from sweep_runs import sweep_command, write_sweep  # noqa: E402

from carsweep.config.files import EXPERIMENT_STATE_PREFIX  # noqa: E402

BUCKET = "carsweep-bench"
WRITES = ("PUT", "POST", "DELETE")


def prepared_dataset(work: Path) -> Path:
    from carsweep.data.prepare import prepare_dataset
    from carsweep.data.synth import make_synthetic_dataset

    source = make_synthetic_dataset(work / "source", classes=4, per_class=24, test_per_class=8,
                                    size=64, seed=0)
    prepare_dataset(source, work / "data", split="official", val_fraction=0.25, seed=0,
                    warn=print)
    return work / "data"


def run_sweep_into_bucket(work: Path, data: Path, trials: int, epochs: int) -> float:
    config = write_sweep(work, "io", space={"epochs": epochs}, num_samples=trials,
                         scheduler="fifo", max_concurrent_trials=2, checkpoint_every_min=10,
                         searcher={"seed": 0, "n_startup_trials": trials})
    env = {**os.environ, "CARSWEEP_STATE_DIR": str(work / "head"), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    done = subprocess.run(sweep_command(config, data, f"s3://{BUCKET}/results", "--num-cpus",
                                        "2"), capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed ({done.returncode}): {done.stderr[-3000:]}")
    return time.perf_counter() - start


def kind_of(request: Request, experiment_key: str) -> str:
    """What a request was for, by its key: listings and reads; writes of checkpoints, of the
    trials' results and events, of the experiment's own files (state, study, sweep.yaml...),
    folder markers (pyarrow's create_dir), and the pre-flight's token round trip."""
    parts = urlsplit(request.path)
    key = parts.path.removeprefix(f"/{BUCKET}").lstrip("/")
    if request.method not in WRITES:
        return "listings" if "list-type" in parts.query or not key else "reads (GET, HEAD)"
    if key.endswith("/") or not key:
        return "folder markers"
    if not key.startswith(f"{experiment_key}/"):
        return "pre-flight tokens"
    if "/checkpoint_" in key:
        return "checkpoints"
    if key.removeprefix(f"{experiment_key}/").startswith("trial_"):
        return "trial results and events"
    return "experiment files"


def starts_an_object(request: Request) -> bool:
    """A PUT of a whole object, or the start of a multipart upload (pyarrow uploads every
    object, however small, as one: start, part(s), complete)."""
    query = urlsplit(request.path).query
    return ((request.method == "PUT" and "uploadId" not in query)
            or (request.method == "POST" and query == "uploads"))


def tally(requests: list[Request], experiment_key: str, trials: int) -> dict:
    kinds: dict[str, dict] = {}
    for request in requests:
        row = kinds.setdefault(kind_of(request, experiment_key),
                               {"requests": 0, "objects": 0, "bytes": 0})
        row["requests"] += 1
        row["objects"] += starts_an_object(request)
        row["bytes"] += request.body_bytes
    snapshots = sum(1 for request in requests if starts_an_object(request)
                    and f"/{EXPERIMENT_STATE_PREFIX}" in request.path)
    heads = sum(request.head_bytes for request in requests)
    writes = collections.Counter(f"{r.method} {urlsplit(r.path).path}" for r in requests
                                 if r.method in WRITES)
    return {"kinds": kinds, "writes": dict(writes.most_common()),
            "requests": len(requests), "body_bytes": sum(
        row["bytes"] for row in kinds.values()), "head_bytes": heads, "trials": trials,
        "snapshots": snapshots}


def synthetic_experiment(swept, out: Path, trials: int) -> Path:
    """`trials` copies of the sweep's first trial, in a study and in trial folders."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from carsweep.config.files import (
        CHECKPOINT_FILE,
        STUDY_FILE,
        STUDY_NAME,
        SWEEP_FILE,
        TRIALS_FILE,
        trial_dir_name,
    )
    from carsweep.results.study import TRIAL_ID_ATTR, open_study, ray_trials
    from carsweep.storage import mirror

    files = swept.files()
    template = mirror(swept, out.parent / "template",
                      wanted=lambda relative: not relative.endswith(CHECKPOINT_FILE))
    model = ray_trials(open_study(template))[0]
    model_id = str(model.user_attrs[TRIAL_ID_ATTR])
    out.mkdir(parents=True)
    for name in files:
        if "/" not in name and name not in (STUDY_FILE, TRIALS_FILE):
            shutil.copy(template / name, out / name)
    sweep = yaml.safe_load((out / SWEEP_FILE).read_text())
    (out / SWEEP_FILE).write_text(yaml.safe_dump({**sweep, "num_samples": trials}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, direction=open_study(template).direction,
                                storage=JournalStorage(JournalFileBackend(str(out / STUDY_FILE))))
    source = template / trial_dir_name(model_id)
    for index in range(trials):
        trial_id = f"{index:04d}b0c5"
        study.add_trial(optuna.trial.create_trial(
            state=model.state, value=model.value, params=model.params,
            distributions=model.distributions, intermediate_values=model.intermediate_values,
            user_attrs={**model.user_attrs, TRIAL_ID_ATTR: trial_id}))
        folder = out / trial_dir_name(trial_id)
        for file in (p for p in source.rglob("*") if p.is_file()):
            target = folder / file.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes().replace(model_id.encode(), trial_id.encode()))
        for relative in files:
            inside = relative.removeprefix(f"{trial_dir_name(model_id)}/")
            if inside != relative and inside.endswith(CHECKPOINT_FILE):
                (folder / inside).write_bytes(b"stand-in: status lists it, never reads it")
    return out


def status_in_process(target: str) -> tuple[float, str]:
    from carsweep.cli import main

    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = main(["status", target])
    if code != 0:
        raise SystemExit(f"status {target} exited {code}")
    return time.perf_counter() - start, printed.getvalue()


def status_cli(target: str) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "carsweep", "status", target],
                          capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        raise SystemExit(f"carsweep status {target}: {done.stderr[-2000:]}")
    return time.perf_counter() - start


def time_status(local: Path, uri: str, relay: CountingRelay, rounds: int,
                latency_s: float) -> dict:
    """Each round: status of the folder and of the bucket, in this process and as the CLI;
    then the bucket's read in this process with the trials' files read one at a time against
    carsweep's REQUESTS_IN_FLIGHT, on loopback and with `latency_s` added to every answer."""
    times = {key: [] for key in ("folder", "bucket", "folder_cli", "bucket_cli", *IN_FLIGHT)}
    for _ in range(rounds):
        mark = len(relay.requests)
        for name, target in (("folder", str(local)), ("bucket", uri)):
            seconds, printed = status_in_process(target)
            times[name].append(seconds)
            times[f"{name}_cli"].append(status_cli(target))
        made = relay.since(mark)  # two bucket reads (in-process, CLI); a folder makes none
        for (in_flight, far), key in zip(IN_FLIGHT_CASES, IN_FLIGHT, strict=True):
            relay.delay_s = latency_s if far else 0.0
            with requests_in_flight(in_flight):
                times[key].append(status_in_process(uri)[0])
        relay.delay_s = 0.0
    return {"seconds": times, "requests_per_status": len(made) / 2, "latency_s": latency_s,
            "methods": sorted({request.method for request in made}), "printed": printed}


# (trial files read at once, with latency): 1 is how status read them before they were read
# in parallel; None is carsweep's REQUESTS_IN_FLIGHT
IN_FLIGHT_CASES = ((1, False), (None, False), (1, True), (None, True))
IN_FLIGHT = ("one_at_a_time", "parallel", "one_at_a_time_far", "parallel_far")


@contextlib.contextmanager
def requests_in_flight(count: int | None):
    from carsweep import storage

    shipped = storage.REQUESTS_IN_FLIGHT
    storage.REQUESTS_IN_FLIGHT = count or shipped
    try:
        yield
    finally:
        storage.REQUESTS_IN_FLIGHT = shipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--status-trials", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20.0,
                        help="added to each answer for the far-bucket status rows")
    parser.add_argument("--small", action="store_true", help="2 trials of 1 epoch; status on 4")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.small:
        args.trials, args.epochs, args.status_trials, args.rounds = 2, 1, 4, 1
    from carsweep.results.snapshot import latest_snapshot
    from carsweep.storage import location

    start_load = load_average()
    work = Path(tempfile.mkdtemp(prefix="carsweep-bucket-io-"))
    os.environ["CARSWEEP_CACHE_DIR"] = str(work / "caches")
    try:
        data = prepared_dataset(work)
        with running_bucket_server(work / "moto.log") as server:
            create_bucket(server, BUCKET)
            relay = CountingRelay(int(server.endpoint.rsplit(":", 1)[1]))
            os.environ.update({**server.environment(), "AWS_ENDPOINT_URL": relay.endpoint})
            wall = run_sweep_into_bucket(work, data, args.trials, args.epochs)
            swept = location(f"s3://{BUCKET}/results/io").listed()
            requests = relay.since(0)
            sweep = tally(requests, "results/io", args.trials)
            sweep |= {"wall_s": wall, "epochs": args.epochs,
                      "period": latest_snapshot(swept).period}
            local = synthetic_experiment(swept, work / "many" / "io64", args.status_trials)
            uri = f"s3://{BUCKET}/many/io64"
            location(uri).upload_tree(local)
            status = time_status(local, uri, relay, args.rounds, args.latency_ms / 1000)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(sweep, status, args)
    print(describe(start_load))
    if args.json:
        args.json.write_text(json.dumps({"sweep": sweep, "status": status}, indent=1))


def report(sweep: dict, status: dict, args) -> None:
    trials, snapshots = sweep["trials"], sweep["snapshots"]
    print(f"sweep: {trials} trials x {sweep['epochs']} epochs, {sweep['wall_s']:.0f} s, "
          f"{snapshots} snapshots uploaded (period {sweep['period']})\n")
    print("| what | objects written | requests | bytes sent (bodies) | requests per trial "
          "| bytes per trial |")
    print("|---|---|---|---|---|---|")
    for kind, row in sorted(sweep["kinds"].items(), key=lambda item: -item[1]["bytes"]):
        print(f"| {kind} | {row['objects']} | {row['requests']} | {row['bytes']:,} | "
              f"{row['requests'] / trials:.1f} | {row['bytes'] / trials:,.0f} |")
    objects = sum(row["objects"] for row in sweep["kinds"].values())
    print(f"| **all** | {objects} | {sweep['requests']} | {sweep['body_bytes']:,} "
          f"(+{sweep['head_bytes']:,} of headers) | {sweep['requests'] / trials:.1f} | "
          f"{(sweep['body_bytes'] + sweep['head_bytes']) / trials:,.0f} with headers |")
    results = sweep["kinds"].get("trial results and events", {"objects": 0, "requests": 0})
    if snapshots:
        print(f"\ntrial results per snapshot: {results['objects'] / snapshots:.1f} objects, "
              f"{results['requests'] / snapshots:.1f} requests "
              f"({results['requests'] / snapshots / trials:.1f} per trial)")
    seconds = status["seconds"]
    print(f"\nstatus on {args.status_trials} trials, {args.rounds} interleaved rounds "
          f"(median; all rounds), {status['requests_per_status']:.0f} requests per status on "
          f"the bucket ({', '.join(status['methods'])}):\n")
    print("| where | read in-process | `python -m carsweep status` |")
    print("|---|---|---|")
    for name in ("folder", "bucket"):
        inner, cli = seconds[name], seconds[f"{name}_cli"]
        print(f"| {name} | {statistics.median(inner):.2f} s ({_all(inner)}) | "
              f"{statistics.median(cli):.2f} s ({_all(cli)}) |")
    from carsweep.storage import REQUESTS_IN_FLIGHT

    far = f"{status['latency_s'] * 1000:.0f} ms added to each answer"
    print(f"\nthe bucket's read in-process, the trials' files read one at a time or "
          f"{REQUESTS_IN_FLIGHT} at once (median; all rounds):\n")
    print("| server | one at a time | parallel | ratio |")
    print("|---|---|---|---|")
    for label, suffix in (("loopback", ""), (far, "_far")):
        one, many = seconds["one_at_a_time" + suffix], seconds["parallel" + suffix]
        print(f"| {label} | {statistics.median(one):.2f} s ({_all(one)}) | "
              f"{statistics.median(many):.2f} s ({_all(many)}) | "
              f"{statistics.median(one) / statistics.median(many):.1f}x |")
    print("\nthe bucket's status, last round:\n" + status["printed"].split("\n\n")[0])


def _all(values: list[float]) -> str:
    return " / ".join(f"{value:.2f}" for value in values)


if __name__ == "__main__":
    main()
