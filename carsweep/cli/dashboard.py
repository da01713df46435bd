"""`carsweep dashboard EXPERIMENT`: optuna-dashboard on the sweep's study, TensorBoard beside it.

The live views of a sweep, while it runs or after it: optuna-dashboard reads the study file
(optimization history, every trial's intermediate values, importances, slices, each trial's
parameters and state as the searcher told Optuna); TensorBoard reads the trials' event files
(every metric per epoch, the HParams table). Both bind 127.0.0.1 unless --host says otherwise:
neither has any authentication, so another host is a choice to make on purpose (an SSH tunnel,
`ssh -L 8080:127.0.0.1:8080 head-node`, keeps them private). Ctrl-C stops both.

An experiment in a bucket (s3://...) is read there: the study through the bucket (read-only, so
optuna-dashboard's notes cannot be saved), the event files from a local mirror kept in step
every MIRROR_EVERY_S, since TensorBoard without TensorFlow reads no bucket.

What is shown is read from the experiment folder as it is on disk, so a sweep still running
shows its trials as they report. optuna-dashboard's own notes and edits, if a user makes any,
go into the same study file (its journal lock keeps writers apart).
"""

from __future__ import annotations

import argparse
import errno
import socket
from pathlib import Path

from carsweep.cli.arguments import PORT, PORT_OR_OFF, place

HELP = "serve a sweep's Optuna study with optuna-dashboard, and TensorBoard beside it (127.0.0.1)"
LOOPBACK = "127.0.0.1"
MIRROR_EVERY_S = 30.0
EVENTS_PREFIX = "events.out.tfevents"  # TensorBoard's event files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=place,
                        help="experiment folder or URI, e.g. results/demo, s3://bucket/results/demo")
    parser.add_argument("--host", default=LOOPBACK,
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=PORT, default=8080, help="optuna-dashboard's port")
    parser.add_argument("--tensorboard-port", type=PORT_OR_OFF, default=6006,
                        help="TensorBoard's port; 0: do not start TensorBoard")


def run(args: argparse.Namespace) -> int:
    from carsweep.config.files import STUDY_FILE
    from carsweep.errors import UserError
    from carsweep.results import experiment_sweep
    from carsweep.results.study import journal_storage, study_path

    if args.port == args.tensorboard_port:
        raise UserError(f"--port and --tensorboard-port are both {args.port}; give each server "
                        "its own port, or --tensorboard-port 0 for none")
    experiment_sweep(args.experiment)  # not an experiment folder: one line
    study_file = study_path(args.experiment)
    if not study_file.is_file():
        raise UserError(f"{args.experiment}: no study file ({STUDY_FILE}); the sweep was run "
                        "by a carsweep that did not keep one, or has not started")
    ports = [("--port", args.port)] + ([("--tensorboard-port", args.tensorboard_port)]
                                       if args.tensorboard_port else [])
    for flag, port in ports:
        check_port_free(args.host, port, flag)
    if args.tensorboard_port:
        url = start_tensorboard(event_files_folder(args.experiment), args.host,
                                args.tensorboard_port)
        print(f"TensorBoard:      {url}  (every trial's metrics per epoch, HParams)")
    print(f"optuna-dashboard: http://{args.host}:{args.port}/  (the study: {study_file})")
    print("Ctrl-C stops them.", flush=True)
    serve_study(journal_storage(study_file), args.host, args.port)
    return 0


def check_port_free(host: str, port: int, flag: str) -> None:
    """A port taken (or an address this machine does not have) is one line, before anything
    starts."""
    from carsweep.errors import UserError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            why = ("is in use" if error.errno == errno.EADDRINUSE
                   else f"cannot be bound ({error.strerror})")
            raise UserError(f"{flag} {port} on {host} {why}; give another {flag}") from None


def event_files_folder(experiment):
    """The folder TensorBoard reads: the experiment's own; for one in a bucket, a local mirror
    of its event files, brought in step now and every MIRROR_EVERY_S by a daemon thread."""
    import threading
    import time

    from carsweep.storage import is_bucket, local_folder_for, mirror

    if not is_bucket(experiment):
        return experiment
    local = local_folder_for(experiment)

    def in_step() -> Path:
        return mirror(experiment, local, wanted=lambda relative: Path(relative).name.startswith(
            EVENTS_PREFIX))

    def follow() -> None:
        while True:
            time.sleep(MIRROR_EVERY_S)
            try:
                in_step()
            except OSError:  # the store did not answer this time: the next round catches up
                continue

    in_step()
    threading.Thread(target=follow, name="carsweep-events-mirror", daemon=True).start()
    print(f"TensorBoard reads {local}, a mirror of the event files in {experiment}, brought in "
          f"step every {MIRROR_EVERY_S:g} s")
    return local


def start_tensorboard(experiment: Path, host: str, port: int) -> str:
    """TensorBoard on the experiment's event files, in this process (a background thread)."""
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", str(experiment), "--host", host,
                          "--port", str(port), "--load_fast=false"])
    return board.launch()


def serve_study(storage, host: str, port: int) -> None:
    """optuna-dashboard's app on `storage`, served until Ctrl-C by bottle (the server it
    brings), quietly: no banner, no line per request."""
    import warnings

    import bottle
    import optuna_dashboard

    # The page's importance and plots warn, on this console, about what the page shows anyway
    # (a parameter with few trials, an experimental API).
    warnings.filterwarnings("ignore", module="optuna")
    bottle.run(optuna_dashboard.wsgi(storage), host=host, port=port, quiet=True)
