"""Checkpoint folders: everything a run needs to continue exactly where it stopped.

A checkpoint folder holds `checkpoint.pt` (model, optimizer, scheduler, scaler, epoch,
history, and the RNG states: torch, the training GPU's, numpy, python and the data order),
`trial.yaml` (the resolved TrialConfig) and `classes.json`. Every value in `checkpoint.pt`
is a tensor, number, string or container of those, so it loads with `weights_only=True`.
Each file is written to a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from carsweep.config.files import CHECKPOINT_FILE, TRIAL_FILE
from carsweep.config.io import atomic_write, save_model, write_text_atomic
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import CLASSES_FILE  # the same list under the same name
from carsweep.errors import UserError
from carsweep.trainable.device import CPU
from carsweep.trainable.safe_load import load_tensors_only


@dataclass(frozen=True)
class CheckpointPolicy:
    """Which epochs write a checkpoint: always the epochs in `at_epochs` (ASHA's rungs: where
    a trial may stop, so its last epoch is kept) and a run's last epoch, and in between at
    most one every `every_s` seconds (0: every epoch, the default).

    A full checkpoint of ResNet-18 at 196 classes with its optimizer state is 90-135 MB; at a
    few seconds an epoch on a fast GPU, with many trials at once, checkpointing every epoch
    writes hundreds of MB/s to shared storage. A trial resumed after a lost node redoes at
    most the epochs since its last checkpoint: `every_s` of work, or the run to a rung."""

    at_epochs: frozenset[int] = frozenset()
    every_s: float = 0.0
    last_epoch: bool = True  # False: a run nobody resumes (analyze's retrains) writes none

    def due(self, epoch: int, last_epoch: int, seconds_since_last: float) -> bool:
        return ((self.last_epoch and epoch == last_epoch) or epoch in self.at_epochs
                or seconds_since_last >= self.every_s)


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights detached, contiguous and on the CPU, with the state dict's
    per-module versions (`_metadata`) kept: a plain dict comprehension drops them, and
    MNASNet's loader refuses weights without its version ("version should be set to 1 or 2")."""
    state = model.state_dict()
    copied = OrderedDict((name, tensor.detach().cpu().contiguous())
                         for name, tensor in state.items())
    if hasattr(state, "_metadata"):
        copied._metadata = state._metadata  # type: ignore[attr-defined]
    return copied


# analyze's retrains hand their model over in memory: a checkpoint (90-135 MB for ResNet-18)
# every epoch would be written for nobody.
NO_CHECKPOINTS = CheckpointPolicy(every_s=float("inf"), last_epoch=False)


def save_checkpoint(folder: Path, state: dict[str, Any], config: TrialConfig,
                    classes: list[str]) -> Path:
    """Write the three files of a checkpoint folder (created if needed); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_save_atomic(state, folder / CHECKPOINT_FILE)
    save_model(config, folder / TRIAL_FILE)
    write_text_atomic(folder / CLASSES_FILE, json.dumps(classes, indent=1) + "\n")
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """The state dict saved in a checkpoint folder; missing, corrupt or truncated -> UserError."""
    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise UserError(f"{folder}: not a checkpoint folder (no {CHECKPOINT_FILE})")
    state = load_tensors_only(path, what="checkpoint")
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise UserError(f"{path}: not a carsweep checkpoint (no model and epoch)")
    return state


def rng_states(data_order: torch.Generator | None, device: torch.device = CPU) -> dict[str, Any]:
    """Every random generator a run draws from, in weights_only-loadable form: the training
    device's CUDA generator only (its device-side draws), never every visible GPU's, which
    would open a context on each and tie the checkpoint to as many GPUs."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "gauss": gauss},
        "python": random.getstate(),
        "data_order": data_order.get_state() if data_order is not None else None,
    }


def restore_rng_states(states: dict[str, Any], data_order: torch.Generator | None,
                       device: torch.device = CPU) -> None:
    """Put back what `rng_states` saved; the CUDA generator onto the training device, when it
    trains on one (a checkpoint of every visible GPU's, from before: its first, the device a
    Ray trial trains on)."""
    torch.set_rng_state(states["torch"])
    cuda = states["cuda"]
    if isinstance(cuda, list | tuple):
        cuda = cuda[0] if cuda else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
    saved = states["numpy"]
    np.random.set_state((saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"],
                         saved["has_gauss"], saved["gauss"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if data_order is not None and states["data_order"] is not None:
        data_order.set_state(states["data_order"])


def torch_save_atomic(state: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary file renamed over `path`; stopped by anything (Ctrl-C
    included), the temporary file is removed and `path` is as it was."""
    # Through a Python file, so a full disk is OSError(ENOSPC), not torch's RuntimeError.
    with atomic_write(path, "wb") as out:
        _save_raising_what_stopped_it(state, out)


def _save_raising_what_stopped_it(state: dict[str, Any], out) -> None:
    """torch.save, where an error that stops the writing is raised as itself.

    torch's zip writer finishes the archive in its `__exit__` even when the body raised, and
    an archive cut mid-record cannot be finished: its RuntimeError ("unexpected pos ...")
    replaced the KeyboardInterrupt of a Ctrl-C landing in a checkpoint's write, which then
    reached the CLI as a traceback and exit 1 instead of "interrupted" and 130."""
    try:
        torch.save(state, out)
    except RuntimeError as error:
        if error.__context__ is None:
            raise
        raise error.__context__ from None
