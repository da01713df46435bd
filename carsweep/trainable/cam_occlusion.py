"""CAM-guided occlusion: hide what the model looks at most, so it must learn the other cues.

The augmentation set `cam-occlusion` (augment.py marks it model-dependent) runs here, once per
training batch, inside the epoch loop: for a random fraction `cam_occlusion_p` of the batch it
computes the CURRENT model's Grad-CAM (Selvaraju et al. 2017, https://arxiv.org/abs/1610.02391)
for each image's TRUE class at the model's last feature map (`layer4` of a ResNet; per model,
trainable/backbones.py `deepest_stage`), upsamples it to the image, and blurs or erases the
`cam_occlusion_q` of the image area where the map is highest, before the forward pass that
trains. From epoch `cam_occlusion_start_epoch` on; before that the map of a barely trained
model points anywhere.

The Grad-CAM is torchcam's `GradCAM` (per-sample class indices, batched): one extra forward
and one `torch.autograd.grad` to that layer's activations only, so no parameter gradient is
created or accumulated into the training step, and there is no extra optimizer step. Its hooks
live in a `with` block (torchcam removes them in `finally`).

The extra pass runs with the model in EVAL mode, restored afterwards module by module (a frozen
backbone stays in eval): BatchNorm then uses its running statistics and does not update them,
so the training statistics stay those of the batches that train; the map is the one the model
would use to predict; and a chosen subset of one image would break BatchNorm in train mode.

`part_occluded_accuracy` is the matching test-time evaluation: top-1 accuracy when a known part
(its box per image, e.g. the synthetic dataset's parts.csv) is erased or blurred.
"""

from __future__ import annotations

from typing import Protocol

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F
from torchcam.methods import GradCAM
from torchvision.transforms.v2 import functional as TF

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import BOX_COLUMNS, PreparedDataset
from carsweep.errors import UserError
from carsweep.trainable.augment import preset_names
from carsweep.trainable.backbones import deepest_stage
from carsweep.trainable.data import build_loader
from carsweep.trainable.loop import autocast
from carsweep.trainable.model import eval_mode

NAME = "cam-occlusion"
TARGET_LAYER = "layer4"  # ResNet's last feature map; other models name theirs (deepest_stage)
KINDS = ("blur", "erase")


class BatchHook(Protocol):
    """What the epoch loop calls per batch: (model, model input, labels on the CPU) -> input."""

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...


def uses_cam_occlusion(augmentation: str) -> bool:
    """Whether the '+'-joined augmentation name includes `cam-occlusion`."""
    return NAME in preset_names(augmentation)


def describe(config: TrialConfig) -> str:
    """One line for reports: whether a trial used cam-occlusion, and how."""
    if not uses_cam_occlusion(config.augmentation):
        return "no"
    if config.cam_occlusion_start_epoch > config.epochs:
        return f"no (asked for, but start epoch {config.cam_occlusion_start_epoch} > epochs)"
    return (f"yes: {config.cam_occlusion_kind} the top {config.cam_occlusion_q:.0%} of the "
            f"Grad-CAM area of {config.cam_occlusion_p:.0%} of each batch, from epoch "
            f"{config.cam_occlusion_start_epoch}")


def batch_hook_for(config: TrialConfig, epoch: int) -> BatchHook | None:
    """The batch hook of `epoch`, or None when the config's augmentation needs none then.

    Seeded by (seed, epoch), so a run resumed at an epoch boundary occludes the same images."""
    if not uses_cam_occlusion(config.augmentation) or epoch < config.cam_occlusion_start_epoch:
        return None
    return CamOcclusion(p=config.cam_occlusion_p, q=config.cam_occlusion_q,
                        kind=config.cam_occlusion_kind, seed=config.seed * 100_003 + epoch,
                        layer=deepest_stage(config.model, config.resize))


