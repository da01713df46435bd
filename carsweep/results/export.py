"""Exported weights: one file with everything needed to use a trained model, and nothing else.

An export is a dict of tensors, strings, numbers, lists and dicts, so it loads with
`torch.load(path, weights_only=True)` and no carsweep code:

    format, version        "carsweep-export", 2 (1: before temperature; read as T = 1)
    architecture           torchvision's model name, e.g. "resnet18", with its head replaced
                           for len(classes) (a file without it is ResNet-18)
    model                  the state dict
    temperature            divide the logits by it before the softmax (1.0: not calibrated)
    calibration            how `analyze` fitted the temperature (metrics.json's), else None
    classes                class names, index = output
    input_size             square side in pixels the images are resized to
    crop                   "none": the whole image is resized; "bbox": the model was trained
                           on car crops (bbox_crop), so crop to the car first
    normalization          {"mean": [r, g, b], "std": [r, g, b]} on 0..1 RGB
    config                 the TrialConfig it was trained with (dict)
    test_metrics           EXPERIMENT/analysis/metrics.json for the retrained model, else None
    source                 what it came from: kind (retrained, trial, run, checkpoint), path,
                           the checkpoint file's sha256, trial_id and validation score where
                           known

Sources, by what FOLDER is: an experiment (the model `analyze` retrained and saved as a
checkpoint folder in EXPERIMENT/analysis/model/ if there is one, else the best trial's best
checkpoint), a `carsweep train` run folder (checkpoints/best, else checkpoints/last), or a
checkpoint folder itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carsweep import __version__
from carsweep.config import files
from carsweep.config.files import CHECKPOINT_FILE, SWEEP_FILE, TRIAL_FILE
from carsweep.config.io import atomic_write, load_model, validate
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.results.store import load_experiment
from carsweep.storage import BucketPath, local_copy, location
from carsweep.trainable.augment import normalization
from carsweep.trainable.backbones import DEFAULT_MODEL, model_names
from carsweep.trainable.checkpoint import (
    CLASSES_FILE,
    cpu_state_dict,
    load_checkpoint,
    save_checkpoint,
    torch_save_atomic,
)
from carsweep.trainable.gpu_augment import Normalize
from carsweep.trainable.model import build_model
from carsweep.trainable.safe_load import load_tensors_only

FORMAT = "carsweep-export"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# Where `analyze` keeps its retrained model (a checkpoint folder) and its test metrics.
RETRAINED_MODEL_DIR = Path(files.ANALYSIS_DIR) / files.RETRAINED_MODEL_DIR
TEST_METRICS_FILE = Path(files.ANALYSIS_DIR) / files.TEST_METRICS_FILE


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint folder to export and what to say about where it came from."""

    checkpoint: Path
    kind: str  # retrained, trial, run, checkpoint
    test_metrics: dict[str, Any] | None
    details: dict[str, Any]


