"""`carsweep export EXPERIMENT_OR_RUN --out best.pt [--torchscript]`: weights plus metadata.

From an experiment: the model `analyze` retrained if there is one, else the best trial's best
checkpoint; from a `carsweep train` run folder: its checkpoints/best. The file loads with
`torch.load(..., weights_only=True)`; `carsweep predict --weights` uses it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "export the best model of an experiment or a train run: weights, classes, preprocessing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, metavar="EXPERIMENT_OR_RUN",
                        help="experiment folder (results/NAME), `carsweep train` run folder, "
                        "or a checkpoint folder")
    parser.add_argument("--out", type=Path, default=Path("best.pt"),
                        help="export file to write (default: best.pt)")
    parser.add_argument("--torchscript", action="store_true",
                        help="also write OUT's stem + .torchscript.pt (float RGB 0..1 in, "
                        "logits out; for libtorch / torch.jit.load)")


def run(args: argparse.Namespace) -> int:
    from carsweep.results.export import export

    torchscript = (args.out.with_name(f"{args.out.stem}.torchscript.pt")
                   if args.torchscript else None)
    payload = export(args.folder, args.out, torchscript=torchscript)
    source = payload["source"]
    calibrated = (f", temperature {payload['temperature']:.3f}" if payload["calibration"]
                  else ", not calibrated")
    print(f"exported {source['kind']} {payload['architecture']} ({len(payload['classes'])} "
          f"classes, {payload['input_size']} px{calibrated}) from {source['path']} -> "
          f"{args.out}")
    if "value" in source:
        print(f"trial {source['trial_id']}: {source['metric']} = {source['value']:.4f} "
              "(validation; run `carsweep analyze` for an honest test score)")
    if payload["test_metrics"]:
        shown = {k: v for k, v in payload["test_metrics"].items() if isinstance(v, float)}
        print("test metrics: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
    if torchscript is not None:
        print(f"TorchScript -> {torchscript}")
    return 0
