"""A standalone run's folder: the Reporter `carsweep train` hands to `train`.

    RUN/trial.yaml, classes.json     the resolved config and the class names
    RUN/metrics.csv                  one row per epoch (rewritten atomically each epoch)
    RUN/events.out.tfevents.*        TensorBoard scalars (`tensorboard --logdir RUN`)
    RUN/checkpoints/last, best       the latest checkpoint and the one with the best val_top1

It prints one progress line per epoch. Use it as a context manager so the TensorBoard writer
is flushed and closed even when training fails.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import sys
from pathlib import Path
from typing import TextIO

from torch.utils.tensorboard import SummaryWriter

from carsweep.config.files import CHECKPOINT_FILE
from carsweep.config.io import save_model, write_text_atomic
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import CLASSES_FILE

METRICS_FILE = "metrics.csv"
BEST_METRIC = "val_top1"


class RunFolder:
    """Reporter writing a run folder; `resume=True` keeps the rows up to the last checkpoint."""

    def __init__(self, folder: Path, config: TrialConfig, classes: list[str], *,
                 resume: bool = False, out: TextIO | None = None) -> None:
        self.folder = Path(folder)
        self.config = config
        self.out = out  # None: whatever sys.stdout is when a line is printed
        self.rows = self._rows_so_far() if resume else []
        scores = [row[BEST_METRIC] for row in self.rows if BEST_METRIC in row]
        self.best = max(scores, default=-math.inf)
        save_model(config, self.folder / "trial.yaml")
        write_text_atomic(self.folder / CLASSES_FILE, json.dumps(classes, indent=1) + "\n")
        self.writer: SummaryWriter | None = None

    @property
    def last_checkpoint(self) -> Path:
        return self.folder / "checkpoints" / "last"

    @property
    def best_checkpoint(self) -> Path:
        return self.folder / "checkpoints" / "best"

    def __enter__(self) -> RunFolder:
        self.writer = SummaryWriter(log_dir=str(self.folder))
        return self

    def __exit__(self, *exc_info) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        epoch = int(metrics["epoch"])
        self.rows = [row for row in self.rows if row["epoch"] < epoch] + [dict(metrics)]
        write_text_atomic(self.folder / METRICS_FILE, _to_csv(self.rows))
        if self.writer is not None:
            for name, value in metrics.items():
                if name != "epoch" and isinstance(value, int | float):  # not `precision`
                    self.writer.add_scalar(name, value, epoch)
            self.writer.flush()
        if checkpoint_dir is not None:
            copy_folder_atomic(checkpoint_dir, self.last_checkpoint)
            score = metrics.get(BEST_METRIC)
            if score is not None and score > self.best:
                self.best = score
                copy_folder_atomic(checkpoint_dir, self.best_checkpoint)
        print(progress_line(metrics, self.config.epochs), file=self.out or sys.stdout,
              flush=True)

    def _rows_so_far(self) -> list[dict[str, float]]:
        path = self.folder / METRICS_FILE
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            rows = [{k: _number_or_text(v) for k, v in row.items() if v != ""}
                    for row in csv.DictReader(handle)]
        for row in rows:
            row["epoch"] = int(row["epoch"])
        return rows


def progress_line(metrics: dict[str, float], epochs: int) -> str:
    """`epoch 2/10  train loss 1.234 acc 45.6%  val loss 1.5 top1 40.0% top5 80.0%  ...`"""
    parts = [f"epoch {int(metrics['epoch'])}/{epochs}",
             f"train loss {metrics['train_loss']:.4f} acc {metrics['train_acc']:.1%}"]
    if "val_top1" in metrics:
        parts.append(f"val loss {metrics['val_loss']:.4f} top1 {metrics['val_top1']:.1%} "
                     f"top5 {metrics['val_top5']:.1%}")
    parts.append(f"lr {metrics['lr']:.3g}  {metrics['images_per_s']:.0f} img/s"
                 + (f" {metrics['precision']}" if "precision" in metrics else "")
                 + f"  {metrics['epoch_time_s']:.1f} s")
    return "  ".join(parts)


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value  # `precision`


def copy_folder_atomic(source: Path, target: Path) -> None:
    """Copy `source` to a sibling of `target`, then swap it in: never half a checkpoint."""
    if not (Path(source) / CHECKPOINT_FILE).is_file():
        raise FileNotFoundError(f"{source}: no {CHECKPOINT_FILE} to copy")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.new")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _to_csv(rows: list[dict[str, float]]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