@dataclass(frozen=True)
class Export:
    """A loaded export: the model (eval mode, CPU) and what is needed to feed it."""

    model: nn.Module
    architecture: str
    temperature: float
    classes: list[str]
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    config: TrialConfig
    test_metrics: dict[str, Any] | None
    source: dict[str, Any]
    crop: str  # "none" or "bbox" (export_payload)

    @property
    def normalize(self) -> Normalize:
        """The model's input normaliser, with the export's own mean and std (on the CPU)."""
        return Normalize(self.mean, self.std)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C) softmax of the model's logits divided by the export's temperature (the one
        `analyze` fitted; 1.0 where none was) for uint8 (N, 3, S, S) images, on the CPU."""
        device = next(self.model.parameters()).device
        logits = self.model(self.normalize.to(device)(images.to(device)))
        return torch.softmax(logits.float() / self.temperature, dim=1).cpu()


def find_source(folder: Path | BucketPath) -> ModelSource:
    """The checkpoint an experiment, run folder or checkpoint folder stands for (any of them
    in a bucket too: its checkpoint folder is then downloaded, as torch.load reads files)."""
    source = _source_in(location(folder))
    return dataclasses.replace(source, checkpoint=local_copy(source.checkpoint))


def _source_in(folder: Path | BucketPath) -> ModelSource:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder; give an experiment folder, a `carsweep "
                        "train` run folder or a checkpoint folder")
    if (folder / SWEEP_FILE).is_file():
        return _experiment_source(folder)
    if (folder / CHECKPOINT_FILE).is_file():
        return ModelSource(folder, "checkpoint", None, {"path": str(folder.resolve())})
    run_checkpoints = [folder / "checkpoints" / name for name in ("best", "last")]
    for checkpoint in run_checkpoints:
        if (checkpoint / CHECKPOINT_FILE).is_file():
            return ModelSource(checkpoint, "run", None, {"path": str(folder.resolve()),
                                                         "checkpoint": checkpoint.name})
    raise UserError(f"{folder}: not an experiment ({SWEEP_FILE}), a run folder "
                    f"(checkpoints/best/{CHECKPOINT_FILE}) or a checkpoint folder "
                    f"({CHECKPOINT_FILE})")


def _experiment_source(folder: Path) -> ModelSource:
    retrained = folder / RETRAINED_MODEL_DIR
    path = str(folder.resolve())
    if (retrained / CHECKPOINT_FILE).is_file():
        return ModelSource(retrained, "retrained", _test_metrics(folder), {"path": path})
    experiment = load_experiment(folder)
    best = experiment.best()
    if best.checkpoint is None:
        raise UserError(f"{folder}: the best trial {best.trial_id} kept no checkpoint; run "
                        "`carsweep analyze` to retrain it, then export")
    return ModelSource(best.checkpoint, "trial", None, {
        "path": path, "trial_id": best.trial_id, "checkpoint": best.checkpoint.name,
        "metric": experiment.sweep.metric, "value": best.value,
    })


def save_retrained_model(analysis_folder: Path, model: nn.Module, config: TrialConfig,
                         classes: list[str]) -> Path:
    """Keep the model `analyze` retrained in its analysis folder (as the checkpoint folder
    analysis/model/: weights, trial.yaml, classes.json), where `export` looks first."""
    state = {"model": cpu_state_dict(model),
             "epoch": config.epochs, "classes": list(classes)}
    return save_checkpoint(Path(analysis_folder) / RETRAINED_MODEL_DIR.name, state, config,
                           classes)


def _test_metrics(folder: Path) -> dict[str, Any] | None:
    path = folder / TEST_METRICS_FILE
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise UserError(f"{path}: not valid JSON; run `carsweep analyze` again") from None
    return metrics if isinstance(metrics, dict) else None


def export_payload(source: ModelSource) -> dict[str, Any]:
    """The export dict of `source` (all checked: a bad checkpoint fails before any writing)."""
    state = load_checkpoint(source.checkpoint)
    config = checkpoint_config(source.checkpoint)
    classes = _checkpoint_classes(source.checkpoint, state)
    model = build_model(len(classes), model=config.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise UserError(f"{source.checkpoint}: its weights do not fit {config.model} with "
                        f"{len(classes)} classes") from None
    mean, std = normalization(config.model)
    calibration = (source.test_metrics or {}).get("calibration")
    return {
        "format": FORMAT, "version": VERSION, "carsweep_version": __version__,
        "architecture": config.model,
        "model": cpu_state_dict(model),
        "temperature": float(calibration["temperature"]) if calibration else 1.0,
        "calibration": calibration,
        "classes": classes,
        "input_size": config.resize,
        "crop": crop_of(config),
        "normalization": {"mean": list(mean), "std": list(std)},
        "config": config.model_dump(mode="json"),
        "test_metrics": source.test_metrics,
        "source": {"kind": source.kind, **source.details,
                   "checkpoint_sha256": file_sha256(source.checkpoint / CHECKPOINT_FILE)},
    }


def crop_of(config: TrialConfig) -> str:
    """What the model was trained on: "bbox" (car crops) or "none" (whole images)."""
    return "bbox" if config.bbox_crop else "none"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_export(payload: dict[str, Any], out: Path) -> Path:
    """torch.save to a temporary file beside `out`, then rename: never half an export."""
    out = Path(out)
    check_out(out)
    torch_save_atomic(payload, out)
    return out


def check_out(out: Path) -> None:
    """A UserError for an --out that cannot be the export file."""
    if Path(out).is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name such as best.pt")


def load_export(path: Path) -> Export:
    """An export file back as a model; arbitrary pickles and other files are UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights {str(path)!r}: no such file; give a file `carsweep export` "
                        "wrote")
    return from_payload(load_tensors_only(path, what="weights"), f"weights {str(path)!r}")


