"""Augmentation presets: named, documented sets of random transforms, one registry.

A preset acts on a uint8 image tensor (C, H, W) or a batch (B, C, H, W) that was already
resized to the trial's square input size, and returns the same shape, dtype and 0..255 range;
conversion to float and normalisation happen afterwards (`normalize_batch`, on the device).
Keeping presets on uint8 images lets a decoded cache and GPU-side augmentation reuse them.

Names join with '+' to combine presets in order: `flip+color-jitter`. Adding a preset is one
`@register` entry below (the test that runs every entry on a batch picks it up, and
`carsweep settings` lists it with its doc).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torchvision.models import ResNet18_Weights
from torchvision.transforms import v2

from carsweep.errors import UserError

COMBINE = "+"


@dataclass(frozen=True)
class Preset:
    """One augmentation preset: `build(size)` makes the transform for square images of `size`."""

    name: str
    doc: str
    build: Callable[[int], v2.Transform]
    # A model-dependent preset needs the current model, so it cannot run per image in a data
    # worker: its `build` is the identity and the epoch loop applies it per batch (a batch hook).
    model_dependent: bool = False


AUGMENTATIONS: dict[str, Preset] = {}


def register(name: str, doc: str, *, model_dependent: bool = False
             ) -> Callable[[Callable[[int], v2.Transform]], Callable]:
    def add(build: Callable[[int], v2.Transform]) -> Callable[[int], v2.Transform]:
        AUGMENTATIONS[name] = Preset(name=name, doc=doc, build=build,
                                     model_dependent=model_dependent)
        return build

    return add


@register("none", "no augmentation: resize and normalise only")
def _none(size: int) -> v2.Transform:
    return v2.Identity()


@register("flip", "horizontal flip with probability 0.5 (a car seen from the other side)")
def _flip(size: int) -> v2.Transform:
    return v2.RandomHorizontalFlip(p=0.5)


@register("rotation", "rotation by up to ±15 degrees, corners filled black")
def _rotation(size: int) -> v2.Transform:
    return v2.RandomRotation(degrees=15)


@register("elastic", "elastic warp (alpha 30, sigma 5) with probability 0.5, as in the seed")
def _elastic(size: int) -> v2.Transform:
    return v2.RandomApply([v2.ElasticTransform(alpha=30.0, sigma=5.0)], p=0.5)


@register("gaussian-blur", "Gaussian blur, sigma 0.1-2.0, with probability 0.5")
def _gaussian_blur(size: int) -> v2.Transform:
    kernel = max(3, (size // 32) | 1)  # odd, grows with the image so the blur is visible
    return v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=0.5)


@register("color-jitter", "brightness, contrast and saturation ±0.4, hue ±0.1")
def _color_jitter(size: int) -> v2.Transform:
    return v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


@register("sharpness", "sharpen by a factor of 2 with probability 0.5")
def _sharpness(size: int) -> v2.Transform:
    return v2.RandomAdjustSharpness(sharpness_factor=2.0, p=0.5)


@register("autocontrast", "stretch each channel to the full range with probability 0.5")
def _autocontrast(size: int) -> v2.Transform:
    return v2.RandomAutocontrast(p=0.5)


@register("random-crop", "random crop of 35-100% of the area, resized back (Inception-style)")
def _random_crop(size: int) -> v2.Transform:
    return v2.RandomResizedCrop(size=(size, size), scale=(0.35, 1.0), antialias=True)


@register("trivialaugment", "TrivialAugmentWide: one random op of random strength per image")
def _trivialaugment(size: int) -> v2.Transform:
    return v2.TrivialAugmentWide()


@register("randaugment", "RandAugment: two random ops of magnitude 9 per image")
def _randaugment(size: int) -> v2.Transform:
    return v2.RandAugment(num_ops=2, magnitude=9)


@register("cam-occlusion", "blur or erase the top-q Grad-CAM area of a fraction p of each batch "
          "(cam_occlusion_* fields); runs last, in the epoch loop, with the current model",
          model_dependent=True)
def _cam_occlusion(size: int) -> v2.Transform:
    return v2.Identity()  # per image nothing: trainable/cam_occlusion.py runs it per batch


def preset_names(name: str) -> list[str]:
    """`flip+color-jitter` -> ["flip", "color-jitter"] (no check)."""
    return [part.strip() for part in name.split(COMBINE)]


def per_image_augmentation(name: str) -> str:
    """`name` without its model-dependent presets ("none" if nothing is left): the part that
    data workers or the device augmentation run. `flip+cam-occlusion` -> `flip`."""
    kept = [part for part in preset_names(name)
            if part not in AUGMENTATIONS or not AUGMENTATIONS[part].model_dependent]
    return COMBINE.join(kept) or "none"


def check_augmentation(name: str) -> None:
    """A UserError naming the unknown part of `name` and listing the valid presets."""
    for part in preset_names(name):
        if part not in AUGMENTATIONS:
            raise UserError(
                f"`augmentation` = {name!r}: unknown preset {part!r}; valid: "
                f"{', '.join(AUGMENTATIONS)} (combine with '+', e.g. flip+color-jitter)"
            )


def build_augmentation(name: str, size: int) -> v2.Transform:
    """The transform for preset `name` (possibly a '+' combination) on images of `size` px."""
    check_augmentation(name)
    parts = [AUGMENTATIONS[part].build(size) for part in preset_names(name)]
    return parts[0] if len(parts) == 1 else v2.Compose(parts)


@cache
def normalization() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, from torchvision's ResNet-18 ImageNet weights' own transforms."""
    transforms = ResNet18_Weights.IMAGENET1K_V1.transforms()
    return tuple(transforms.mean), tuple(transforms.std)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, H, W) in 0..255 -> float32 normalised with the ImageNet mean and std."""
    mean, std = normalization()
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean_t) / std_t


def eval_transform(config) -> v2.Transform:
    """The evaluation-time preprocessing of one PIL image: square resize to `config.resize`,
    then uint8 tensor (C, H, W); `normalize_batch` finishes it. No randomness."""
    return v2.Compose([
        v2.Resize((config.resize, config.resize), antialias=True),
        v2.PILToTensor(),
    ])


def train_transform(config) -> v2.Transform:
    """`eval_transform` followed by the config's augmentation preset (on the uint8 tensor)."""
    return v2.Compose([eval_transform(config), build_augmentation(config.augmentation,
                                                                  config.resize)])
