"""Augmentation presets on a whole batch on the device, with per-sample randomness.

torchvision's v2 transforms applied to a batched tensor draw ONE set of random parameters for
the whole batch (pytorch/vision#2929): every image of the batch would be flipped, or none. So
the presets that are cheap on a GPU (flip, crops, colour, blur, sharpness, autocontrast,
rotation) have a batched twin here that draws every random parameter per sample, with the same
distributions as the CPU preset in `augment.py` (tests/test_gpu_augment.py compares their
statistics). Written with plain torch ops (no kornia): nothing beyond torch and torchvision, so
the GPU benchmark runs on a bare box, and no extra dependency for the workers.

The one difference: ColorJitter's four operations run in a random order; here the order is
drawn once per batch (the factors are per sample). The four commute except for clipping and
hue, so an image's distribution is the same; only images of one batch share the order.

`plan_augmentation` makes the choice per preset: on a CUDA device, the longest tail of the
'+'-combined preset that has device twins runs here; the rest (elastic, trivialaugment,
randaugment, or anything before them, so the order of operations is kept) stays in the CPU
workers. This module imports torch and torchvision only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from torchvision.ops import roi_align


@dataclass(frozen=True)
class Generators:
    """The random sources of a batch op: per-sample draws on the device (no host sync), and
    the few per-batch choices (an order of operations) on the host."""

    on_device: torch.Generator
    on_host: torch.Generator


BatchOp = Callable[[torch.Tensor, Generators], torch.Tensor]  # float (B,3,H,W) in 0..1
DEVICE_PRESETS: dict[str, Callable[[int], BatchOp]] = {}
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def register_device(name: str) -> Callable:
    """Register the batched twin of the preset `name` of augment.AUGMENTATIONS."""
    def add(build: Callable[[int], BatchOp]) -> Callable[[int], BatchOp]:
        DEVICE_PRESETS[name] = build
        return build

    return add


def _uniform(batch: torch.Tensor, low: float, high: float, g: Generators) -> torch.Tensor:
    """(B,) uniform draws on the batch's device, one per sample."""
    draws = torch.rand(batch.shape[0], device=batch.device, generator=g.on_device)
    return draws * (high - low) + low


def _coin(batch: torch.Tensor, p: float, g: Generators) -> torch.Tensor:
    """(B, 1, 1, 1) bool: True for the samples that get the op (probability p each)."""
    draws = torch.rand(batch.shape[0], device=batch.device, generator=g.on_device)
    return (draws < p).view(-1, 1, 1, 1)


@register_device("none")
def _none(size: int) -> BatchOp:
    return lambda x, g: x


@register_device("flip")
def _flip(size: int) -> BatchOp:
    return lambda x, g: torch.where(_coin(x, 0.5, g), x.flip(-1), x)


@register_device("rotation")
def _rotation(size: int) -> BatchOp:
    """v2.RandomRotation(15): angle U(-15, 15) degrees, nearest, corners filled black."""
    return lambda x, g: rotate_batch(x, _uniform(x, -15.0, 15.0, g))


