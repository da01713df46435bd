"""CAM-guided occlusion: the Grad-CAM pass, the top-q mask, the occlusion, the hook in training."""

from __future__ import annotations

import optuna
import pytest
import torch
from pydantic import ValidationError
from torch.nn import functional as F

from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth import make_synthetic_dataset
from carsweep.search.space import DefineByRunSpace
from carsweep.trainable import AUGMENTATIONS, check_augmentation, train
from carsweep.trainable import run as run_module
from carsweep.trainable.augment import (
    AugmentPlan,
    build_device_augmentation,
    plan_augmentation,
)
from carsweep.trainable.cam_occlusion import (
    CamOcclusion,
    batch_hook_for,
    box_mask,
    describe,
    grad_cam,
    occlude,
    occluded_accuracies,
    part_boxes,
    top_area_mask,
    uses_cam_occlusion,
)
from carsweep.trainable.model import build_model, set_backbone_frozen
from tests.trainable_data import make_tiny_dataset

SIZE = 64


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(4, "none").train()


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, SIZE, SIZE, generator=generator)
    return x, torch.tensor([0, 1, 2, 3, 0, 1])


class _Recorder:
    def __init__(self):
        self.reported = []

    def report(self, metrics, checkpoint_dir):
        self.reported.append(metrics)


# --- the Grad-CAM pass -----------------------------------------------------------------------

def test_grad_cam_is_the_grad_cam_formula_for_each_images_own_class(model, batch):
    x, labels = batch
    cams = grad_cam(model, x, labels.tolist())
    # The three-line Grad-CAM by hand: weights = spatial mean of d score / d A, ReLU(sum w A).
    kept = {}
    handle = model.layer4.register_forward_hook(lambda m, i, out: kept.update(a=out))
    model.eval()
    try:
        scores = model(x)
        score = scores.gather(1, labels.view(-1, 1)).sum()
        (gradient,) = torch.autograd.grad(score, kept["a"])
    finally:
        handle.remove()
        model.train()
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (B, K, 1, 1)
    expected = F.relu((weights * kept["a"]).sum(dim=1)).detach()
    assert cams.shape == expected.shape == (6, SIZE // 32, SIZE // 32)
    torch.testing.assert_close(cams, expected, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(grad_cam(model, x, [3] * 6), cams)  # the class matters


def test_grad_cam_touches_no_parameter_gradient_statistic_or_mode(model, batch):
    x, labels = batch
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 0.5)
    set_backbone_frozen(model, True)  # layer1..4 in eval and no grad, fc training
    statistics = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        cams = grad_cam(model, x, labels.tolist())  # works with a frozen backbone too
        assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
        assert all(torch.equal(model.state_dict()[k], v) for k, v in statistics.items())
        assert {name: m.training for name, m in model.named_modules()} == modes
        assert cams.abs().sum() > 0
    finally:
        set_backbone_frozen(model, False)
        model.zero_grad(set_to_none=True)
        model.train()


def test_grad_cam_removes_its_hooks_and_restores_modes_after_an_exception(model, batch):
    x, _ = batch
    with pytest.raises(RuntimeError):
        grad_cam(model, x, [99] * len(x))  # no class 99: the backward pass fails
    assert not model.layer4._forward_hooks
    assert all(module.training for module in model.modules())
    grad_cam(model, x, [0] * len(x))
    assert not model.layer4._forward_hooks


# --- the mask and the occlusion ---------------------------------------------------------------

def test_mask_covers_exactly_q_of_the_area_where_the_map_is_highest():
    cams = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1))
    mask = top_area_mask(cams, (32, 32), 0.2)
    assert mask.shape == (3, 1, 32, 32)
    assert mask.flatten(1).sum(1).tolist() == [round(0.2 * 32 * 32)] * 3
    up = F.interpolate(cams.unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)
    for image_up, image_mask in zip(up, mask, strict=True):
        assert image_up[image_mask].min() >= image_up[~image_mask].max()


def test_a_flat_map_marks_nothing():
    mask = top_area_mask(torch.stack([torch.zeros(2, 2), torch.tensor([[0.0, 1.0], [0, 0]])]),
                         (16, 16), 0.25)
    assert mask[0].sum() == 0
    assert mask[1].sum() == 64


