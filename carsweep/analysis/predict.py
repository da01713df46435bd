"""Predictions of an exported model on image files: top-k classes, optionally Grad-CAM overlays.

Images are prepared exactly as the trainable evaluates them (`trainable.data.load_inputs`:
decoded with `open_rgb`, square resize to the export's input size, no crop), then fed to the
export: the .pt's PyTorch model (normalised with the mean and std stored in it, the logits
divided by its temperature before the softmax: `Export.probabilities`), or an ONNX file in
ONNX Runtime (the same inside its graph: `OnnxExport.probabilities`). A model trained with
`bbox_crop` saw cropped cars: give it cropped photos. Grad-CAM needs the PyTorch model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import pil_to_tensor

from carsweep.analysis.gradcam import cam_layer, class_maps, overlay
from carsweep.config.trial import TrialConfig
from carsweep.data.images import DECODE_ERRORS, open_rgb
from carsweep.errors import UserError
from carsweep.results.export import Export
from carsweep.results.onnx_file import OnnxExport
from carsweep.trainable.data import load_inputs

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")
BATCH = 64


@dataclass(frozen=True)
class Prediction:
    """One image's top-k: (label, class name, probability), most probable first."""

    path: Path
    top: list[tuple[int, str, float]]
    cam: Path | None = None

    def to_json(self) -> dict:
        return {"path": str(self.path), "cam": str(self.cam) if self.cam else None,
                "top": [{"label": label, "class": name, "probability": probability}
                        for label, name, probability in self.top]}


def collect_images(inputs: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted); a missing path or
    a folder without images is a UserError."""
    paths: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = sorted(p for p in given.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{given}: no image files in this folder "
                                f"({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif given.is_file():
            paths.append(given)
        else:
            raise UserError(f"{given}: no such file or folder")
    return paths


def model_inputs(paths: list[Path], input_size: int) -> torch.Tensor:
    """uint8 (N, 3, S, S) as the model saw images at evaluation, S = `input_size`; an
    unreadable file is a UserError naming it (checked for all before anything runs)."""
    config = TrialConfig(resize=input_size, bbox_crop=False)
    images = []
    for path in paths:
        try:
            images.append(load_inputs([path], config))
        except DECODE_ERRORS as error:
            raise UserError(f"{path}: not an image that can be read ({error})") from None
    return torch.cat(images)


def top_k(probs: torch.Tensor, classes: list[str], k: int) -> list[list[tuple[int, str, float]]]:
    """Per row of (N, C) probabilities: the k most probable (label, name, probability)."""
    if k < 1:
        raise UserError(f"--top is {k}, but must be >= 1")
    values, labels = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(int(label), classes[int(label)], float(value))
             for value, label in zip(row_values, row_labels, strict=True)]
            for row_values, row_labels in zip(values, labels, strict=True)]


def save_cams(exported: Export, paths: list[Path], images: torch.Tensor, labels: list[int],
              out_dir: Path, used: set[str]) -> list[Path]:
    """Grad-CAM of class labels[i] for image i, drawn over the original picture, one PNG each
    in `out_dir` (named after the image; a name already in `used` gets a number)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The stage analyze uses at this size: ResNet's layer4 is only 1 x 1 at 32 px.
    layer = cam_layer(exported.architecture, exported.input_size)
    cams = class_maps(exported.model, images, labels, layer=layer,
                      normalize=exported.normalize)
    written = []
    for path, cam in zip(paths, cams, strict=True):
        original = pil_to_tensor(open_rgb(path))  # (3, H, W) uint8
        full = F.interpolate(cam[None, None], size=original.shape[-2:], mode="bilinear",
                             align_corners=False)[0, 0]
        target = _unique_name(out_dir, f"{path.stem}_cam", used)
        overlay(original, full).save(target)
        written.append(target)
    return written


def predict_files(exported: Export | OnnxExport, inputs: list[Path], *, k: int = 5,
                  cam_dir: Path | None = None) -> list[Prediction]:
    """Top-k for every image in `inputs` (files or folders), and CAM overlays if asked (of a
    .pt's model only: Grad-CAM reads its gradients).

    BATCH images at a time, so a large folder never sits in memory whole; overlays are drawn
    in a second pass, after every image has decoded, so a bad file leaves none behind.
    """
    if cam_dir is not None and not isinstance(exported, Export):
        raise UserError(f"--cam needs the PyTorch model, and {exported.path} is ONNX (Grad-CAM "
                        "reads the model's gradients); give the .pt export beside it: "
                        f"--weights {exported.path.with_suffix('.pt')}")
    paths = collect_images(inputs)
    chunks = [paths[i:i + BATCH] for i in range(0, len(paths), BATCH)]
    tops = []
    for chunk in chunks:
        images = model_inputs(chunk, exported.input_size)
        tops += top_k(exported.probabilities(images), exported.classes, k)
    cams: list[Path | None] = [None] * len(paths)
    if cam_dir is not None:
        used: set[str] = set()
        cams = []
        for start, chunk in zip(range(0, len(paths), BATCH), chunks, strict=True):
            labels = [top[0][0] for top in tops[start:start + len(chunk)]]
            cams += save_cams(exported, chunk, model_inputs(chunk, exported.input_size),
                              labels, cam_dir, used)
    return [Prediction(path, top, cam) for path, top, cam in zip(paths, tops, cams, strict=True)]


def format_predictions(predictions: list[Prediction]) -> str:
    """A readable table: the image, then one line per class with its probability."""
    lines = []
    for prediction in predictions:
        lines.append(str(prediction.path))
        width = max(len(name) for _, name, _ in prediction.top)
        for rank, (_, name, probability) in enumerate(prediction.top, start=1):
            lines.append(f"  {rank}. {name:<{width}}  {probability:7.2%}")
        if prediction.cam is not None:
            lines.append(f"  Grad-CAM: {prediction.cam}")
    return "\n".join(lines)


def predictions_json(predictions: list[Prediction]) -> str:
    return json.dumps([p.to_json() for p in predictions], indent=1)


def _unique_name(folder: Path, stem: str, used: set[str]) -> Path:
    name, number = f"{stem}.png", 2
    while name in used:
        name, number = f"{stem}-{number}.png", number + 1
    used.add(name)
    return folder / name