def rotate_batch(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate sample i by degrees[i] counter-clockwise about the centre (as torchvision does),
    nearest neighbour, black outside."""
    angle = degrees * (math.pi / 180.0)
    cos, sin = angle.cos(), angle.sin()
    zero = torch.zeros_like(cos)
    # affine_grid maps output to input coordinates (x right, y down): rotate those by -angle.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1),
                         torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


@register_device("gaussian-blur")
def _gaussian_blur(size: int) -> BatchOp:
    """Gaussian blur, sigma U(0.1, 2), p 0.5; same kernel size and reflect padding as CPU."""
    kernel = max(3, (size // 32) | 1)

    def blur(x: torch.Tensor, g: Generators) -> torch.Tensor:
        b, c, h, w = x.shape
        sigma = _uniform(x, 0.1, 2.0, g)
        offsets = torch.arange(kernel, device=x.device, dtype=x.dtype) - (kernel - 1) / 2
        weights = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)  # (B, K)
        weights = weights / weights.sum(1, keepdim=True)
        # Samples that lose the coin toss get a delta kernel: exactly the identity, no branch.
        delta = (offsets == 0).to(x.dtype).expand_as(weights)
        weights = torch.where(_coin(x, 0.5, g).view(-1, 1), weights, delta)
        weights = weights.repeat_interleave(c, 0)  # (B*C, K): one kernel per channel of a sample
        pad = kernel // 2
        planes = F.pad(x.reshape(1, b * c, h, w), (pad, pad, pad, pad), mode="reflect")
        planes = F.conv2d(planes, weights.view(b * c, 1, 1, kernel), groups=b * c)
        planes = F.conv2d(planes, weights.view(b * c, 1, kernel, 1), groups=b * c)
        return planes.view(b, c, h, w)

    return blur


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


@register_device("color-jitter")
def _color_jitter(size: int) -> BatchOp:
    """ColorJitter(0.4, 0.4, 0.4, 0.1): factors per sample, order of the four per batch."""
    def jitter(x: torch.Tensor, g: Generators) -> torch.Tensor:
        factors = [_uniform(x, 0.6, 1.4, g), _uniform(x, 0.6, 1.4, g),
                   _uniform(x, 0.6, 1.4, g), _uniform(x, -0.1, 0.1, g)]
        for op in torch.randperm(4, generator=g.on_host).tolist():
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


@register_device("sharpness")
def _sharpness(size: int) -> BatchOp:
    """RandomAdjustSharpness(2, p=0.5): blend with a 3x3 smoothed copy, borders untouched."""
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0

    def sharpen(x: torch.Tensor, g: Generators) -> torch.Tensor:
        c = x.shape[1]
        weight = kernel.to(x.device, x.dtype).expand(c, 1, 3, 3)
        smooth = x.clone()
        smooth[..., 1:-1, 1:-1] = F.conv2d(x, weight, groups=c)
        factor = torch.where(_coin(x, 0.5, g).view(-1), 2.0, 1.0).to(x.dtype)
        return _blend(x, smooth, factor)

    return sharpen


@register_device("autocontrast")
def _autocontrast(size: int) -> BatchOp:
    """RandomAutocontrast(p=0.5): stretch each channel of a chosen sample to 0..1."""
    def stretch(x: torch.Tensor, g: Generators) -> torch.Tensor:
        low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
        flat = high <= low
        scale = torch.where(flat, torch.ones_like(high), 1.0 / (high - low))
        low = torch.where(flat, torch.zeros_like(low), low)
        return torch.where(_coin(x, 0.5, g), ((x - low) * scale).clamp_(0.0, 1.0), x)

    return stretch


@register_device("random-crop")
def _random_crop(size: int) -> BatchOp:
    """RandomResizedCrop(scale 0.35-1, ratio 3/4-4/3): one box per sample, bilinear resize."""
    def crop(x: torch.Tensor, g: Generators) -> torch.Tensor:
        boxes = _crop_boxes(x, (0.35, 1.0), (3 / 4, 4 / 3), g)
        return roi_align(x, boxes, output_size=x.shape[-2:], spatial_scale=1.0,
                         sampling_ratio=1, aligned=True)

    return crop


def _crop_boxes(x: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                g: Generators, attempts: int = 10) -> torch.Tensor:
    """(B, 5) boxes [index, x1, y1, x2, y2] drawn as RandomResizedCrop.get_params does: up to
    `attempts` tries of area and aspect per sample, else the whole (square) image."""
    b, _, h, w = x.shape
    dev = x.device
    area = h * w * (torch.rand(b, attempts, device=dev, generator=g.on_device)
                    * (scale[1] - scale[0]) + scale[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.rand(b, attempts, device=dev, generator=g.on_device)
                       * (log_hi - log_lo) + log_lo)
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = torch.where(fits.any(1), fits.int().argmax(1), 0)  # index of the first try that fits
    pick = first.view(-1, 1)
    any_fit = fits.any(1)
    cw = torch.where(any_fit, cw.gather(1, pick).view(-1), torch.full_like(cw[:, 0], w))
    ch = torch.where(any_fit, ch.gather(1, pick).view(-1), torch.full_like(ch[:, 0], h))
    top = torch.floor(torch.rand(b, device=dev, generator=g.on_device) * (h - ch + 1))
    left = torch.floor(torch.rand(b, device=dev, generator=g.on_device) * (w - cw + 1))
    index = torch.arange(b, device=dev, dtype=x.dtype)
    return torch.stack([index, left, top, left + cw, top + ch], 1).to(x.dtype)


@dataclass(frozen=True)
class AugmentPlan:
    """Where each part of a preset runs: `cpu` (a '+'-joined name, or None) in the workers on
    single images, then `device` (names) on the batch after it reached the device."""

    cpu: str | None
    device: tuple[str, ...]


def plan_augmentation(augmentation: str, device: torch.device | str, *,
                      where: str = "auto") -> AugmentPlan:
    """Split `augmentation` ('+'-joined preset names) between CPU workers and the device.

    `where`: "auto" (the device tail on CUDA, all on CPU otherwise), "cpu", or "device" (the
    device tail on any device, e.g. to test it on the CPU).
    """
    if where not in ("auto", "cpu", "device"):
        raise ValueError(f"augment placement is {where!r}; valid: auto, cpu, device")
    parts = [part.strip() for part in augmentation.split("+")]
    use_device = where == "device" or (where == "auto" and torch.device(device).type == "cuda")
    split = len(parts)
    if use_device:
        while split > 0 and parts[split - 1] in DEVICE_PRESETS:
            split -= 1
    cpu_parts = [p for p in parts[:split] if p != "none"]
    device_parts = tuple(p for p in parts[split:] if p != "none")
    return AugmentPlan(cpu="+".join(cpu_parts) or None, device=device_parts)


class DeviceAugment:
    """uint8 (B, 3, S, S) on the device -> augmented float (B, 3, S, S) in 0..1, per sample.

    Random draws come from a generator on the batch's device, seeded once: no host syncs.
    """

    def __init__(self, names: tuple[str, ...] | list[str], size: int, *, seed: int = 0) -> None:
        unknown = [name for name in names if name not in DEVICE_PRESETS]
        if unknown:
            raise ValueError(f"no device version of {unknown}; valid: {', '.join(DEVICE_PRESETS)}")
        self.names = tuple(names)
        self.ops = [DEVICE_PRESETS[name](size) for name in self.names]
        self.seed = seed
        self._generators: dict[torch.device, Generators] = {}

    def generators(self, device: torch.device) -> Generators:
        if device not in self._generators:
            self._generators[device] = Generators(
                on_device=torch.Generator(device=device).manual_seed(self.seed),
                on_host=torch.Generator().manual_seed(self.seed))
        return self._generators[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0) if not images.is_floating_point() else images
        g = self.generators(images.device)
        for op in self.ops:
            x = op(x, g)
        return x


class Normalize:
    """(x - mean) / std per channel with the constants kept on the device (no copy per batch).

    Takes uint8 0..255 (scaled on the fly) or float 0..1.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean, self.std = mean, std
        self._constants: dict[tuple[torch.device, bool], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from_bytes = not images.is_floating_point()
        key = (images.device, from_bytes)
        if key not in self._constants:
            unit = 255.0 if from_bytes else 1.0
            std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
            self._constants[key] = (1.0 / (unit * std), -mean / std)
        scale, shift = self._constants[key]
        # x*scale + shift with one new tensor (mixed-dtype addcmul is slow on the CPU), never
        # writing into the caller's tensor.
        if from_bytes:
            return images.float().mul_(scale).add_(shift)
        return images.mul(scale).add_(shift)
