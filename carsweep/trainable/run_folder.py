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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from torch.utils.tensorboard import SummaryWriter

from carsweep.config.files import CHECKPOINT_FILE
from carsweep.config.io import changed_settings, load_model, save_model, write_text_atomic
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import CLASSES_FILE
from carsweep.errors import UserError

METRICS_FILE = "metrics.csv"
BEST_METRIC = "val_top1"


# What `train --resume --set` may change: how long it trains on, and how and where it
# computes, not what it trains (another model or size does not fit its checkpoint).
RESUMABLE_SETTINGS = frozenset({"epochs", "num_workers", "data_cache", "cache_dir", "augment_on",
                                "device", "precision", "deterministic"})


def resumed_config(folder: Path, overrides: list[str]) -> TrialConfig:
    """The run's own trial.yaml with `overrides` of RESUMABLE_SETTINGS; any other changed
    setting is refused in one line (a resumed run trains on as it started: another model or
    size does not fit its checkpoint), before anything is written."""
    if not (folder / "trial.yaml").is_file():
        raise UserError(f"{folder}: no run to resume (no trial.yaml); start it without --resume")
    saved = load_model(TrialConfig, folder / "trial.yaml")
    config = load_model(TrialConfig, folder / "trial.yaml", overrides)
    changed = changed_settings(saved.model_dump(mode="json"), config.model_dump(mode="json"),
                               RESUMABLE_SETTINGS)
    if changed:
        raise UserError(f"{folder}: a resume trains on as the run started, but these settings "
                        f"differ from its trial.yaml: {'; '.join(changed)}; drop them (only "
                        f"{', '.join(sorted(RESUMABLE_SETTINGS))} may change), or start a new "
                        "run with another --out")
    if not (folder / "checkpoints" / "last").is_dir():
        raise UserError(f"{folder}: nothing to resume (no checkpoints/last); start it again "
                        "without --resume")
    return config


def check_same_classes(folder: Path, classes: list[str]) -> None:
    """A run resumes on the dataset it started on: the same classes in the same order."""
    path = folder / CLASSES_FILE
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved != classes:
        raise UserError(f"{folder}: the run was trained on {_classes_said(saved)}, but --data "
                        f"has {_classes_said(classes)}; resume it with the dataset it started "
                        "on")


def _classes_said(classes: list[str] | None) -> str:
    if classes is None:
        return f"unknown classes (no {CLASSES_FILE})"
    shown = ", ".join(repr(name) for name in classes[:3])
    return f"{len(classes)} classes ({shown}{', ...' if len(classes) > 3 else ''})"


@contextmanager
def new_run_removed_on_failure(folder: Path, *, fresh: bool) -> Iterator[None]:
    """A new run that stops (an error, Ctrl-C) before its first checkpoint leaves no folder:
    there is nothing in it to resume, and a later `train --out` of the same name would meet
    a stray trial.yaml. A run with a checkpoint is kept for `--resume`."""
    existed = Path(folder).exists()
    try:
        yield
    except BaseException:
        if fresh and not existed and not (Path(folder) / "checkpoints" / "last").is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        raise


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
