"""Augmentation on a whole batch where the model runs, with per-sample randomness; and the one
input normaliser.

torchvision's v2 transforms applied to a batched tensor draw ONE set of random parameters for
the whole batch (pytorch/vision#2929): every image of the batch would be flipped, or none. The
batch ops here draw every random parameter per sample, with the distributions of the CPU
preset they stand for (augment.py's registry pairs each preset with its batch op;
tests/test_gpu_augment.py compares the statistics of the two forms). They take float
(B, 3, S, S) in 0..1 and return the same.

Where kornia.augmentation has the preset's meaning, the op is kornia's (per-sample draws
are its default). Where it does not, or was measurably slower, the op is written here:

- `trivialaugment` and `randaugment`: kornia's pick one operation per batch; gpu_autoaugment.py
  draws one per sample from torchvision's tables.
- `elastic`: kornia's RandomElasticTransform pads the random field with zeros where
  torchvision reflects it, so displacements fade within 20 px of every border (at 32 px it
  moved pixels half as far as the CPU form): written here on kornia's gaussian_blur2d.
- `color-jitter`, `sharpness`, `autocontrast`: hand-written, because they were measurably
  faster than kornia's ColorJitter, RandomSharpness and RandomAutoContrast in two runs of
  bench/augment_ops.py on the CPU device (1.9-2.4x, 1.2-1.5x, 2.0-2.4x images/s at 224 px,
  and a third to a half of kornia's host time per call; BENCHMARKS.md, "Batch ops: kornia vs
  hand-written"). flip, rotation, gaussian-blur and random-crop are kornia's: there the
  hand-written ops this module had were no faster in both runs (random-crop's was slower).
  The comparison on a GPU is not measured yet (`bench/augment_ops.py --device cuda`).

Randomness: every per-sample parameter comes from torch's default (CPU) generator, as kornia's
own do, drawn on the host and copied to the device with the batch's work (no host sync).
`elastic`'s noise field is the one draw the size of the batch: it is drawn on the batch's
device from that device's default generator, since on the host it would cost a (B, 2, S, S)
draw and a pageable copy every step (82 MB at 400 px x 64). One `torch.manual_seed` seeds
both generators, so a run is repeatable, and a checkpoint saves both states (the training
device's), so a resumed run draws what an uninterrupted one does.

ColorJitter's four operations run in an order drawn per batch (torchvision draws it per
image); the four commute except for clipping and hue, so an image's distribution is kept.

This module imports torch, torchvision and kornia only (bench/train_gpu.py loads it by path
on a bare GPU box).
"""

from __future__ import annotations

from collections.abc import Callable

import kornia.augmentation as K
import torch
from kornia.filters import gaussian_blur2d
from torch import nn
from torch.nn import functional as F