@pytest.mark.parametrize("kind", ["erase", "blur"])
def test_occlusion_changes_the_masked_pixels_and_only_them(kind, batch):
    x, _ = batch
    mask = torch.zeros(len(x), 1, SIZE, SIZE, dtype=torch.bool)
    mask[:, :, 10:30, 20:40] = True
    out = occlude(x, mask, kind)
    changed = (out != x).any(dim=1, keepdim=True)
    assert not changed[~mask].any()
    assert changed[mask].float().mean() > 0.99
    if kind == "erase":
        assert (out.expand_as(x)[mask.expand_as(x)] == 0).all()  # the mean colour
    else:  # a blur keeps the local average and smooths: far less variance inside
        assert out[mask.expand_as(x)].var() < 0.3 * x[mask.expand_as(x)].var()


def test_hook_occludes_a_fraction_p_only_inside_the_top_q_cam_area(model, batch):
    x, labels = batch
    hook = CamOcclusion(p=0.5, q=0.1, kind="erase", seed=3)
    out = hook(model, x, labels)
    changed = (out != x).flatten(1).any(dim=1)
    assert int(changed.sum()) == hook.occluded == 3  # 0.5 * 6 images
    for i in changed.nonzero().flatten().tolist():
        cam = grad_cam(model, x[i:i + 1], [int(labels[i])])  # (1, 2, 2)
        up = F.interpolate(cam.unsqueeze(1), size=(SIZE, SIZE), mode="bilinear",
                           align_corners=False)[0]  # (1, S, S)
        diff = (out[i] != x[i]).any(dim=0, keepdim=True)
        assert int(diff.sum()) == round(0.1 * SIZE * SIZE)  # the top 10 % of the area ...
        # ... where the map is highest (up to float noise between batched and single runs).
        assert up[diff].min() >= up[~diff].max() - 1e-4 * up.max()
    again = CamOcclusion(p=0.5, q=0.1, kind="erase", seed=3)(model, x, labels)
    assert torch.equal(out, again)  # seeded


def test_fraction_p_holds_on_average_for_any_batch_size():
    hook = CamOcclusion(p=0.25, q=0.1, kind="erase", seed=0)
    counts = [len(hook.choose(3)) for _ in range(4000)]
    assert sum(counts) / (3 * len(counts)) == pytest.approx(0.25, abs=0.02)
    assert set(counts) <= {0, 1}


# --- configuration, registry, placement --------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("cam_occlusion_p", 0.0), ("cam_occlusion_p", 1.5), ("cam_occlusion_q", 0.0),
    ("cam_occlusion_q", 1.0), ("cam_occlusion_kind", "cutout"), ("cam_occlusion_start_epoch", 0),
])
def test_each_field_is_validated(field, value):
    with pytest.raises(ValidationError, match=field):
        TrialConfig(**{field: value})


def test_registry_marks_it_model_dependent_and_it_combines():
    assert AUGMENTATIONS["cam-occlusion"].model_dependent
    check_augmentation("flip+cam-occlusion")
    assert plan_augmentation("flip+cam-occlusion", "cpu").cpu == ("flip",)
    assert plan_augmentation("cam-occlusion", "cuda") == AugmentPlan(loop=("cam-occlusion",))
    assert uses_cam_occlusion("flip+cam-occlusion")
    assert not uses_cam_occlusion("flip")


def test_flip_stays_on_the_device_and_cam_occlusion_out_of_the_data_workers():
    plan = plan_augmentation("flip+cam-occlusion", "cpu", where="device")
    assert (plan.cpu, plan.device) == ((), ("flip",))
    augment = build_device_augmentation(plan.device, SIZE)
    images = torch.randint(0, 256, (64, 3, SIZE, SIZE), dtype=torch.uint8)
    flipped = (augment(images) != images.float() / 255).flatten(1).any(1)
    assert flipped.any()  # the device flip ran (and only flip: nothing needs a model there)


def test_hook_only_for_cam_occlusion_and_from_its_start_epoch():
    config = TrialConfig(augmentation="flip+cam-occlusion", cam_occlusion_start_epoch=2)
    assert batch_hook_for(config, 1) is None
    assert isinstance(batch_hook_for(config, 2), CamOcclusion)
    assert batch_hook_for(config.model_copy(update={"augmentation": "flip"}), 5) is None
    assert describe(config.model_copy(update={"augmentation": "flip"})) == "no"
    assert describe(config).startswith("yes: erase the top 10% ")
    assert describe(config.model_copy(update={"epochs": 1})).startswith("no (asked for")


def test_box_mask_covers_the_inclusive_box():
    mask = box_mask(torch.tensor([[2.0, 3.0, 5.0, 4.0], [float("nan")] * 4]), 8)
    assert mask[0, 0].sum() == 4 * 2
    assert mask[0, 0, 3:5, 2:6].all()
    assert mask[1].sum() == 0


