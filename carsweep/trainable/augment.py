"""Augmentation presets: named, documented sets of random transforms, one registry that holds
both forms of each preset and one function that plans where each part of a trial's runs.

A preset has two forms with one meaning:

    cpu     a torchvision v2 transform of one uint8 image (C, H, W), already resized to the
            trial's square size, returning the same shape, dtype and 0..255 range: what a
            loader's workers run per image;
    device  a batch op (gpu_augment.py, gpu_autoaugment.py) of a float batch (B, 3, S, S) in
            0..1 that draws its random parameters per sample: what runs where the model is, in
            the loader's `to_model_input`.

tests/test_gpu_augment.py checks that the two forms of every preset produce the same
statistics. `plan_augmentation` decides where each part of a '+'-combined name runs: with the
model on a GPU, every per-image preset runs on the device (the CPU only reads bytes); on a
CPU-only trial the presets run per image in the loader's workers, beside the model step;
the per-batch presets run in the epoch loop, after normalisation (gpu_augment.Normalize, with
`normalization(model)`'s mean and std, ends the device part): first the model-dependent ones
(cam-occlusion, which reads each image's true class), then the mixing one (mixup, cutmix or
snapmix: trainable/mixing.py), last because it turns the labels into soft targets. Where a
preset is written in the name does not move it across these parts; at most one mixing preset
per trial (search between them with a choice).

Names join with '+' to combine presets in order: `flip+color-jitter`. Adding a preset is one
`@register` entry below with both forms (the tests that run every entry pick it up, and
`carsweep settings` lists it with its doc).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torchvision.transforms import v2

from carsweep.errors import UserError
from carsweep.trainable import gpu_augment, gpu_autoaugment
from carsweep.trainable.backbones import DEFAULT_MODEL, preprocessing
from carsweep.trainable.gpu_augment import BatchOp, DeviceAugment

COMBINE = "+"
PLACEMENTS = ("auto", "cpu", "device")


@dataclass(frozen=True)
class Preset:
    """One augmentation preset: `build(size)` makes the per-image transform for square images
    of `size`, `device(size)` the batch op with the same meaning (None only for a per-batch
    preset: one that needs the current model, or mixes images and their labels; both forms
    are the identity and the epoch loop applies it per batch)."""

    name: str
    doc: str
    build: Callable[[int], v2.Transform]
    device: Callable[[int], BatchOp] | None
    model_dependent: bool = False
    mixing: bool = False
    min_size: int = 1  # the smallest square image both forms take

    @property
    def per_batch(self) -> bool:
        """Whether it runs in the epoch loop, per batch, rather than per image or sample."""
        return self.model_dependent or self.mixing


AUGMENTATIONS: dict[str, Preset] = {}


def register(name: str, doc: str, *, device: Callable[[int], BatchOp] | None,
             model_dependent: bool = False, mixing: bool = False, min_size: int = 1
             ) -> Callable[[Callable[[int], v2.Transform]], Callable]:
    if device is None and not (model_dependent or mixing):
        raise TypeError(f"preset {name!r} needs a device form (a batch op of gpu_augment.py)")

    def add(build: Callable[[int], v2.Transform]) -> Callable[[int], v2.Transform]:
        AUGMENTATIONS[name] = Preset(name=name, doc=doc, build=build, device=device,
                                     model_dependent=model_dependent, mixing=mixing,
                                     min_size=min_size)
        return build

    return add


def _identity_op(size: int) -> BatchOp:
    return lambda x: x


@register("none", "no augmentation: resize and normalise only", device=_identity_op)
def _none(size: int) -> v2.Transform:
    return v2.Identity()


@register("flip", "horizontal flip with probability 0.5 (a car seen from the other side)",
          device=gpu_augment.flip)
def _flip(size: int) -> v2.Transform:
    return v2.RandomHorizontalFlip(p=0.5)


@register("rotation", "rotation by up to ±15 degrees, corners filled black",
          device=gpu_augment.rotation)
def _rotation(size: int) -> v2.Transform:
    return v2.RandomRotation(degrees=15)


@register("elastic", "elastic warp (alpha 30, sigma 5) with probability 0.5, as in the seed; "
          "resize 21 px or more",
          device=gpu_augment.elastic, min_size=gpu_augment.ELASTIC_MIN_SIZE)
def _elastic(size: int) -> v2.Transform:
    elastic = v2.ElasticTransform(alpha=gpu_augment.ELASTIC_ALPHA, sigma=gpu_augment.ELASTIC_SIGMA)
    return v2.RandomApply([elastic], p=0.5)


@register("gaussian-blur", "Gaussian blur, sigma 0.1-2.0, with probability 0.5",
          device=gpu_augment.gaussian_blur)
def _gaussian_blur(size: int) -> v2.Transform:
    kernel = gpu_augment.blur_kernel_size(size)
    return v2.RandomApply([v2.GaussianBlur(kernel_size=kernel, sigma=(0.1, 2.0))], p=0.5)


@register("color-jitter", "brightness, contrast and saturation ±0.4, hue ±0.1",
          device=gpu_augment.color_jitter)
def _color_jitter(size: int) -> v2.Transform:
    return v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)


@register("sharpness", "sharpen by a factor of 2 with probability 0.5",
          device=gpu_augment.sharpness)
def _sharpness(size: int) -> v2.Transform:
    return v2.RandomAdjustSharpness(sharpness_factor=2.0, p=0.5)


@register("autocontrast", "stretch each channel to the full range with probability 0.5",
          device=gpu_augment.autocontrast)
def _autocontrast(size: int) -> v2.Transform:
    return v2.RandomAutocontrast(p=0.5)


@register("random-crop", "random crop of 35-100% of the area, resized back (Inception-style)",
          device=gpu_augment.random_crop)
def _random_crop(size: int) -> v2.Transform:
    return v2.RandomResizedCrop(size=(size, size), scale=gpu_augment.CROP_SCALE,
                                ratio=gpu_augment.CROP_RATIO, antialias=True)


@register("trivialaugment", "TrivialAugmentWide: one random op of random strength per image",
          device=gpu_autoaugment.trivialaugment)
def _trivialaugment(size: int) -> v2.Transform:
    return v2.TrivialAugmentWide()


@register("randaugment", "RandAugment: two random ops of magnitude 9 per image",
          device=gpu_autoaugment.randaugment)
def _randaugment(size: int) -> v2.Transform:
    return v2.RandAugment(num_ops=2, magnitude=9)


@register("cam-occlusion", "blur or erase the top-q Grad-CAM area of a fraction p of each batch "
          "(cam_occlusion_* fields); runs last, in the epoch loop, with the current model",
          device=None, model_dependent=True)
def _cam_occlusion(size: int) -> v2.Transform:
    return v2.Identity()  # per image nothing: trainable/cam_occlusion.py runs it per batch


@register("snapmix", "SnapMix (Huang et al. 2021): paste a box of another image, each label "
          "weighed by its image's CAM mass in the box, Beta(snapmix_alpha), prob. mix_prob; "
          "one extra no-grad forward per mixed batch", device=None, model_dependent=True,
          mixing=True)
@register("cutmix", "CutMix (Yun et al. 2019): paste a box of another image of the batch, "
          "labels by its area, lam ~ Beta(cutmix_alpha), a batch with prob. mix_prob",
          device=None, mixing=True)
@register("mixup", "MixUp (Zhang et al. 2018): blend each image with another of the batch, "
          "labels in the same proportion, lam ~ Beta(mixup_alpha), a batch with prob. mix_prob",
          device=None, mixing=True)
def _per_batch_only(size: int) -> v2.Transform:
    return v2.Identity()  # per image nothing: trainable/mixing.py mixes the batch in the loop


def preset_names(name: str) -> list[str]:
    """`flip+color-jitter` -> ["flip", "color-jitter"] (no check)."""
    return [part.strip() for part in name.split(COMBINE)]


def check_augmentation(name: str, *, resize: int | None = None) -> None:
    """A UserError naming the unknown part of `name` and listing the valid presets, or a
    preset that cannot take images of `resize` px."""
    for part in preset_names(name):
        if part not in AUGMENTATIONS:
            raise UserError(
                f"`augmentation` = {name!r}: unknown preset {part!r}; valid: "
                f"{', '.join(AUGMENTATIONS)} (combine with '+', e.g. flip+color-jitter)"
            )
    mixes = [part for part in preset_names(name) if AUGMENTATIONS[part].mixing]
    if len(mixes) > 1:
        raise UserError(f"`augmentation` = {name!r}: {' and '.join(mixes)} are both mixing "
                        "presets, and a batch is mixed one way; keep one (search between "
                        "them with a choice, e.g. [flip+cutmix, flip+snapmix])")
    too_small = [part for part in preset_names(name)
                 if resize is not None and resize < AUGMENTATIONS[part].min_size]
    if too_small:
        part = AUGMENTATIONS[too_small[0]]
        raise UserError(f"`augmentation` = {name!r}: {part.name} needs images of at least "
                        f"{part.min_size} px, but resize is {resize}; raise resize or drop "
                        f"{part.name}")


def mixing_preset(name: str) -> str | None:
    """The mixing preset of `name` ('+'-joined, checked), or None."""
    return next((part for part in preset_names(name) if AUGMENTATIONS[part].mixing), None)


def build_augmentation(name: str, size: int) -> v2.Transform:
    """The transform for preset `name` (possibly a '+' combination) on images of `size` px."""
    check_augmentation(name)
    parts = [AUGMENTATIONS[part].build(size) for part in preset_names(name)]
    return parts[0] if len(parts) == 1 else v2.Compose(parts)


@dataclass(frozen=True)
class AugmentPlan:
    """Where each part of a trial's augmentation runs, each a tuple of preset names in order:
    `cpu` per image in the loader (its workers), then `device` per sample on the batch where
    the model is, then `loop` per batch in the epoch loop, where the model and the labels
    are: the model-dependent presets, then the mixing one."""

    cpu: tuple[str, ...] = ()
    device: tuple[str, ...] = ()
    loop: tuple[str, ...] = ()


def plan_augmentation(name: str, device: torch.device | str, *, train: bool = True,
                      where: str = "auto") -> AugmentPlan:
    """Where the parts of `name` ('+'-joined presets) run for a trial whose model is on
    `device`; evaluation (`train` False) augments nothing.

    `where` (TrialConfig.augment_on): "auto" runs every per-image preset on the device when it
    is a GPU, so the CPU only reads bytes, and per image in the workers otherwise (there
    they run beside the model step); "cpu" and "device" force one side (e.g. to measure the
    device forms on the CPU)."""
    if where not in PLACEMENTS:
        raise ValueError(f"augment placement is {where!r}; valid: {', '.join(PLACEMENTS)}")
    check_augmentation(name)
    if not train:
        return AugmentPlan()
    parts = [AUGMENTATIONS[part] for part in preset_names(name) if part != "none"]
    per_image = tuple(p.name for p in parts if not p.per_batch)
    loop = tuple(p.name for p in sorted((p for p in parts if p.per_batch),
                                        key=lambda p: p.mixing))  # stable: the mix last
    on_device = where == "device" or (where == "auto" and torch.device(device).type == "cuda")
    if on_device:
        return AugmentPlan(device=per_image, loop=loop)
    return AugmentPlan(cpu=per_image, loop=loop)


def build_device_augmentation(names: tuple[str, ...], size: int) -> DeviceAugment | None:
    """The batch ops of presets `names` on images of `size` px, in order; None for none."""
    if not names:
        return None
    return DeviceAugment([AUGMENTATIONS[name].device(size) for name in names])


@cache
def normalization(model: str = DEFAULT_MODEL) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, from the transforms of `model`'s ImageNet weights (torchvision's
    metadata): what those weights expect, and a fine convention for a model from scratch."""
    found = preprocessing(model)
    return found.mean, found.std


def eval_transform(config) -> v2.Transform:
    """The evaluation-time preprocessing of one PIL image: square resize to `config.resize`,
    then uint8 tensor (C, H, W); gpu_augment.Normalize finishes it. No randomness."""
    return v2.Compose([
        v2.Resize((config.resize, config.resize), antialias=True),
        v2.PILToTensor(),
    ])


def train_transform(config) -> v2.Transform:
    """`eval_transform` followed by the config's augmentation preset (on the uint8 tensor)."""
    return v2.Compose([eval_transform(config), build_augmentation(config.augmentation,
                                                                  config.resize)])
