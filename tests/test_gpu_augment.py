"""The batched device twins of the augmentation presets keep each preset's meaning.

Every preset with a device twin runs both ways on the same few hundred 32 px images (on CPU
tensors here; the code is the same on a GPU), and the statistics of what they produce must
agree: how many images change, by how much, and the mean and spread of the outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from carsweep.trainable.augment import AUGMENTATIONS, normalize_batch
from carsweep.trainable.gpu_augment import (
    DEVICE_PRESETS,
    DeviceAugment,
    Normalize,
    _shift_hue,
    plan_augmentation,
    rotate_batch,
)

SIZE = 32
COUNT = 384
CPU_ONLY = {"elastic", "trivialaugment", "randaugment"}


def _images(count: int, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 3, 32, 32): smooth colour fields with an edge, like small photos."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear",
                                             align_corners=False)
    smooth[:, :, :, : SIZE // 3] *= 0.5  # a vertical edge, so flips and crops show
    return (smooth * 235 + 10).round().to(torch.uint8)


def _cpu_outputs(name: str, images: torch.Tensor) -> torch.Tensor:
    torch.manual_seed(1)
    transform = AUGMENTATIONS[name].build(SIZE)
    return torch.stack([transform(image) for image in images]).float()


def _device_outputs(name: str, images: torch.Tensor) -> torch.Tensor:
    return DeviceAugment([name], SIZE, seed=1)(images) * 255.0


def _statistics(inputs: torch.Tensor, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image numbers (N,) whose distributions describe what a preset does."""
    change = (outputs - inputs.float()).abs().mean((1, 2, 3))
    return {
        "changed": (change > 1.0).float(),  # more than rounding
        "change": change,
        "mean": outputs.mean((1, 2, 3)),
        "std": outputs.std((1, 2, 3)),
        "left_minus_right": outputs[..., : SIZE // 2].mean((1, 2, 3))
        - outputs[..., SIZE // 2 :].mean((1, 2, 3)),
    }


@pytest.mark.parametrize("name", sorted(DEVICE_PRESETS))
def test_device_twin_has_the_statistics_of_the_cpu_preset(name):
    images = _images(COUNT)
    cpu = _statistics(images, _cpu_outputs(name, images))
    device = _statistics(images, _device_outputs(name, images))
    for key in cpu:
        a, b = cpu[key], device[key]
        # Means agree within 4 standard errors (+ 0.75 grey levels for rounding and borders).
        standard_error = math.sqrt((a.var() + b.var()).item() / COUNT)
        assert abs(a.mean() - b.mean()).item() <= 4 * standard_error + 0.75, (
            f"{name}: mean {key} {a.mean():.3f} (cpu) vs {b.mean():.3f} (device)")
        # Spreads agree within 25 % (+ rounding).
        assert abs(a.std() - b.std()).item() <= 0.25 * a.std().item() + 0.75, (
            f"{name}: spread of {key} {a.std():.3f} (cpu) vs {b.std():.3f} (device)")


@pytest.mark.parametrize("name", sorted(set(DEVICE_PRESETS) - {"none"}))
def test_every_sample_draws_its_own_parameters(name):
    same = _images(1).expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    outputs = DeviceAugment([name], SIZE, seed=3)(same)
    distinct = torch.unique(outputs.flatten(1), dim=0).shape[0]
    # One draw per batch would give one distinct output; a coin per sample gives 2, a
    # continuous parameter per sample about 64 (half that after a coin).
    coins = {"flip": 2, "sharpness": 2, "autocontrast": 2, "gaussian-blur": 16}
    assert distinct >= coins.get(name, 32), f"{name}: {distinct} distinct outputs of 64"


def test_coin_presets_change_about_half_of_a_batch():
    images = _images(COUNT)
    for name in ("flip", "sharpness"):  # (a weak blur may change less than a grey level)
        changed = _statistics(images, _device_outputs(name, images))["changed"].mean().item()
        assert 0.4 < changed < 0.6, f"{name}: {changed:.2f} of the batch changed"


def test_rotation_matches_torchvision_for_a_given_angle():
    images = _images(4).float() / 255
    angles = torch.tensor([15.0, -15.0, 7.5, 90.0])
    rotated = rotate_batch(images, angles)
    for image, angle, result in zip(images, angles.tolist(), rotated, strict=True):
        torch.testing.assert_close(result, TF.rotate(image, angle))


def test_hue_shift_matches_torchvision():
    images = _images(4).float() / 255
    shifts = torch.tensor([0.1, -0.1, 0.03, 0.0])
    shifted = _shift_hue(images, shifts)
    for image, shift, result in zip(images, shifts.tolist(), shifted, strict=True):
        torch.testing.assert_close(result, TF.adjust_hue(image, shift), atol=1e-5, rtol=0)


def test_device_presets_are_the_cpu_presets_minus_the_cpu_only_ones():
    assert set(DEVICE_PRESETS) <= set(AUGMENTATIONS)
    per_image = {name for name, preset in AUGMENTATIONS.items() if not preset.model_dependent}
    assert set(per_image) - set(DEVICE_PRESETS) == CPU_ONLY


def test_plan_puts_the_device_tail_on_cuda_and_everything_on_cpu_otherwise():
    assert plan_augmentation("flip+color-jitter", "cuda").device == ("flip", "color-jitter")
    assert plan_augmentation("flip+color-jitter", "cuda").cpu is None
    # Order is kept: only what comes after the last CPU-only preset moves to the device.
    plan = plan_augmentation("flip+elastic+random-crop", "cuda")
    assert (plan.cpu, plan.device) == ("flip+elastic", ("random-crop",))
    assert plan_augmentation("flip+trivialaugment", "cuda").device == ()
    assert plan_augmentation("flip", "cpu").cpu == "flip"
    assert plan_augmentation("flip", "cpu", where="device").device == ("flip",)
    assert plan_augmentation("flip", "cuda", where="cpu").device == ()
    assert plan_augmentation("none", "cuda") == plan_augmentation("none", "cpu")
    with pytest.raises(ValueError, match="'gpu'; valid: auto, cpu, device"):
        plan_augmentation("flip", "cuda", where="gpu")


def test_unknown_device_preset_is_named():
    with pytest.raises(ValueError, match=r"\['elastic'\]"):
        DeviceAugment(["elastic"], SIZE)


def test_same_seed_same_augmentation():
    images = _images(16)
    first = DeviceAugment(["flip", "color-jitter", "random-crop"], SIZE, seed=5)(images)
    again = DeviceAugment(["flip", "color-jitter", "random-crop"], SIZE, seed=5)(images)
    other = DeviceAugment(["flip", "color-jitter", "random-crop"], SIZE, seed=6)(images)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_normalize_matches_the_trainable_normalisation():
    from carsweep.trainable.augment import normalization

    images = _images(8)
    normalize = Normalize(*normalization())
    torch.testing.assert_close(normalize(images), normalize_batch(images))
    torch.testing.assert_close(normalize(images.float() / 255), normalize_batch(images))