BatchOp = Callable[[torch.Tensor], torch.Tensor]  # float (B, 3, S, S) in 0..1 -> the same
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def _uniform(batch: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """(B,) uniform draws, one per sample, on the batch's device."""
    return (torch.rand(batch.shape[0]) * (high - low) + low).to(batch.device, non_blocking=True)


def _coin(batch: torch.Tensor, p: float) -> torch.Tensor:
    """(B, 1, 1, 1) bool: True for the samples that get the op (probability p each)."""
    return (torch.rand(batch.shape[0]) < p).view(-1, 1, 1, 1).to(batch.device, non_blocking=True)


# Presets ----------------------------------------------------------------------------------
# Each builder takes the square size and returns the batch op of one preset of augment.py.

def flip(size: int) -> BatchOp:
    """v2.RandomHorizontalFlip(0.5)."""
    return K.RandomHorizontalFlip(p=0.5)


def rotation(size: int) -> BatchOp:
    """v2.RandomRotation(15): angle U(-15, 15) degrees, nearest, corners filled black."""
    return K.RandomRotation(degrees=15.0, resample="nearest", align_corners=False, p=1.0)



def blur_kernel_size(size: int) -> int:
    """The Gaussian blur's kernel: odd, growing with the image so the blur is visible."""
    return max(3, (size // 32) | 1)


def gaussian_blur(size: int) -> BatchOp:
    """Gaussian blur, sigma U(0.1, 2), p 0.5; same kernel size and reflect padding as CPU."""
    kernel = blur_kernel_size(size)
    return K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), border_type="reflect",
                                p=0.5)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    ratio = ratio.view(-1, 1, 1, 1)
    return (x * ratio + other * (1.0 - ratio)).clamp_(0.0, 1.0)


def _shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """RGB -> HSV, hue += shift (per sample, in turns), -> RGB; torchvision's formulas."""
    maxc, minc = x.amax(1), x.amin(1)  # (B, H, W)
    chroma = maxc - minc
    flat = chroma == 0
    saturation = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    divisor = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = ((maxc.unsqueeze(1) - x) / divisor.unsqueeze(1)).unbind(1)
    r, g, _ = x.unbind(1)
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.remainder(hue / 6.0 + shift.view(-1, 1, 1), 1.0)
    # HSV -> RGB as f(n) = V - V*S*clamp(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6, n = 5, 3, 1
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * ramp)


def color_jitter(size: int) -> BatchOp:
    """ColorJitter(0.4, 0.4, 0.4, 0.1): factors per sample, the order of the four per batch."""
    def jitter(x: torch.Tensor) -> torch.Tensor:
        factors = [_uniform(x, 0.6, 1.4), _uniform(x, 0.6, 1.4),
                   _uniform(x, 0.6, 1.4), _uniform(x, -0.1, 0.1)]
        for op in torch.randperm(4).tolist():
            if op == 0:
                x = (x * factors[0].view(-1, 1, 1, 1)).clamp_(0.0, 1.0)
            elif op == 1:
                x = _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), factors[1])
            elif op == 2:
                x = _blend(x, _gray(x), factors[2])
            else:
                x = _shift_hue(x, factors[3])
        return x

    return jitter


def sharpness(size: int) -> BatchOp:
    """RandomAdjustSharpness(2, p=0.5): blend with a 3x3 smoothed copy, borders untouched."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0

    def sharpen(x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        weight = kernel.to(x.device, x.dtype).expand(c, 1, 3, 3)
        smooth = x.clone()
        smooth[..., 1:-1, 1:-1] = F.conv2d(x, weight, groups=c)
        factor = torch.where(_coin(x, 0.5).view(-1), 2.0, 1.0).to(x.dtype)
        return _blend(x, smooth, factor)

    return sharpen


def autocontrast(size: int) -> BatchOp:
    """RandomAutocontrast(p=0.5): stretch each channel of a chosen sample to 0..1."""
    return lambda x: torch.where(_coin(x, 0.5), stretch_channels(x), x)


def stretch_channels(x: torch.Tensor) -> torch.Tensor:
    """torchvision's autocontrast: each channel of each sample stretched to 0..1."""
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 1.0 / (high - low))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((x - low) * scale).clamp_(0.0, 1.0)


CROP_SCALE, CROP_RATIO = (0.35, 1.0), (3 / 4, 4 / 3)


def random_crop(size: int) -> BatchOp:
    """RandomResizedCrop(scale 0.35-1, ratio 3/4-4/3): one box per sample, bilinear resize."""
    return K.RandomResizedCrop((size, size), scale=CROP_SCALE, ratio=CROP_RATIO, p=1.0)


ELASTIC_ALPHA, ELASTIC_SIGMA = 30.0, 5.0
# Both forms smooth the field with a Gaussian of 8 sigma + 1 px, reflected at the borders:
# reflecting needs an image wider than the kernel's half.
ELASTIC_MIN_SIZE = int(4 * ELASTIC_SIGMA) + 1


