"""Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391) through torchcam.

`class_maps` runs the trainable's torchcam Grad-CAM (`trainable.cam_occlusion.grad_cam`: hooks
removed and modes restored even when a batch fails, no parameter gradient touched) on a stage
of the model for a given class of each image, and returns maps at the input's resolution.
`cam_layer` picks the stage per model from the feature maps the model makes at the input size
(trainable/backbones.py `feature_stages`).
`pointing_game` checks where a map's peak falls (Zhang et al. 2016,
https://arxiv.org/abs/1608.00507): on the synthetic data, inside the box of the part that
decides the class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchcam.utils import overlay_mask
from torchvision.transforms.functional import to_pil_image

from carsweep.data.manifest import BOX_COLUMNS
from carsweep.trainable.backbones import feature_stages
from carsweep.trainable.cam_occlusion import TARGET_LAYER, grad_cam
from carsweep.trainable.gpu_augment import Normalize

CAM_BATCH = 16
# A map of ResNet's layer4 at 64 px input is 2 x 2, too coarse to point at a headlight.
# MIN_CAM_SIDE picks the deepest stage still this many cells across.
MIN_CAM_SIDE = 7


def cam_layer(model: str, resize: int) -> str:
    """The deepest stage of `model` whose map is at least MIN_CAM_SIDE cells wide at `resize` px
    input (the widest one where none is): for ResNets layer4 at 224 px (7 x 7, the usual
    Grad-CAM), layer3 at 128, layer2 at 64, layer1 at 32."""
    stages = feature_stages(model, resize)
    wide = [stage for stage in stages if stage.side >= MIN_CAM_SIDE]
    return wide[-1].name if wide else max(stages, key=lambda stage: stage.side).name


def class_maps(model: nn.Module, images: torch.Tensor, classes: list[int],
               layer: str = TARGET_LAYER, *, normalize: Normalize) -> torch.Tensor:
    """(B, S, S) Grad-CAM of class `classes[i]` for image i, in [0, 1], bilinear to S x S;
    `normalize` makes the model's input (the normaliser the model was trained with)."""
    device = next(model.parameters()).device
    normalize = normalize.to(device)
    maps = []
    for start in range(0, len(images), CAM_BATCH):
        chunk = normalize(images[start:start + CAM_BATCH].to(device))
        targets = [int(c) for c in classes[start:start + CAM_BATCH]]
        cams = grad_cam(model, chunk, targets, layer, normalized=True)  # (b, h, w)
        maps.append(F.interpolate(cams[:, None], size=images.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, 0].cpu())
    return torch.cat(maps) if maps else torch.empty(0, *images.shape[-2:])


def overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The uint8 (3, S, S) image with its (S, S) map drawn over it in the jet colours."""
    return overlay_mask(to_pil_image(image), to_pil_image(cam.clamp(0, 1), mode="F"),
                        alpha=alpha)


def peak_in_original(cam: torch.Tensor, width: int, height: int) -> tuple[float, float]:
    """Where a map's maximum lies, in pixels of the original image (undoing the square resize)."""
    size_y, size_x = cam.shape
    index = int(torch.argmax(cam))
    y, x = divmod(index, size_x)
    return (x + 0.5) * width / size_x, (y + 0.5) * height / size_y


def pointing_game(cams: torch.Tensor, rows: pd.DataFrame, parts: pd.DataFrame,
                  tolerance: float = 0.0) -> pd.DataFrame:
    """Per image: the map's peak and whether it hits a box of a class-deciding part.

    `rows` are manifest rows (path, width, height) in the order of `cams`; `parts` is the
    dataset's parts.csv. `tolerance` widens each box by that many original pixels on each
    side (the original pointing game uses 15 px at ImageNet scale).
    """
    by_path = {path: group[BOX_COLUMNS].to_numpy(float)
               for path, group in parts.groupby("path")}
    out = []
    for cam, row in zip(cams, rows.itertuples(index=False), strict=True):
        x, y = peak_in_original(cam, int(row.width), int(row.height))
        boxes = by_path.get(row.path, np.empty((0, 4)))
        hit = bool(((boxes[:, 0] - tolerance <= x) & (x <= boxes[:, 2] + tolerance)
                    & (boxes[:, 1] - tolerance <= y) & (y <= boxes[:, 3] + tolerance)).any())
        out.append({"path": row.path, "peak_x": x, "peak_y": y, "parts": len(boxes), "hit": hit})
    return pd.DataFrame(out, columns=["path", "peak_x", "peak_y", "parts", "hit"])
