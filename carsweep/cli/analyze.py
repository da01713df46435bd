"""`carsweep analyze EXPERIMENT`: retrain the best trial on train+val, test it once, explain it."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("retrain a sweep's best trial on train+val, test it once, and write "
        "EXPERIMENT/analysis/ (metrics, confusion matrix, Grad-CAM of mistakes, report.html)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", type=Path, help="experiment folder, e.g. results/demo")
    parser.add_argument("--epochs", type=int, default=None,
                        help="retrain for N epochs (default: the best trial's epochs)")
    parser.add_argument("--seeds", type=int, default=1,
                        help="retrain K times (seeds seed..seed+K-1) and report mean and spread")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to retrain (default: the best trial's device)")


def run(args: argparse.Namespace) -> int:
    from carsweep.analysis.analyze import analyze_experiment

    folder = analyze_experiment(args.experiment, epochs=args.epochs, seeds=args.seeds,
                                device=args.device)
    print(f"analysis written: {folder}")
    return 0