def elastic(size: int) -> BatchOp:
    """v2.ElasticTransform(alpha 30, sigma 5) with p 0.5, per sample: a U(-1, 1) field per
    axis, smoothed by a Gaussian of kernel 8*sigma+1 with reflected borders and scaled by
    alpha / size in grid units, added to the identity grid, bilinear, black outside.

    Not kornia's RandomElasticTransform: it pads the field with zeros where torchvision
    reflects it, so displacements fade within 4 sigma (20 px) of every border, which at small
    sizes is most of the image (at 32 px it moved pixels half as far as the CPU form)."""
    kernel = int(8 * ELASTIC_SIGMA + 1) | 1

    def warp(x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        noise = torch.rand(b, 2, h, w, device=x.device, dtype=x.dtype) * 2 - 1  # on the device
        field = gaussian_blur2d(noise, (kernel, kernel), (ELASTIC_SIGMA, ELASTIC_SIGMA),
                                border_type="reflect")
        field = field * torch.tensor([ELASTIC_ALPHA / w, ELASTIC_ALPHA / h], device=x.device,
                                     dtype=x.dtype).view(1, 2, 1, 1)
        identity = torch.eye(2, 3, device=x.device, dtype=x.dtype).expand(b, 2, 3)
        grid = F.affine_grid(identity, [b, 1, h, w], align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)  # (B, H, W, 2): x then y, as grid_sample reads
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)
        return torch.where(_coin(x, 0.5), warped, x)

    return warp


# Running them -------------------------------------------------------------------------------

class DeviceAugment:
    """uint8 (B, 3, S, S) -> augmented float (B, 3, S, S) in 0..1: `ops` in order, each
    drawing per sample from torch's default generator."""

    def __init__(self, ops: list[BatchOp]) -> None:
        self.ops = list(ops)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0) if not images.is_floating_point() else images
        for op in self.ops:
            x = op(x)
        return x


class Normalize(nn.Module):
    """The model's input: (x - mean) / std per channel, from uint8 0..255 or float 0..1 RGB.

    The one normaliser of carsweep: the loaders' `to_model_input`, Grad-CAM, `predict`, the
    exported TorchScript module and the ONNX and .pt2 graphs (`bytes_in_graph`) all use it,
    with the mean and std of the weights' metadata (augment.normalization, or an export's
    own). Its constants are buffers, so `.to(device)` moves them and a traced module keeps
    them.

    On the CPU a uint8 batch is converted in chunks of `CPU_CHUNK` images into memory that
    numpy allocates (huge pages where the kernel offers them): converting a 400 px batch of
    32 at once writes a 61 MB float tensor into freshly mapped pages, and the page faults,
    not the arithmetic, decide the speed (BENCHMARKS.md, "normalising on the CPU").
    """

    CPU_CHUNK = 2

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / std_t)
        self.register_buffer("byte_scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", -mean_t / std_t)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():
            return images * self.scale + self.shift
        if images.device.type == "cpu":
            return self._bytes_on_cpu(images)
        # x*scale + shift with one new tensor (no write into the caller's tensor)
        return images.float().mul_(self.byte_scale).add_(self.shift)

    def bytes_in_graph(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 in, the model's input out, in ops every exporter captures (no numpy,
        no writes in place): the form inside the exported ONNX and .pt2 graphs. The same
        x * byte_scale + shift as `forward`, so the graph and the model agree to float
        rounding."""
        return images.to(torch.float32) * self.byte_scale + self.shift

    def _bytes_on_cpu(self, images: torch.Tensor) -> torch.Tensor:
        import numpy as np  # numpy ships with torch; only the CPU path needs it

        out = torch.from_numpy(np.empty(tuple(images.shape), dtype=np.float32))
        for start in range(0, images.shape[0], self.CPU_CHUNK):
            chunk = out[start:start + self.CPU_CHUNK]
            torch.mul(images[start:start + self.CPU_CHUNK], self.byte_scale, out=chunk)
            chunk.add_(self.shift)
        return out
