"""The graph an export ships for deployment (ONNX, torch.export's .pt2) and what rides with it.

The input contract, the same for both files:

    in     `images`: uint8 RGB, NCHW (batch, 3, S, S), S the export's input size. The square
           resize happens outside the graph, with PIL's antialiased bilinear (what the model
           saw in training and evaluation): an ONNX Resize does not reproduce PIL's
           antialiasing filter, so a resize in the graph would feed the model other pixels.
           A model trained with `bbox_crop` saw car crops: crop to the car before resizing.
    graph  cast to float and normalise with the export's mean and std (`Normalize`), the model
           in eval mode.
    out    `logits` (batch, C), and `probs` (batch, C) = softmax(logits / temperature), the
           temperature `analyze` fitted (1 where none was).

The batch dimension is dynamic: the graph is captured with a batch of TRACE_BATCH, since with
1 torch.export would take the batch for a constant 1. Everything else a user needs travels in
the file as string metadata (`metadata`): classes, input size, crop, architecture,
temperature, the single model's test metrics, the carsweep/torch/torchvision versions and the
sha256 of the checkpoint it came from.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torch.export import Dim, ExportedProgram

from carsweep import __version__
from carsweep.errors import UserError
from carsweep.results.export import Export

INPUT_NAME = "images"
OUTPUT_NAMES = ("logits", "probs")
TRACE_BATCH = 2
BATCH_DIM = "batch"
DEPLOY_FORMAT = "carsweep-deploy"
DEPLOY_VERSION = 1
# metrics.json's keys that describe the one exported model; its `ensemble` and `tta` objects
# describe predictions this file cannot make, and `seeds` other retrains.
SINGLE_MODEL_METRICS = ("top1", "top5", "mean_per_class_accuracy", "test_images", "ece", "nll",
                        "split_scheme")
CROPS = {
    "none": "whole image: resize the whole photo to SxS, no crop",
    "bbox": "car crops: trained on the cars' bounding boxes; crop to the car, then resize",
}
# Backbones torch.export or the ONNX exporter cannot take, and why (bench/export_all.py's
# output; docs/export.md lists the same).
REFUSED: dict[str, str] = {}


class DeployGraph(nn.Module):
    """uint8 (B, 3, S, S) RGB -> (logits (B, C), probs (B, C)): the export's model with its
    normalisation before it and its temperature after it."""

    def __init__(self, exported: Export) -> None:
        super().__init__()
        self.normalize = exported.normalize
        self.model = exported.model
        self.register_buffer("temperature", torch.tensor(exported.temperature,
                                                         dtype=torch.float32))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(self.normalize.bytes_in_graph(images))  # (B, C)
        return logits, torch.softmax(logits / self.temperature, dim=1)


def capture(exported: Export) -> ExportedProgram:
    """torch.export of the export's DeployGraph (eval mode, batch dimension dynamic); a
    backbone it cannot take is a UserError naming it."""
    refuse_if_known(exported.architecture)
    graph = DeployGraph(exported).eval()
    example = torch.zeros(TRACE_BATCH, 3, exported.input_size, exported.input_size,
                          dtype=torch.uint8)
    with exporter_refusal("torch.export", exported.architecture), torch.no_grad():
        return torch.export.export(graph, (example,),
                                   dynamic_shapes={INPUT_NAME: {0: Dim(BATCH_DIM, min=1)}})


@contextmanager
def exporter_refusal(exporter: str, architecture: str) -> Iterator[None]:
    """An exporter's failure as a one-line UserError naming the backbone. torch.export and
    torch.onnx raise a dozen types (their own UserErrors, guard and unsupported-operator
    errors, RuntimeError); whichever it is, the answer is the same: it cannot take this
    model, and the .pt is still there to use."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001
        raise UserError(f"{exporter} cannot take {architecture} ({first_line(error)}); "
                        "export the .pt alone") from None


def refuse_if_known(architecture: str) -> None:
    """The refusal of a backbone bench/export_all.py found no exporter takes."""
    if architecture in REFUSED:
        raise UserError(f"{architecture} cannot be exported for deployment: "
                        f"{REFUSED[architecture]}; export the .pt alone")


def metadata(payload: dict[str, Any]) -> dict[str, str]:
    """What travels inside the ONNX file (metadata_props) and the .pt2 (its carsweep.json),
    each value a string (JSON for lists and objects), read off the .pt's payload."""
    size = int(payload["input_size"])
    crop = payload["crop"]
    metrics = payload.get("test_metrics") or {}
    single = {key: metrics[key] for key in SINGLE_MODEL_METRICS if key in metrics}
    return {
        "format": DEPLOY_FORMAT,
        "version": str(DEPLOY_VERSION),
        "architecture": payload["architecture"],
        "classes": json.dumps(payload["classes"]),
        "input_size": str(size),
        "input": f"{INPUT_NAME}: uint8 RGB NCHW (batch, 3, {size}, {size}); resize with PIL's "
                 "antialiased bilinear outside the graph; cast and normalisation are inside",
        "crop": crop,
        "crop_meaning": CROPS[crop].replace("SxS", f"{size}x{size}"),
        "outputs": f"{OUTPUT_NAMES[0]} (batch, classes); {OUTPUT_NAMES[1]} = "
                   f"softmax({OUTPUT_NAMES[0]} / temperature)",
        "temperature": repr(float(payload["temperature"])),
        "normalization": json.dumps(payload["normalization"]),
        "test_metrics": json.dumps(single or None),
        "versions": json.dumps({"carsweep": __version__, "torch": torch.__version__,
                                "torchvision": torchvision.__version__}),
        "source_sha256": payload["source"]["checkpoint_sha256"],
        "source": json.dumps(payload["source"]),
    }


@dataclass(frozen=True)
class DeployInfo:
    """An ONNX or .pt2 export's metadata, read back."""

    architecture: str
    classes: list[str]
    input_size: int
    crop: str
    temperature: float
    test_metrics: dict[str, Any] | None
    versions: dict[str, str]
    source_sha256: str
    metadata: dict[str, str]


def read_metadata(found: dict[str, str], what: str) -> DeployInfo:
    """`metadata`'s strings back as values; a file without them is a UserError (`what` names
    it)."""
    if found.get("format") != DEPLOY_FORMAT:
        raise UserError(f"{what}: not a carsweep export (no metadata format "
                        f"{DEPLOY_FORMAT!r}); make one with `carsweep export --onnx` or --pt2")
    if found.get("version") != str(DEPLOY_VERSION):
        raise UserError(f"{what}: deployment export version {found.get('version')}; this "
                        f"carsweep reads version {DEPLOY_VERSION}")
    return DeployInfo(
        architecture=found["architecture"], classes=list(json.loads(found["classes"])),
        input_size=int(found["input_size"]), crop=found["crop"],
        temperature=float(found["temperature"]), test_metrics=json.loads(found["test_metrics"]),
        versions=json.loads(found["versions"]), source_sha256=found["source_sha256"],
        metadata=dict(found))


def first_line(error: BaseException) -> str:
    """An exporter's error in one line: its first non-empty line, named by its type."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:200]}" if lines else type(error).__name__
