"""TrivialAugmentWide and RandAugment as batch ops that draw per sample: the device forms of
the `trivialaugment` and `randaugment` presets (augment.py), with gpu_augment.py's conventions
(float (B, 3, S, S) in 0..1; every draw from torch's default generator, on the host).

kornia.augmentation.auto's TrivialAugment and RandAugment pick the operation once per call,
i.e. per batch, from their own op list and ranges; torchvision's TrivialAugmentWide and
RandAugment(2, 9), the CPU presets, pick one (two) of 14 operations per image with
torchvision's magnitude tables. `_Policy` draws the operation, magnitude bin and sign per
sample from those tables and runs each operation once on the samples that drew it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from kornia import enhance
from kornia.geometry import transform as kgt
from torch.nn import functional as F

from carsweep.trainable.gpu_augment import BatchOp, stretch_channels


def rotate_batch(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate sample i by degrees[i] counter-clockwise about the centre (as torchvision does),
    nearest neighbour, black outside."""
    angle = degrees.to(x.device, x.dtype) * (math.pi / 180.0)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates (x right, y down): rotate those by -angle.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Warp by (b, 2, 3) pixel-coordinate matrices, nearest, black outside (torchvision's fill)."""
    return kgt.warp_affine(x, matrix.to(x.device, x.dtype), x.shape[-2:], mode="nearest",
                           padding_mode="zeros", align_corners=False)


def _shear(axis: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def shear(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        matrix = torch.eye(2, 3).repeat(len(x), 1, 1)
        matrix[:, axis, 1 - axis] = magnitude  # about the top-left corner, as torchvision
        return _affine(x, matrix)

    return shear


def _translate(axis: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def translate(x: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
        matrix = torch.eye(2, 3).repeat(len(x), 1, 1)
        matrix[:, axis, 2] = magnitude.trunc()  # whole pixels, as torchvision's int(magnitude)
        return _affine(x, matrix)

    return translate


def _on_device(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return values.to(x.device, x.dtype, non_blocking=True)


@dataclass(frozen=True)
class PolicyOp:
    """One operation of an auto-augment table: `apply(x, magnitudes)` on the samples that drew
    it; `magnitudes(bins, size)` its magnitude per bin (None: no magnitude); `signed`: a random
    sign per sample."""

    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    magnitudes: Callable[[int, int], torch.Tensor] | None = None
    signed: bool = False


def _linspace(high: float) -> Callable[[int, int], torch.Tensor]:
    return lambda bins, size: torch.linspace(0.0, high, bins)


def _posterize_bits(levels: int) -> Callable[[int, int], torch.Tensor]:
    return lambda bins, size: (8 - (torch.arange(bins) / ((bins - 1) / levels))).round()


def _policy_space(shear: float, translate: Callable[[int, int], torch.Tensor], rotate: float,
                  enhance_range: float, posterize_levels: int) -> dict[str, PolicyOp]:
    """torchvision's _AUGMENTATION_SPACE of TrivialAugmentWide / RandAugment, as batch ops."""
    return {
        "Identity": PolicyOp(lambda x, m: x),
        "ShearX": PolicyOp(_shear(0), _linspace(shear), True),
        "ShearY": PolicyOp(_shear(1), _linspace(shear), True),
        "TranslateX": PolicyOp(_translate(0), translate, True),
        "TranslateY": PolicyOp(_translate(1), translate, True),
        "Rotate": PolicyOp(lambda x, m: rotate_batch(x, m), _linspace(rotate), True),
        "Brightness": PolicyOp(
            lambda x, m: enhance.adjust_brightness_accumulative(x, _on_device(x, 1 + m)),
            _linspace(enhance_range), True),
        "Color": PolicyOp(
            lambda x, m: enhance.adjust_saturation_with_gray_subtraction(x, _on_device(x, 1 + m)),
            _linspace(enhance_range), True),
        "Contrast": PolicyOp(
            lambda x, m: enhance.adjust_contrast_with_mean_subtraction(x, _on_device(x, 1 + m)),
            _linspace(enhance_range), True),
        "Sharpness": PolicyOp(lambda x, m: enhance.sharpness(x, _on_device(x, 1 + m)),
                              _linspace(enhance_range), True),
        "Posterize": PolicyOp(
            lambda x, m: enhance.posterize(x, m.to(x.device, torch.int64, non_blocking=True)),
            _posterize_bits(posterize_levels)),
        "Solarize": PolicyOp(lambda x, m: enhance.solarize(x, _on_device(x, m)),
                             lambda bins, size: torch.linspace(1.0, 0.0, bins)),
        "AutoContrast": PolicyOp(lambda x, m: stretch_channels(x)),
        "Equalize": PolicyOp(lambda x, m: enhance.equalize(x)),
    }


TRIVIAL_AUGMENT_WIDE = _policy_space(shear=0.99, translate=_linspace(32.0), rotate=135.0,
                                     enhance_range=0.99, posterize_levels=6)
RAND_AUGMENT = _policy_space(shear=0.3, translate=lambda bins, size: torch.linspace(
    0.0, 150.0 / 331.0 * size, bins), rotate=30.0, enhance_range=0.9, posterize_levels=4)


class _Policy:
    """`rounds` times: each sample draws one operation of `space` (uniformly), a magnitude bin
    (uniformly, or the fixed `magnitude_bin`) and a sign; each drawn operation then runs once,
    on the samples that drew it."""

    def __init__(self, space: dict[str, PolicyOp], size: int, *, rounds: int,
                 bins: int = 31, magnitude_bin: int | None = None) -> None:
        self.ops = list(space.values())
        self.tables = [op.magnitudes(bins, size) if op.magnitudes else torch.zeros(bins)
                       for op in self.ops]
        self.rounds, self.bins, self.magnitude_bin = rounds, bins, magnitude_bin

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        for _ in range(self.rounds):
            chosen = torch.randint(len(self.ops), (b,))
            bins = (torch.randint(self.bins, (b,)) if self.magnitude_bin is None
                    else torch.full((b,), self.magnitude_bin))
            flip_sign = torch.rand(b) <= 0.5
            x = x.clone()
            for index in chosen.unique().tolist():  # on the host: no device sync
                op, samples = self.ops[index], torch.nonzero(chosen == index).view(-1)
                magnitude = self.tables[index][bins[samples]]
                if op.signed:
                    magnitude = torch.where(flip_sign[samples], -magnitude, magnitude)
                on_device = samples.to(x.device, non_blocking=True)
                x[on_device] = op.apply(x[on_device], magnitude)
        return x


def trivialaugment(size: int) -> BatchOp:
    """torchvision's TrivialAugmentWide per sample: one of 14 ops, magnitude bin of 31."""
    return _Policy(TRIVIAL_AUGMENT_WIDE, size, rounds=1)


def randaugment(size: int) -> BatchOp:
    """torchvision's RandAugment(num_ops=2, magnitude=9) per sample."""
    return _Policy(RAND_AUGMENT, size, rounds=2, magnitude_bin=9)