def from_payload(data: Any, what: str) -> Export:
    """An export dict (as written or as loaded) as a ready model; `what` names it in errors."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{what}: not a carsweep export (no format {FORMAT!r}); make one "
                        "with `carsweep export`")
    architecture = data.get("architecture", DEFAULT_MODEL)
    if data.get("version") not in READABLE_VERSIONS or architecture not in model_names():
        raise UserError(f"{what}: export version {data.get('version')} of {architecture}; "
                        f"this carsweep reads versions {', '.join(map(str, READABLE_VERSIONS))} "
                        "of torchvision's classification models")
    classes = list(data["classes"])
    config = validate(TrialConfig, data["config"], f"{what} config")
    model = build_model(len(classes), model=architecture)
    try:
        model.load_state_dict(data["model"])
    except (RuntimeError, TypeError):
        raise UserError(f"{what}: its weights do not fit {architecture} with "
                        f"{len(classes)} classes") from None
    return Export(
        model=model.eval(), architecture=architecture,
        temperature=float(data.get("temperature", 1.0)),
        classes=classes, input_size=int(data["input_size"]),
        mean=tuple(data["normalization"]["mean"]), std=tuple(data["normalization"]["std"]),
        config=config, test_metrics=data.get("test_metrics"),
        source=dict(data.get("source") or {}), crop=data.get("crop", crop_of(config)),
    )


@dataclass(frozen=True)
class Traced:
    module: torch.jit.ScriptModule
    extra_files: dict[str, str]


def trace(exported: Export) -> Traced:
    """TorchScript of the model with its normalisation: float RGB (B, 3, S, S) in 0..1 in,
    logits out (not divided by the temperature); the class names, input size, architecture and
    temperature ride along as extra files."""
    wrapped = nn.Sequential(exported.normalize, exported.model).eval()
    example = torch.zeros(2, 3, exported.input_size, exported.input_size)
    with warnings.catch_warnings():
        # Deprecated in favour of torch.export, but still what libtorch (C++) loads.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(wrapped, example)
    return Traced(traced, {
        "classes.json": json.dumps(exported.classes),
        "carsweep.json": json.dumps({"input_size": exported.input_size, "input": "float RGB "
                                     "0..1, square resize, normalised inside",
                                     "architecture": exported.architecture,
                                     "temperature": exported.temperature}),
    })


def write_torchscript(traced: Traced, out: Path) -> Path:
    """Save a `trace` result atomically."""
    out = Path(out)
    with atomic_write(out, "wb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced.module, handle, _extra_files=traced.extra_files)
    return out


def checkpoint_config(checkpoint: Path) -> TrialConfig:
    """The TrialConfig saved beside a checkpoint (how to build and feed its model)."""
    path = checkpoint / TRIAL_FILE
    if not path.is_file():
        raise UserError(f"{checkpoint}: no {TRIAL_FILE}; cannot tell how to feed the model")
    return load_model(TrialConfig, path)


def _checkpoint_classes(checkpoint: Path, state: dict[str, Any]) -> list[str]:
    path = checkpoint / CLASSES_FILE
    if path.is_file():
        return [str(name) for name in json.loads(path.read_text())]
    if "classes" in state:
        return [str(name) for name in state["classes"]]
    raise UserError(f"{checkpoint}: no {CLASSES_FILE}; cannot name the model's outputs")

