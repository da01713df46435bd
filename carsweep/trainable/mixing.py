"""Mixing augmentations: MixUp, CutMix and SnapMix, once per training batch, with soft targets.

The presets `mixup`, `cutmix` and `snapmix` (augment.py marks them `mixing`) run here, in the
epoch loop, last: after the per-image and per-sample presets and the normalisation, and after
cam-occlusion (which occludes each image for its own, hard, class). `mix_prob` of the batches
are mixed, drawn per batch from torch's global generator (a checkpoint saves and restores it,
so a resumed run mixes as an uninterrupted one). Each returns (mixed input, targets (B, C)
float): a batch left unmixed gets its one-hot labels, so a trial trains on one kind of target.
nn.CrossEntropyLoss takes such probability targets and applies `label_smoothing` to them.

    mixup   torchvision.transforms.v2.MixUp (Zhang et al. 2018, https://arxiv.org/abs/1710.09412):
            x = lam x_i + (1 - lam) x_j, targets in the same proportion; lam ~ Beta(mixup_alpha).
    cutmix  torchvision.transforms.v2.CutMix (Yun et al. 2019, https://arxiv.org/abs/1905.04899):
            a box of x_j pasted into x_i, targets by the area kept; the box from Beta(cutmix_alpha).
            torchvision pairs each image with the one before it in the batch, so the batch is
            put in a random order first: a batch read from the decoded cache comes in the
            cache's order (sorted, for read speed), where on a class-ordered manifest an image's
            neighbour is often of its own class (about 8 % of pairs at Stanford Cars' size,
            against 0.5 % by chance).
    snapmix `SnapMix` below.

SnapMix (Huang, Wang and Tao, "SnapMix: Semantically Proportional Mixing for Augmenting
Fine-grained Data", AAAI 2021, https://arxiv.org/abs/2012.04846; official code
github.com/Shaoli-Huang/SnapMix, utils/mixmethod.py): a box A of image i is replaced by a box B
of another image j (a random permutation), B resized to A's size (bilinear), the two boxes of
independent areas, each from Beta(snapmix_alpha). Each label is weighed by its image's share of
class evidence in the mixed image: the semantic percent map (SPM) of an image is its class
activation map (CAM, Zhou et al. 2016) for its true class, upsampled bilinearly to the image,
minus its minimum, divided by its sum; then

    rho_i = 1 - SPM_i mass inside A        (what image i keeps)
    rho_j = SPM_j mass inside B            (what image j brings)
    target_i = rho_i onehot(y_i) + rho_j onehot(y_j)

rho_i + rho_j is NOT 1 in general, in the paper and here: a box can cut out most of i's
evidence and bring little of j's. So a SnapMix row of targets sums to rho_i + rho_j (0..2),
and the cross-entropy of those targets is exactly the paper's rho_i CE(y_i) + rho_j CE(y_j).
Normalising the row would be another method. (For a pair of the same class the official code
adds each weight to the other, which counts that class 2 (rho_i + rho_j) times; here a pair of
the same class gets (rho_i + rho_j) onehot(y), what the formula above gives.) An image whose
map is flat (no cell stands out) gets the area share, as the official code's NaN fallback does.

What the CAM is computed from, and its cost: the CAMs are those of the UN-MIXED images, which
the forward pass that trains (on the mixed images) cannot give. The official code runs one
extra forward of the un-mixed batch under no_grad per mixed step, and so does this: one extra
no-grad forward per mixed batch (about a third of a training step's arithmetic). A forward
hook on the model's last feature map (backbones.cam_head: `layer4`, `features`,
`trunk_output`, `permute`...) keeps that map, and the head's weight rows for each image's class
(`CamHead.class_weights`: fc / classifier[-1] / head, ConvNeXt's LayerNorm scale folded in)
weigh its channels: CAM_i = sum_k w[y_i, k] F_ik. The bias and any per-image constant cancel
in the SPM. The pass runs in eval mode (model.eval_mode, each module's mode restored), where
the official code stays in train mode: BatchNorm then uses its running statistics, and is not
updated a second time per step by the un-mixed batch; dropout is off. Models whose head is
not a linear read of that map (an MLP head: mobilenet_v3_*, vgg*, maxvit_t) are refused.

Train loss and accuracy under mixing (loop.py): the loss is the cross-entropy against the soft
targets, what is minimised; the accuracy counts a prediction right when it is the target's
largest class (the dominant label; for a tie the lower class index). Evaluation never mixes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import v2

from carsweep.config.trial import TrialConfig
from carsweep.trainable.augment import mixing_preset
from carsweep.trainable.backbones import CamHead, cam_head
from carsweep.trainable.loop import autocast
from carsweep.trainable.model import eval_mode

Box = tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels, ends exclusive


class BatchMix(Protocol):
    """What the epoch loop calls per batch: (model, model input, labels) -> (input, targets),
    targets (B, C) float on the labels' device."""

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]: ...


def batch_mix_for(config: TrialConfig, num_classes: int, precision: str = "auto"
                  ) -> BatchMix | None:
    """The mix of the config's augmentation, or None when it has no mixing preset."""
    name = mixing_preset(config.augmentation)
    return None if name is None else MIXES[name](config, num_classes, precision)


def mixes_this_batch(p: float) -> bool:
    """True with probability `p`, from torch's global generator."""
    return p >= 1 or bool(torch.rand(()) < p)


class TorchvisionMix:
    """torchvision's MixUp or CutMix on a fraction `p` of the batches, one-hot targets else."""

    def __init__(self, mix: v2.Transform, *, p: float, num_classes: int) -> None:
        self.mix, self.p, self.num_classes = mix, p, num_classes

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if not mixes_this_batch(self.p):
            return x, F.one_hot(labels, self.num_classes).float()
        order = torch.randperm(x.shape[0]).to(x.device, non_blocking=True)  # random partners
        return self.mix(x[order], labels[order])


