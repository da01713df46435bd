"""`carsweep analyze EXPERIMENT`: retrain the best trial on train+val, test it once, explain it.

Where the retrains run: on the Ray cluster the sweep ran on (sweep.yaml's `cluster.address`)
or the one `--address` names, as Ray tasks with the sweep's CPUs per trial and a whole GPU
each (`--retrain-gpus`), this process only coordinating (its temperature fit runs on its CPU);
in this process when the sweep ran on a local Ray or `--local` is given.
"""

from __future__ import annotations

import argparse

from carsweep.cli.arguments import COUNT, place
from carsweep.errors import UserError

HELP = ("retrain a sweep's best trial (or top K) on train+val, test it once, and write "
        "EXPERIMENT/analysis/ (metrics, calibration, confusion matrix, Grad-CAM of mistakes, "
        "report.html)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=place,
                        help="experiment folder or URI, e.g. results/demo, s3://bucket/results/demo")
    parser.add_argument("--epochs", type=COUNT, default=None,
                        help="retrain for N epochs (default: the best trial's epochs)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="retrain K times (seeds seed..seed+K-1) and report mean and spread")
    parser.add_argument("--ensemble", type=int, default=1, metavar="K",
                        help="also retrain the next K-1 best trials once each and report the "
                        "ensemble of the K (mean of their softmaxes) next to the best alone")
    parser.add_argument("--tta", action="store_true",
                        help="also report horizontal-flip test-time augmentation (mean softmax "
                        "of each test image and its mirror image)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to retrain (default: the best trial's device)")
    parser.add_argument("--address", default=None,
                        help="retrain as Ray tasks on this cluster, 'auto' or HOST:PORT "
                        "(default: the cluster the sweep ran on, if it ran on one)")
    parser.add_argument("--retrain-gpus", type=float, default=None, metavar="G",
                        help="GPUs per retrain task on a cluster (default: 1, a whole GPU, "
                        "for a GPU sweep; 0.5 puts two retrains on one GPU)")
    parser.add_argument("--local", action="store_true",
                        help="retrain in this process, one seed after another, even when the "
                        "sweep ran on a cluster")


def run(args: argparse.Namespace) -> int:
    from carsweep.analysis.analyze import analyze_experiment
    from carsweep.analysis.retrain import retrain_locally

    retrain = retrain_strategy(args)
    elsewhere = retrain is not retrain_locally  # this process only coordinates: no GPU here
    folder = analyze_experiment(args.experiment, epochs=args.epochs, seeds=args.seeds,
                                ensemble_of=args.ensemble, tta=args.tta, device=args.device,
                                retrain=retrain, fit_device="cpu" if elsewhere else None)
    print(f"analysis written: {folder}")
    return 0


def retrain_strategy(args: argparse.Namespace):
    """Local unless the sweep ran on a cluster or --address is given; --local wins."""
    from carsweep.analysis.retrain import retrain_locally
    from carsweep.results import experiment_sweep

    if args.local and args.address is not None:
        raise UserError(f"--local and --address {args.address} contradict each other: --local "
                        "retrains in this process, --address on a cluster; give one of them")
    if args.local and args.retrain_gpus is not None:
        raise UserError(f"--retrain-gpus {args.retrain_gpus:g} is for retrains on a cluster; "
                        "--local retrains in this process")
    if args.local:
        return retrain_locally
    sweep = experiment_sweep(args.experiment)
    address = args.address if args.address is not None else sweep.cluster.address
    if address is None:
        return retrain_locally
    from carsweep.search.cluster_retrain import ClusterRetrain

    return ClusterRetrain(sweep, address, gpus=args.retrain_gpus)
