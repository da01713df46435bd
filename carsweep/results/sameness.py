"""Proof that a deployment file gives the .pt's answers, run on the written file right after
writing it.

The reference is the PyTorch model as `carsweep predict --weights best.pt` runs it
(`Export.probabilities`). The candidate (ONNX Runtime on the .onnx, the .pt2's program) gets
the same uint8 images twice: PROOF_IMAGES of them in one batch, and the first alone (the
batch dimension is dynamic; both sizes must work). They agree when

    max |Δp| <= PROB_TOLERANCE over every probability of every image, and
    top-1 is the same class for every image whose top-2 margin exceeds 2 x PROB_TOLERANCE
    (closer than that, float rounding may order the two either way).

The images are the dataset's own (test split, else val, else train; spread over the
manifest, so over the classes; cropped to their boxes for a bbox_crop model) where the
dataset can be reached, else seeded random pixels, and the proof says which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import BOX_COLUMNS, MANIFEST_FILE, load_dataset
from carsweep.errors import UserError
from carsweep.results.export import Export
from carsweep.storage import BucketPath, location
from carsweep.trainable.data import load_inputs

# ONNX Runtime and torch differ by float32 rounding: 1e-8 to 1e-5 on most of the 75 backbones
# in bench/export_all.py, up to 3e-4 on the deepest ResNets with random weights, where torch's
# own float32 result is as far from a float64 run (docs/export.md). A wrong normalisation,
# temperature or layer moves probabilities by 1e-2 and more.
PROB_TOLERANCE = 1e-3
PROOF_IMAGES = 16
PROOF_SEED = 0


@dataclass(frozen=True)
class ProofImages:
    images: torch.Tensor  # uint8 (N, 3, S, S)
    description: str  # "16 test images of DATA", "16 random images (seed 0): ..."


@dataclass(frozen=True)
class Agreement:
    """How a runtime's probabilities compare with the PyTorch model's."""

    runtime: str
    images: int
    max_delta: float
    decided: int  # images whose top-2 margin exceeds 2 x tolerance
    top1_equal: int  # of those, how many have the same top-1
    tolerance: float = PROB_TOLERANCE

    @property
    def same(self) -> bool:
        return self.max_delta <= self.tolerance and self.top1_equal == self.decided

    def line(self) -> str:
        margin = f"top-2 margin > {2 * self.tolerance:.0e}"
        top1 = (f"top-1 equal on {self.top1_equal}/{self.decided} answers whose {margin}"
                if self.decided else f"top-1 not compared (no answer's {margin})")
        return (f"{self.runtime} vs PyTorch: max |Δp| {self.max_delta:.1e} (tolerance "
                f"{self.tolerance:.0e}), {top1}")


def agreement(runtime: str, reference: torch.Tensor, candidate: torch.Tensor,
              tolerance: float = PROB_TOLERANCE) -> Agreement:
    """Compare (N, C) probabilities row by row (see the module's docstring)."""
    reference, candidate = reference.double(), candidate.double()
    top2 = reference.topk(min(2, reference.shape[1]), dim=1).values  # (N, 2)
    margin = top2[:, 0] - top2[:, -1] if top2.shape[1] > 1 else torch.ones(len(reference))
    decided = margin > 2 * tolerance
    equal = reference.argmax(dim=1) == candidate.argmax(dim=1)
    return Agreement(runtime=runtime, images=len(reference),
                     max_delta=float((reference - candidate).abs().max()),
                     decided=int(decided.sum()), top1_equal=int((equal & decided).sum()),
                     tolerance=tolerance)


def prove_same(runtime: str, exported: Export, run: Callable[[torch.Tensor], torch.Tensor],
               proof: ProofImages) -> Agreement:
    """`run` (uint8 images -> probabilities) against the PyTorch model on the proof images, as
    one batch and the first image alone; a disagreement is a UserError with the figures."""
    batches = [proof.images, proof.images[:1]]
    reference = torch.cat([exported.probabilities(batch) for batch in batches])
    with torch.no_grad():
        candidate = torch.cat([torch.as_tensor(run(batch)) for batch in batches])
    found = agreement(runtime, reference, candidate)
    if not found.same:
        raise UserError(f"{exported.architecture}: {found.line()} on {proof.description}; "
                        "the file gives other answers than the .pt, so it is not written")
    return found


def proof_images(exported: Export, dataset: Path | BucketPath | None, *, explicit: bool = False,
                 count: int = PROOF_IMAGES) -> ProofImages:
    """`count` images of `dataset` as the model takes them, else seeded random pixels. A
    dataset the user named (`explicit`) must load; one read off the experiment may be gone."""
    if dataset is not None and (explicit or (location(dataset) / MANIFEST_FILE).is_file()):
        return _dataset_images(exported, location(dataset), count)
    generator = torch.Generator().manual_seed(PROOF_SEED)
    size = exported.input_size
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8,
                           generator=generator)
    why = (f"the dataset {dataset} is not there" if dataset is not None
           else "no dataset is recorded for it; give --data DATASET to prove on real images")
    return ProofImages(images, f"{count} random images (seed {PROOF_SEED}): {why}")


def _dataset_images(exported: Export, dataset_folder: Path | BucketPath,
                    count: int) -> ProofImages:
    dataset = load_dataset(dataset_folder)
    for split in ("test", "val", "train"):
        rows = dataset.rows(split)
        if len(rows):
            break
    else:
        raise UserError(f"{dataset_folder}: the dataset has no images to prove the export on")
    picked = rows.iloc[np.unique(np.linspace(0, len(rows) - 1, count).round().astype(int))]
    bbox = exported.crop == "bbox"
    config = TrialConfig(resize=exported.input_size, bbox_crop=bbox)
    boxes = picked[BOX_COLUMNS].to_numpy(dtype=float) if bbox else None
    images = load_inputs(dataset.image_files(picked), config, boxes)
    cropped = ", cropped to their boxes" if bbox else ""
    return ProofImages(images, f"{len(picked)} {split} images of {dataset_folder}{cropped}")