def test_training_runs_the_hook_from_the_start_epoch(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "data", per_split={"train": 6, "val": 2}, size=SIZE)
    hooks = {}

    def spy(config, epoch):
        hooks[epoch] = batch_hook_for(config, epoch)
        return hooks[epoch]

    monkeypatch.setattr(run_module, "batch_hook_for", spy)
    config = TrialConfig(augmentation="flip+cam-occlusion", cam_occlusion_start_epoch=2,
                         cam_occlusion_p=1.0, epochs=2, batch_size=8, resize=SIZE,
                         num_workers=0, device="cpu", data_cache="off", lr=0.05)
    result = train(config, data, reporter=_Recorder())
    assert hooks[1] is None
    assert hooks[2].occluded == 24  # p = 1: every training image of epoch 2
    assert all(p.grad is None or torch.isfinite(p.grad).all()
               for p in result.model.parameters())
    assert len(result.history) == 2


def test_sweep_searches_the_cam_occlusion_fields_only_where_augmentation_uses_it():
    config = SweepConfig.model_validate({"space": {
        "augmentation": {"choice": ["flip", "flip+cam-occlusion"]},
        "cam_occlusion_q": {"uniform": [0.05, 0.3]},
        "cam_occlusion_kind": {"choice": ["blur", "erase"]},
    }})
    assert config.conditions("cam_occlusion_q") == {"augmentation": ["flip+cam-occlusion"]}
    space = DefineByRunSpace(config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(20):
        params = space.sample_all(study.ask())
        uses = params["augmentation"] == "flip+cam-occlusion"
        assert ("cam_occlusion_q" in params) == ("cam_occlusion_kind" in params) == uses
        seen.add(uses)
    assert seen == {True, False}


# --- test time: part boxes of the shared synthetic dataset -------------------------------------

def test_part_boxes_cover_each_test_images_headlight(prepared_dataset):
    data = load_dataset(prepared_dataset)
    rows = data.rows("test")
    boxes = part_boxes(rows, data.parts(), "headlight")  # (N, 1, 4), 0..1 of the image
    assert boxes.shape == (len(rows), 1, 4)
    assert not boxes.isnan().any()
    assert ((boxes >= 0) & (boxes <= 1)).all()
    mask = box_mask(boxes[:, 0] * SIZE - torch.tensor([0, 0, 1, 1]), SIZE)
    area = mask.flatten(1).float().mean(1)
    assert (area > 0.005).all()
    assert (area < 0.2).all()


# --- the claim, measured: two-cue data, trained with and without cam-occlusion ------------------

TWO_CUE = {"classes": 4, "per_class": 48, "test_per_class": 12, "size": SIZE, "seed": 0,
           "cues": ("headlight", "wheel")}


@pytest.fixture(scope="module")
def two_cue_dataset(tmp_path_factory):
    source = make_synthetic_dataset(tmp_path_factory.mktemp("two_cue") / "source", **TWO_CUE)
    return prepare_dataset(source, tmp_path_factory.mktemp("two_cue") / "data",
                           val_fraction=0.1, seed=0, warn=lambda line: None)


@pytest.mark.slow
def test_two_cue_training_with_and_without_cam_occlusion(two_cue_dataset, monkeypatch):
    hooks = []

    def spy(config, epoch):
        hooks.append(batch_hook_for(config, epoch))
        return hooks[-1]

    monkeypatch.setattr(run_module, "batch_hook_for", spy)
    results = {}
    for augmentation in ("flip", "flip+cam-occlusion"):
        config = TrialConfig(augmentation=augmentation, epochs=5, batch_size=16, resize=SIZE,
                             optimizer="adam", lr=0.001, num_workers=0, device="cpu",
                             data_cache="off",
                             cam_occlusion_p=0.5, cam_occlusion_q=0.1,
                             cam_occlusion_start_epoch=2)
        trained = train(config, two_cue_dataset, reporter=_Recorder(), eval_split=None)
        results[augmentation] = occluded_accuracies(trained.model, two_cue_dataset, config)
    print("\ntest top-1 (4 classes, 48 test images):")
    for augmentation, accuracies in results.items():
        print(f"  {augmentation:<20}" + "  ".join(f"{k} {v:.3f}" for k, v in accuracies.items()))

    occluded = sum(hook.occluded for hook in hooks if hook is not None)
    assert occluded > 0.4 * 4 * len(two_cue_dataset.rows("train"))  # p=0.5 in epochs 2..5
    for accuracies in results.values():
        assert set(accuracies) == {"clean", "headlight hidden", "wheel hidden"}
        assert accuracies["clean"] >= 0.5  # chance is 0.25