class CamOcclusion:
    """Occlude the top-`q` Grad-CAM area of a random fraction `p` of each batch."""

    def __init__(self, *, p: float, q: float, kind: str, seed: int = 0,
                 layer: str = TARGET_LAYER) -> None:
        if not 0 < p <= 1:
            raise ValueError(f"The value of `p` is {p}, but must be 0 < p <= 1")
        if not 0 < q < 1:
            raise ValueError(f"The value of `q` is {q}, but must be 0 < q < 1")
        if kind not in KINDS:
            raise ValueError(f"The value of `kind` is {kind!r}, but must be one of {KINDS}")
        self.p, self.q, self.kind, self.layer = p, q, kind, layer
        self.generator = torch.Generator().manual_seed(seed)
        self.occluded = 0  # images occluded so far (for tests and logs)

    def choose(self, batch_size: int) -> torch.Tensor:
        """Indices (CPU) of the images to occlude: p * B of them, rounded at random so the
        expected fraction is exactly p for any batch size."""
        count = int(self.p * batch_size + torch.rand((), generator=self.generator).item())
        return torch.randperm(batch_size, generator=self.generator)[:min(count, batch_size)]

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        chosen = self.choose(x.shape[0])
        if chosen.numel() == 0:
            return x
        on_device = chosen.to(x.device)
        subset = x.index_select(0, on_device)  # (k, 3, S, S)
        cams = grad_cam(model, subset, labels[chosen].tolist(), self.layer)  # (k, h, w)
        mask = top_area_mask(cams, subset.shape[-2:], self.q)  # (k, 1, S, S)
        self.occluded += chosen.numel()
        return x.index_copy(0, on_device, occlude(subset, mask, self.kind))


def grad_cam(model: nn.Module, x: torch.Tensor, classes: list[int], layer: str = TARGET_LAYER,
             *, normalized: bool = False) -> torch.Tensor:
    """Grad-CAM at `layer` for class `classes[i]` of image i: (B, h, w) float, ReLU'd, scaled
    to [0, 1] per map only if `normalized`. Parameter gradients are neither created nor
    touched; the model's modes and BatchNorm statistics are as they were."""
    with eval_mode(model), torch.enable_grad(), GradCAM(model, layer) as extractor:
        # The input asks for a gradient so the layer's output has a graph even when the
        # backbone is frozen; autograd.grad stops at that layer and never reaches the input.
        inputs = x.detach().requires_grad_(True)
        with autocast(x.device):
            scores = model(inputs)  # (B, C)
        cams = extractor(class_idx=classes, scores=scores, normalized=normalized)[0]
    return cams.detach().float()


def top_area_mask(cams: torch.Tensor, size: tuple[int, int] | torch.Size, q: float
                  ) -> torch.Tensor:
    """(B, h, w) maps -> (B, 1, H, W) bool marking, per image, the `q` of the area where the
    map upsampled bilinearly to `size` is highest: exactly round(q * H * W) pixels (ties go by
    position). A flat map (no region stands out, e.g. all zero after ReLU) marks nothing."""
    height, width = size
    up = F.interpolate(cams.unsqueeze(1).float(), size=(height, width), mode="bilinear",
                       align_corners=False).flatten(1)  # (B, H*W)
    count = max(1, round(q * height * width))
    top = up.topk(count, dim=1).indices  # (B, count)
    mask = torch.zeros_like(up, dtype=torch.bool).scatter_(1, top, True)
    mask[flat_maps(up)] = False
    return mask.view(-1, 1, height, width)


def flat_maps(maps: torch.Tensor) -> torch.Tensor:
    """(B, ...) maps -> (B,) bool: True where no cell stands out (the spread is within 1e-6 of
    the largest magnitude), e.g. a Grad-CAM that is all zero after its ReLU because nothing in
    the image raised the class's score."""
    values = maps.flatten(1).float()
    spread = values.amax(dim=1) - values.amin(dim=1)
    return spread <= 1e-6 * values.abs().amax(dim=1).clamp_min(1e-12)


