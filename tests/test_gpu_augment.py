"""Both forms of every augmentation preset keep its meaning, and the plan puts them where the
issue asks: nothing per image on the CPU when the model is on a GPU.

Every per-image preset runs both ways on the same few hundred 32 px images (its batch op on
CPU tensors here; the code is the same on a GPU), and the statistics of what they produce
must agree: how many images change, by how much, and the mean and spread of the outputs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from carsweep.trainable import gpu_augment
from carsweep.trainable.augment import (
    AUGMENTATIONS,
    AugmentPlan,
    build_device_augmentation,
    normalization,
    plan_augmentation,
)
from carsweep.trainable.gpu_augment import Normalize, _shift_hue
from carsweep.trainable.gpu_autoaugment import rotate_batch

SIZE = 32
COUNT = 384
PER_IMAGE = sorted(name for name, preset in AUGMENTATIONS.items() if not preset.per_batch)


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


def _device_outputs(name: str, images: torch.Tensor, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return build_device_augmentation((name,), SIZE)(images) * 255.0


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


@pytest.mark.parametrize("name", sorted(set(PER_IMAGE) - {"none"}))
def test_device_form_has_the_statistics_of_the_cpu_form(name):
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


@pytest.mark.parametrize("name", sorted(set(PER_IMAGE) - {"none"}))
def test_every_sample_draws_its_own_parameters(name):
    same = _images(1).expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    outputs = _device_outputs(name, same, seed=3)
    distinct = torch.unique(outputs.flatten(1), dim=0).shape[0]
    # One draw per batch would give one distinct output; a coin per sample gives 2, a
    # continuous parameter per sample about 64 (half that after a coin); the auto-augment
    # policies draw one of 14 operations (some without a magnitude) per sample.
    coins = {"flip": 2, "sharpness": 2, "autocontrast": 2, "gaussian-blur": 16,
             "trivialaugment": 16, "randaugment": 16}
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


def test_every_per_image_preset_has_a_device_form():
    assert all(AUGMENTATIONS[name].device is not None for name in PER_IMAGE)
    assert AUGMENTATIONS["cam-occlusion"].device is None  # model-dependent: the epoch loop


@pytest.mark.parametrize("name", [*AUGMENTATIONS, "flip+elastic+random-crop",
                                  "rotation+trivialaugment+cam-occlusion", "randaugment+flip"])
def test_with_the_model_on_a_gpu_no_preset_leaves_per_image_work_on_the_cpu(name):
    plan = plan_augmentation(name, "cuda")  # a plan needs no GPU to be made
    assert plan.cpu == ()
    parts = [part for part in name.split("+") if part != "none"]
    assert list(plan.device) + list(plan.loop) == sorted(parts, key=lambda p: (
        AUGMENTATIONS[p].per_batch, AUGMENTATIONS[p].mixing, parts.index(p)))


def test_plan_on_the_cpu_and_by_placement():
    assert plan_augmentation("flip+color-jitter", "cpu") == AugmentPlan(
        cpu=("flip", "color-jitter"))
    assert plan_augmentation("flip+cam-occlusion", "cpu") == AugmentPlan(
        cpu=("flip",), loop=("cam-occlusion",))
    assert plan_augmentation("flip", "cpu", where="device") == AugmentPlan(device=("flip",))
    assert plan_augmentation("flip", "cuda", where="cpu") == AugmentPlan(cpu=("flip",))
    assert plan_augmentation("flip", "cuda", train=False) == AugmentPlan()
    assert plan_augmentation("none", "cuda") == plan_augmentation("none", "cpu") == AugmentPlan()
    with pytest.raises(ValueError, match="'gpu'; valid: auto, cpu, device"):
        plan_augmentation("flip", "cuda", where="gpu")


def test_same_seed_same_augmentation():
    images = _images(16)
    names = ("flip", "color-jitter", "random-crop", "trivialaugment")
    first, again, other = (_device_outputs_of(names, images, seed) for seed in (5, 5, 6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def _device_outputs_of(names: tuple[str, ...], images: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return build_device_augmentation(names, SIZE)(images)


def test_normalize_matches_the_weights_normalisation_from_bytes_and_from_floats():
    images = _images(8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization())
    expected = (images.float() / 255 - mean) / std
    normalize = Normalize(*normalization())
    torch.testing.assert_close(normalize(images), expected)
    torch.testing.assert_close(normalize(images.float() / 255), expected)
    assert torch.equal(images, _images(8))  # the caller's batch is left as it was


def test_elastic_draws_its_noise_field_on_the_batchs_device(monkeypatch):
    """The field is the size of the batch: drawn on the host it would be a (B, 2, S, S) draw
    and a pageable copy every step. Every draw of that size must name the batch's device."""
    draws = []
    original = torch.rand

    def recording(*size, **kwargs):
        shape = size[0] if len(size) == 1 and isinstance(size[0], tuple | list) else size
        draws.append((tuple(shape), kwargs.get("device")))
        return original(*size, **kwargs)

    monkeypatch.setattr(torch, "rand", recording)
    batch = torch.rand(4, 3, 40, 40)
    draws.clear()
    gpu_augment.elastic(40)(batch)
    large = [(shape, device) for shape, device in draws if math.prod(shape) >= 4 * 40 * 40]
    assert large == [((4, 2, 40, 40), batch.device)]