@dataclass(frozen=True)
class SnapDraw:
    """The random part of one SnapMix step: image i takes box `source` of image `partner[i]`,
    resized into its own box `target`."""

    partner: torch.Tensor  # (B,) int64
    target: Box
    source: Box


class SnapMix:
    """SnapMix on a fraction `p` of the batches (see the module docstring)."""

    def __init__(self, *, num_classes: int, alpha: float, p: float, head: CamHead,
                 precision: str = "auto") -> None:
        self.num_classes, self.p, self.head, self.precision = num_classes, p, head, precision
        self.beta = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
        self.mixed = 0  # batches mixed so far (for tests and logs)

    def draw(self, batch: int, height: int, width: int) -> SnapDraw:
        return SnapDraw(partner=torch.randperm(batch),
                        target=random_box(height, width, float(self.beta.sample())),
                        source=random_box(height, width, float(self.beta.sample())))

    def __call__(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        hard = F.one_hot(labels, self.num_classes).float()
        if not mixes_this_batch(self.p):
            return x, hard
        draw = self.draw(x.shape[0], x.shape[-2], x.shape[-1])
        if _area(draw.target) == 0 or _area(draw.source) == 0:
            return x, hard  # nothing to paste: no extra forward either
        maps = semantic_percent_maps(model, x, labels, self.head, self.precision)  # (B, H, W)
        self.mixed += 1
        return paste_box(x, draw), snapmix_targets(maps, labels, draw, self.num_classes)


def random_box(height: int, width: int, lam: float) -> Box:
    """A box of about (1 - lam) of the image, centred uniformly, clipped to it (CutMix's)."""
    half = 0.5 * math.sqrt(1.0 - lam)
    cx, cy = int(torch.randint(width, ())), int(torch.randint(height, ()))
    half_w, half_h = int(half * width), int(half * height)
    return (max(cx - half_w, 0), max(cy - half_h, 0), min(cx + half_w, width),
            min(cy + half_h, height))


def semantic_percent_maps(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                          head: CamHead, precision: str = "auto") -> torch.Tensor:
    """(B, H, W) float: each image's CAM for its class from one no-grad eval-mode forward of
    `x` (the un-mixed batch), upsampled to the image, minus its minimum, summing to 1; a flat
    map is uniform (its mass in a box is then the box's area share)."""
    with torch.no_grad(), eval_mode(model), _output_of(model.get_submodule(head.layer)) as kept:
        with autocast(x.device, precision):
            model(x)
        features = kept[0].float()  # (B, K, h, w)
        weights = head.class_weights(model).to(features.device)[labels]  # (B, K)
    cams = torch.einsum("bk,bkhw->bhw", weights, features)
    up = F.interpolate(cams.unsqueeze(1), size=x.shape[-2:], mode="bilinear",
                       align_corners=False).squeeze(1)  # (B, H, W)
    shifted = up - up.amin(dim=(1, 2), keepdim=True)
    total = shifted.sum(dim=(1, 2), keepdim=True)
    flat = total <= 1e-6 * up.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    uniform = torch.full_like(shifted, 1.0 / shifted[0].numel())
    return torch.where(flat, uniform, shifted / total.clamp_min(1e-12))


def paste_box(x: torch.Tensor, draw: SnapDraw) -> torch.Tensor:
    """`x` (B, C, H, W) with each image's target box replaced by its partner's source box,
    resized bilinearly (corners aligned, as the official code)."""
    tx1, ty1, tx2, ty2 = draw.target
    sx1, sy1, sx2, sy2 = draw.source
    patch = x[draw.partner.to(x.device), :, sy1:sy2, sx1:sx2]
    patch = F.interpolate(patch, size=(ty2 - ty1, tx2 - tx1), mode="bilinear", align_corners=True)
    out = x.clone()
    out[:, :, ty1:ty2, tx1:tx2] = patch.to(out.dtype)
    return out


def snapmix_targets(maps: torch.Tensor, labels: torch.Tensor, draw: SnapDraw,
                    num_classes: int) -> torch.Tensor:
    """(B, C): rho_i onehot(y_i) + rho_j onehot(y_j) from the semantic percent maps (B, H, W)."""
    tx1, ty1, tx2, ty2 = draw.target
    sx1, sy1, sx2, sy2 = draw.source
    partner = draw.partner.to(labels.device)
    kept = 1.0 - maps[:, ty1:ty2, tx1:tx2].sum(dim=(1, 2))  # (B,)
    brought = maps[partner, sy1:sy2, sx1:sx2].sum(dim=(1, 2))  # (B,)
    return (kept.unsqueeze(1) * F.one_hot(labels, num_classes)
            + brought.unsqueeze(1) * F.one_hot(labels[partner], num_classes))


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


@contextmanager
def _output_of(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """A list that receives `module`'s output in the forward passes inside the block."""
    kept: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, output: kept.append(output))
    try:
        yield kept
    finally:
        handle.remove()


MIXES: dict[str, Callable[[TrialConfig, int, str], BatchMix]] = {
    "mixup": lambda config, classes, precision: TorchvisionMix(
        v2.MixUp(alpha=config.mixup_alpha, num_classes=classes), p=config.mix_prob,
        num_classes=classes),
    "cutmix": lambda config, classes, precision: TorchvisionMix(
        v2.CutMix(alpha=config.cutmix_alpha, num_classes=classes), p=config.mix_prob,
        num_classes=classes),
    "snapmix": lambda config, classes, precision: SnapMix(
        num_classes=classes, alpha=config.snapmix_alpha, p=config.mix_prob,
        head=cam_head(config.model, config.resize), precision=precision),
}