def occlude(x: torch.Tensor, mask: torch.Tensor, kind: str) -> torch.Tensor:
    """Normalised images (B, 3, H, W) with the `mask` (B, 1, H, W) area erased or blurred.

    erase: 0, which after normalisation is the dataset mean colour (no new edge colour).
    blur: a Gaussian of sigma H/16 (kernel about H/4), strong enough to smear a part that
    covers a tenth of the image into its surroundings. Pixels outside the mask are untouched.
    """
    if kind == "erase":
        return x.masked_fill(mask, 0.0)
    if kind == "blur":
        kernel = max(3, (x.shape[-1] // 4) | 1)  # odd
        blurred = TF.gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[x.shape[-1] / 16] * 2)
        return torch.where(mask, blurred, x)
    raise ValueError(f"The value of `kind` is {kind!r}, but must be one of {KINDS}")


# --- test time: accuracy with a known part hidden ------------------------------------------

def box_mask(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel boxes (B, 4) x1, y1, x2, y2 (inclusive, NaN = none) in an image of `size` px ->
    (B, 1, size, size) bool covering them."""
    grid = torch.arange(size, dtype=torch.float32)
    x1, y1, x2, y2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    inside_x = (grid.view(1, 1, -1) >= x1) & (grid.view(1, 1, -1) <= x2)
    inside_y = (grid.view(1, -1, 1) >= y1) & (grid.view(1, -1, 1) <= y2)
    return (inside_x & inside_y).unsqueeze(1)


def part_boxes(rows: pd.DataFrame, parts: pd.DataFrame, part: str) -> torch.Tensor:
    """For each manifest row, the box of `part` (path,part,x1,y1,x2,y2 as in the synthetic
    dataset's parts.csv, same path as the manifest), scaled from the image's pixels to 0..1 of
    its width and height: (N, K, 4) with K the most instances of the part in one image (two
    wheels), NaN where an image has fewer."""
    chosen = parts[parts["part"] == part]
    grouped = {path: group[BOX_COLUMNS].to_numpy(float)
               for path, group in chosen.groupby("path")}
    most = max((len(v) for v in grouped.values()), default=1)
    out = torch.full((len(rows), most, 4), float("nan"))
    for i, (path, width, height) in enumerate(rows[["path", "width", "height"]].itertuples(
            index=False)):
        for k, box in enumerate(grouped.get(path, [])):
            out[i, k] = torch.tensor([box[0] / width, box[1] / height,
                                      (box[2] + 1) / width, (box[3] + 1) / height])
    return out


def occluded_accuracies(model: nn.Module, dataset: PreparedDataset, config: TrialConfig, *,
                        split: str = "test", kind: str = "erase") -> dict[str, float]:
    """{"clean": top-1, "<part> hidden": top-1 with that part erased/blurred, ...} on `split`
    for every part in the dataset's part boxes (the synthetic dataset's parts.csv)."""
    parts = dataset.parts()
    if parts is None:
        raise UserError(f"{dataset.folder}: no part boxes (parts.csv); part occlusion needs a "
                        "dataset made by `carsweep synth`")
    if config.bbox_crop:
        raise UserError("part occlusion needs whole images: set bbox_crop to false")
    loader = build_loader(dataset, split, config, train=False,
                          device=next(model.parameters()).device)
    rows = dataset.rows(split)
    result = {"clean": part_occluded_accuracy(model, loader, None)}
    for part in sorted(parts["part"].unique()):
        boxes = part_boxes(rows, parts, part)
        result[f"{part} hidden"] = part_occluded_accuracy(model, loader, boxes, kind=kind)
    return result


@torch.no_grad()
def part_occluded_accuracy(model: nn.Module, loader, boxes: torch.Tensor | None, *,
                           kind: str = "erase") -> float:
    """Top-1 accuracy over `loader` (evaluation loader, manifest order) with every box of
    `boxes` (N, K, 4, from `part_boxes`; None = clean images) hidden by `occlude`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    correct = seen = 0
    try:
        for images, labels in loader:
            x = loader.to_model_input(images.to(device))
            if boxes is not None:
                size = x.shape[-1]
                batch = boxes[seen:seen + len(labels)] * size  # (B, K, 4) in pixels
                batch[..., 2:] -= 1  # back to inclusive ends
                mask = torch.zeros(len(labels), 1, size, size, dtype=torch.bool)
                for k in range(batch.shape[1]):
                    mask |= box_mask(batch[:, k], size)
                x = occlude(x, mask.to(device), kind)
            with autocast(device):
                predicted = model(x).argmax(dim=1).cpu()
            correct += int((predicted == labels).sum())
            seen += len(labels)
    finally:
        model.train(was_training)
    return correct / max(seen, 1)
