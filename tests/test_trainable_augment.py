"""Augmentation presets: every registered preset keeps a batch's shape, dtype and range."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import ResNet18_Weights
from torchvision.transforms import v2

from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.trainable import AUGMENTATIONS, check_augmentation, eval_transform, train_transform
from carsweep.trainable.augment import build_augmentation, normalization
from carsweep.trainable.gpu_augment import Normalize

SIZE = 48


@pytest.fixture
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    # Not the full 0..255 range, so autocontrast has something to stretch.
    return torch.randint(40, 200, (4, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def test_the_presets_the_issue_asks_for_are_registered():
    expected = {"none", "flip", "rotation", "elastic", "gaussian-blur", "color-jitter",
                "sharpness", "autocontrast", "trivialaugment"}
    assert expected <= set(AUGMENTATIONS)
    assert all(preset.doc for preset in AUGMENTATIONS.values())


@pytest.mark.parametrize("name", [*AUGMENTATIONS, "flip+color-jitter", "rotation+elastic"])
def test_preset_keeps_shape_dtype_and_range(name, batch):
    torch.manual_seed(1)
    transform = build_augmentation(name, SIZE)
    changed = False
    for _ in range(12):  # presets applied with p=0.5 must change the batch in 12 tries
        out = transform(batch)
        assert out.shape == batch.shape
        assert out.dtype == torch.uint8
        assert int(out.min()) >= 0
        assert int(out.max()) <= 255
        changed |= not torch.equal(out, batch)
    # "none" and per-batch presets (cam-occlusion, the mixes: in the loop) leave images be.
    per_image = [AUGMENTATIONS[part] for part in name.split("+")]
    assert changed == any(p.name != "none" and not p.per_batch for p in per_image)


def test_combination_applies_both_parts_in_order():
    transform = build_augmentation("flip+color-jitter", SIZE)
    assert isinstance(transform, v2.Compose)
    kinds = [type(part) for part in transform.transforms]
    assert kinds == [v2.RandomHorizontalFlip, v2.ColorJitter]


@pytest.mark.parametrize("name", ["sideways", "flip+sideways", "flip+"])
def test_unknown_preset_lists_the_valid_names(name):
    with pytest.raises(UserError, match="unknown preset") as caught:
        check_augmentation(name)
    assert "trivialaugment" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_normalisation_comes_from_torchvision_weights_metadata():
    reference = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert normalization() == (tuple(reference.mean), tuple(reference.std))
    white = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    expected = (1.0 - torch.tensor(reference.mean)) / torch.tensor(reference.std)
    torch.testing.assert_close(Normalize(*normalization())(white)[0, :, 0, 0], expected)


def test_eval_transform_is_deterministic_and_square():
    from PIL import Image

    image = Image.new("RGB", (70, 30), (10, 200, 30))
    config = TrialConfig(resize=32)
    first, second = eval_transform(config)(image), eval_transform(config)(image)
    assert first.shape == (3, 32, 32)
    assert first.dtype == torch.uint8
    assert torch.equal(first, second)
    assert first[:, 16, 16].tolist() == [10, 200, 30]
    augmented = train_transform(config.model_copy(update={"augmentation": "flip+rotation"}))
    assert augmented(image).shape == (3, 32, 32)


def test_elastic_is_refused_below_the_size_both_its_forms_take():
    """Both forms reflect a 41-px smoothing kernel at the borders: 21 px works, 20 px cannot."""
    from carsweep.trainable.augment import build_device_augmentation

    minimum = AUGMENTATIONS["elastic"].min_size
    assert minimum == 21
    torch.manual_seed(0)
    for size, works in ((minimum, True), (minimum - 1, False)):
        image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
        cpu = v2.ElasticTransform(alpha=30.0, sigma=5.0)
        device = build_device_augmentation(("elastic",), size)
        batch = torch.rand(4, 3, size, size)
        if works:
            assert cpu(image).shape == image.shape
            assert device(batch).shape == batch.shape
        else:
            with pytest.raises(RuntimeError, match="[Pp]adding"):
                cpu(image)
            with pytest.raises(RuntimeError, match="[Pp]adding"):
                device(batch)
    check_augmentation("flip+elastic", resize=minimum)
    with pytest.raises(UserError, match=r"^`augmentation` = 'flip\+elastic': elastic needs "
                                        r"images of at least 21 px, but resize is 20"):
        check_augmentation("flip+elastic", resize=minimum - 1)
    check_augmentation("flip", resize=16)


def test_a_sweep_space_with_elastic_at_a_size_it_cannot_take_is_refused():
    from carsweep.config.sweep import SweepConfig
    from carsweep.search.preflight.config_checks import check_augmentations

    space = {"augmentation": {"choice": ["flip", "elastic"]}, "resize": {"choice": [16, 64]}}
    with pytest.raises(UserError, match=r"^space: `augmentation` = 'elastic': elastic needs "
                                        r"images of at least 21 px, but resize is 16"):
        check_augmentations(SweepConfig(space=space))
    check_augmentations(SweepConfig(space={**space, "resize": {"choice": [32, 64]}}))
