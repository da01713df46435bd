"""`carsweep train --data DATASET --config trial.yaml [--set key=value ...] [--out RUN]`: one trial.

Writes the run folder (trial.yaml, classes.json, metrics.csv, TensorBoard events,
checkpoints/last and checkpoints/best) and prints a progress line per epoch. `--resume`
continues a run from its checkpoints/last with the config saved in its trial.yaml.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from carsweep.cli.arguments import place

HELP = "train one trial (any torchvision backbone) on a prepared dataset, standalone, without Ray"
EPILOG = "Every trial setting and augmentation preset: carsweep settings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=place, required=True,
                        help="prepared dataset: a folder, or its URI (s3://BUCKET/PREFIX)")
    parser.add_argument("--config", type=Path, help="trial config YAML (default: all defaults)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config field, e.g. --set lr=0.01 --set augmentation=flip+color-jitter",
    )
    parser.add_argument("--out", type=Path, help="run folder (default: runs/train-TIMESTAMP)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--eval-split", default="val", choices=("val", "none"),
                        help="split evaluated each epoch, or none (the test split is kept for "
                        "`analyze`)")


def run(args: argparse.Namespace) -> int:
    from carsweep.config.io import load_model
    from carsweep.config.trial import TrialConfig
    from carsweep.data.folders import check_output_path
    from carsweep.data.manifest import load_dataset
    from carsweep.errors import UserError
    from carsweep.trainable import (
        check_augmentation,
        check_backbone,
        load_weights,
        resolve_device,
        train,
    )
    from carsweep.trainable.run_folder import (
        METRICS_FILE,
        RunFolder,
        check_same_classes,
        new_run_removed_on_failure,
        resumed_config,
    )

    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    check_output_path(out, flag="--out")
    if args.resume:
        if args.out is None or args.config is not None:
            raise UserError("--resume continues the run in --out with its own trial.yaml; "
                            "give --out RUN and no --config")
        config = resumed_config(out, args.overrides)
        checkpoint = out / "checkpoints" / "last"
    else:
        if (out / METRICS_FILE).exists() or (out / "checkpoints").exists():
            raise UserError(f"{out}: already holds a run; use --resume to continue it or "
                            "choose another --out")
        config = load_model(TrialConfig, args.config, args.overrides)
        checkpoint = None
    check_augmentation(config.augmentation, resize=config.resize)
    check_backbone(config.model, resize=config.resize, augmentation=config.augmentation)
    resolve_device(config.device)  # `cuda` on a machine without one: an error, no run folder
    # Weights are resolved before the run folder exists, so a bad source leaves nothing behind.
    weights = None if args.resume else load_weights(config.weights, config.model)
    eval_split = None if args.eval_split == "none" else args.eval_split
    dataset = load_dataset(args.data)
    if args.resume:
        check_same_classes(out, dataset.classes)
    epochs = f"{config.epochs} epoch{'' if config.epochs == 1 else 's'}"
    print(f"training {epochs} on {dataset.folder} "
          f"({dataset.num_classes} classes) -> {out}", flush=True)
    with new_run_removed_on_failure(out, fresh=not args.resume), \
            RunFolder(out, config, dataset.classes, resume=args.resume) as folder:
        result = train(config, dataset, reporter=folder, eval_split=eval_split,
                       resume_from=checkpoint, initial_weights=weights)
    if result.history and "val_top1" in result.history[-1]:
        print(f"best val_top1 {folder.best:.1%}; checkpoints in {out / 'checkpoints'}")
    return 0
