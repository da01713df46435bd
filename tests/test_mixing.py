"""Mixing presets (mixup, cutmix, snapmix): the targets, SnapMix's label weights by hand, the
plan's place for them, a real training epoch with each, and the refusals."""

from __future__ import annotations

import optuna
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional as F
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 (autouse)

from carsweep.cli import main
from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.search.space import DefineByRunSpace
from carsweep.trainable import check_augmentation, predict, train
from carsweep.trainable import run as run_module
from carsweep.trainable.augment import AUGMENTATIONS, AugmentPlan, plan_augmentation
from carsweep.trainable.backbones import CamHead, cam_head
from carsweep.trainable.loop import dominant_class
from carsweep.trainable.mixing import (
    SnapDraw,
    SnapMix,
    TorchvisionMix,
    batch_mix_for,
    paste_box,
    semantic_percent_maps,
    snapmix_targets,
)
from carsweep.trainable.model import build_model, check_backbone

SIZE = 32
MIXING = ("mixup", "cutmix", "snapmix")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_tiny_dataset(tmp_path_factory.mktemp("tiny"), size=SIZE,
                                          per_split={"train": 4, "val": 2}))


def small(**changes) -> TrialConfig:
    values = {"epochs": 1, "batch_size": 8, "resize": SIZE, "num_workers": 0, "device": "cpu",
              "data_cache": "off", "optimizer": "adam", "lr": 1e-3, "seed": 0}
    return TrialConfig(**(values | changes))


class Quiet:
    def report(self, metrics, checkpoint_dir):
        self.last = metrics


# --- mixup and cutmix: torchvision's, with soft targets ------------------------------------

@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_torchvision_mixes_pair_images_in_a_random_order_in_the_targets_proportion(name):
    mix = batch_mix_for(small(augmentation=f"flip+{name}"), num_classes=4)
    assert isinstance(mix, TorchvisionMix)
    x, labels = torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])  # classes distinct
    torch.manual_seed(0)
    order = torch.randperm(4)  # the batch's random order: its first draw
    torch.manual_seed(0)
    mixed, targets = mix(None, x, labels)
    x, labels = x[order], labels[order]  # then torchvision pairs each with the one before
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    own = targets[torch.arange(4), labels]  # (4,) weight of each image's own class
    other = targets[torch.arange(4), labels.roll(1)]  # ... of the image before it
    torch.testing.assert_close(own + other, torch.ones(4))
    assert ((own > 0) & (own < 1)).all()  # a real mix (Beta draws are never exactly 0 or 1)
    if name == "mixup":
        torch.testing.assert_close(mixed, own.view(-1, 1, 1, 1) * x
                                   + other.view(-1, 1, 1, 1) * x.roll(1, 0))
    else:  # the share of pixels that came from the image before is that image's weight
        from_before = (mixed == x.roll(1, 0)).all(dim=1).flatten(1).float().mean(dim=1)
        torch.testing.assert_close(from_before, other)


def test_mixing_partners_from_the_cache_are_of_another_class_as_often_as_chance(tmp_path):
    """The decoded cache hands a batch over in cache order (sorted for read speed); on a
    class-ordered manifest neighbours then share a class. Partners must not."""
    from carsweep.trainable.data import build_loader

    classes, per_class = 16, 8
    data = load_dataset(make_tiny_dataset(tmp_path / "data", num_classes=classes, size=SIZE,
                                          per_split={"train": per_class, "val": 1}))
    config = small(augmentation="mixup", batch_size=32, data_cache="on",
                   cache_dir=str(tmp_path / "cache"))
    loader = build_loader(data, "train", config, train=True, device=torch.device("cpu"))
    mix = batch_mix_for(config, classes)
    torch.manual_seed(0)
    same = pairs = 0
    for _ in range(4):
        for images, labels in loader:
            _, targets = mix(None, loader.to_model_input(images), labels)
            same += int(((targets > 0).sum(dim=1) == 1).sum())  # its partner's class is its own
            pairs += len(labels)
    chance = (per_class - 1) / (classes * per_class - 1)  # 5.5 %
    assert pairs == 4 * classes * per_class
    assert same / pairs < 2.5 * chance  # in cache order about half the pairs were


def test_mix_prob_zero_leaves_batches_alone_with_one_hot_targets_and_half_mixes_half():
    x, labels = torch.rand(4, 3, SIZE, SIZE), torch.tensor([0, 1, 2, 3])
    never = batch_mix_for(small(augmentation="cutmix", mix_prob=0.0), num_classes=4)
    mixed, targets = never(None, x, labels)
    assert torch.equal(mixed, x)
    assert torch.equal(targets, F.one_hot(labels, 4).float())
    torch.manual_seed(0)
    half = batch_mix_for(small(augmentation="mixup", mix_prob=0.5), num_classes=4)
    mixed_batches = sum(not torch.equal(half(None, x, labels)[0], x) for _ in range(400))
    assert 160 < mixed_batches < 240


def test_train_accuracy_counts_the_dominant_class_of_soft_targets():
    assert dominant_class(torch.tensor([2, 0])).tolist() == [2, 0]
    soft = torch.tensor([[0.3, 0.7, 0.0], [0.6, 0.0, 0.4], [0.5, 0.5, 0.0]])
    assert dominant_class(soft).tolist() == [1, 0, 0]  # a tie goes to the lower class


# --- SnapMix: label weights by hand on a model whose CAM is known ----------------------------

class KnownCam(nn.Module):
    """The 'last feature map' is the image itself (layer4 = identity), pooled, read by fc:
    the CAM of class c is sum_k fc.weight[c, k] * image channel k."""

    def __init__(self):
        super().__init__()
        self.layer4 = nn.Identity()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([5.0, -3.0]))  # a bias cancels in the maps

    def forward(self, x):
        return self.fc(self.layer4(x).mean(dim=(2, 3)))


def _known_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0 (class 0): channel 0 is 1 on a 2x2 patch at rows 0-1, cols 0-1. Image 1
    (class 1): channel 1 is 1 on the pixel (row 6, col 6). 8x8, all else 0."""
    x = torch.zeros(2, 3, 8, 8)
    x[0, 0, 0:2, 0:2] = 1.0
    x[1, 1, 6, 6] = 1.0
    return x, torch.tensor([0, 1])


def test_snapmix_label_weights_match_the_hand_computed_case():
    model, (x, labels) = KnownCam(), _known_batch()
    maps = semantic_percent_maps(model, x, labels, CamHead("layer4", "fc"))
    expected = torch.zeros(2, 8, 8)
    expected[0, 0:2, 0:2] = 0.25  # the patch, its mass split over 4 pixels
    expected[1, 6, 6] = 1.0
    torch.testing.assert_close(maps, expected)
    # Image 0 takes rows 0-1 x cols 1-2 from image 1's box rows 5-7 x cols 5-7 and back.
    draw = SnapDraw(partner=torch.tensor([1, 0]), target=(1, 0, 3, 2), source=(5, 5, 8, 8))
    targets = snapmix_targets(maps, labels, draw, num_classes=2)
    # Image 0 keeps 1 - 2 * 0.25 of its evidence, brings image 1's whole pixel: [0.5, 1.0].
    # Image 1 keeps all of its own (the box misses its pixel), brings none of image 0's.
    torch.testing.assert_close(targets, torch.tensor([[0.5, 1.0], [0.0, 1.0]]))
    mixed = paste_box(x, draw)
    patch = F.interpolate(x[[1, 0], :, 5:8, 5:8], size=(2, 2), mode="bilinear",
                          align_corners=True)
    torch.testing.assert_close(mixed[:, :, 0:2, 1:3], patch)
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[0:2, 1:3] = False
    assert torch.equal(mixed[:, :, outside], x[:, :, outside])


def test_snapmix_gives_a_flat_map_the_area_share_and_same_class_pairs_one_label():
    maps = semantic_percent_maps(KnownCam(), torch.full((2, 3, 8, 8), 0.5),
                                 torch.tensor([0, 0]), CamHead("layer4", "fc"))
    torch.testing.assert_close(maps, torch.full((2, 8, 8), 1 / 64))
    draw = SnapDraw(partner=torch.tensor([1, 0]), target=(0, 0, 4, 4), source=(0, 0, 2, 8))
    targets = snapmix_targets(maps, torch.tensor([0, 0]), draw, num_classes=2)
    torch.testing.assert_close(targets, torch.tensor([[1 - 16 / 64 + 16 / 64, 0.0]] * 2))


def test_snapmix_reads_the_model_in_one_extra_forward_in_eval_mode_and_restores_it():
    model = KnownCam().train()
    model.fc.train(False)  # a module's own mode is restored, not set to the model's
    calls = []
    model.layer4.register_forward_hook(lambda m, i, o: calls.append(m.training))
    torch.manual_seed(0)
    mix = SnapMix(num_classes=2, alpha=5.0, p=1.0, head=CamHead("layer4", "fc"))
    x, labels = torch.rand(2, 3, 8, 8), torch.tensor([0, 1])
    mixed, targets = mix(model, x, labels)
    assert calls == [False]  # one forward, in eval mode
    assert model.training
    assert model.layer4.training
    assert not model.fc.training
    assert len(model.layer4._forward_hooks) == 1  # snapmix's own hook is gone, the test's kept
    assert mix.mixed == 1
    assert not torch.equal(mixed, x)
    assert ((targets >= 0) & (targets <= 1)).all()


def test_cam_head_per_architecture_and_a_model_without_a_linear_head_is_refused():
    assert cam_head("resnet18", 224) == CamHead("layer4", "fc")
    assert cam_head("efficientnet_b0", 224) == CamHead("features", "classifier.1")
    assert cam_head("convnext_tiny", 224) == CamHead("features", "classifier.2", "classifier.0")
    assert cam_head("regnet_y_400mf", 224) == CamHead("trunk_output", "fc")
    assert cam_head("swin_t", 224) == CamHead("permute", "head")
    with pytest.raises(UserError, match=r"^`model` = 'mobilenet_v3_small' cannot run snapmix: "
                                        r".* its head classifier.3 is one layer of a nonlinear "
                                        r"block \(Linear, Hardswish\); use cutmix"):
        check_backbone("mobilenet_v3_small", resize=224, augmentation="flip+snapmix")
    check_backbone("mobilenet_v3_small", resize=224, augmentation="flip+cutmix")


def test_convnexts_folded_layernorm_scale_makes_the_cam_its_logits_up_to_per_image_constants():
    # logit_c = (w_c * gamma) . (v - mu) / sigma + const_c, v the map's mean over cells: so the
    # cell mean of CAM_c = (w_c * gamma) . F_cell gives the logit once mu and sigma are known.
    torch.manual_seed(0)
    model = build_model(3, "none", "convnext_tiny").eval()
    head = cam_head("convnext_tiny", 64)
    x = torch.randn(2, 3, 64, 64)
    kept = {}
    handle = model.get_submodule(head.layer).register_forward_hook(
        lambda m, i, out: kept.update(features=out))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    weights = head.class_weights(model)  # (3, K), gamma folded
    cam_mean = torch.einsum("ck,bkhw->bchw", weights, kept["features"]).mean(dim=(2, 3))
    pooled = kept["features"].mean(dim=(2, 3))  # (B, K)
    norm, linear = model.get_submodule(head.scale), model.get_submodule(head.head)
    mu, sigma = pooled.mean(1, keepdim=True), (pooled.var(1, unbiased=False, keepdim=True)
                                               + norm.eps).sqrt()
    offset = linear.weight @ norm.bias + linear.bias  # (3,)
    expected = (cam_mean - mu * weights.sum(1)) / sigma + offset
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


# --- the plan, evaluation, the registry ------------------------------------------------------

def test_plan_runs_mixing_last_in_the_loop_after_cam_occlusion_wherever_it_is_written():
    assert all(AUGMENTATIONS[name].mixing and AUGMENTATIONS[name].device is None
               for name in MIXING)
    name = "snapmix+flip+cam-occlusion"
    assert plan_augmentation(name, "cuda") == AugmentPlan(device=("flip",),
                                                          loop=("cam-occlusion", "snapmix"))
    assert plan_augmentation(name, "cpu") == AugmentPlan(cpu=("flip",),
                                                         loop=("cam-occlusion", "snapmix"))
    assert plan_augmentation("flip+cutmix", "cpu", train=False) == AugmentPlan()


def test_mixing_is_off_at_evaluation(dataset):
    torch.manual_seed(0)
    trained = build_model(4, "none").eval()
    logits, _ = predict(trained, dataset, "val", small(augmentation="flip+cutmix"))
    plain, _ = predict(trained, dataset, "val", small(augmentation="none"))
    assert torch.equal(logits, plain)


# --- a real training epoch with each, at each precision ---------------------------------------

SLOW = pytest.mark.slow  # autocast in fp16/bf16 on the CPU takes seconds per batch
# A model with Grad-CAM (snapmix, cam-occlusion) and an `fc` head that autocasts on the CPU 2.5x
# faster than ResNet-18: fp16 and bf16 have no fast CPU kernels.
MIXED_MODEL = "regnet_y_400mf"


@pytest.mark.parametrize(("augmentation", "precision"), [
    ("flip+mixup", "fp32"), ("flip+snapmix", "fp32"),
    pytest.param("flip+cutmix", "fp16", marks=SLOW),
    pytest.param("flip+snapmix", "fp16", marks=SLOW),
    pytest.param("flip+cam-occlusion+snapmix", "bf16", marks=SLOW),
])
def test_each_mixing_preset_trains_an_epoch_with_mixed_targets(
        augmentation, precision, dataset, monkeypatch):
    seen, first_head = [], []

    def spy(config, num_classes, precision):
        mix = batch_mix_for(config, num_classes, precision)

        def recorded(model, x, labels):
            first_head.append(model.fc.weight.detach().clone())
            mixed, targets = mix(model, x, labels)
            seen.append((mixed.shape == x.shape, targets))
            return mixed, targets
        return recorded

    monkeypatch.setattr(run_module, "batch_mix_for", spy)
    config = small(model=MIXED_MODEL, augmentation=augmentation, precision=precision,
                   cam_occlusion_start_epoch=1, label_smoothing=0.1)
    reporter = Quiet()
    result = train(config, dataset, reporter=reporter)
    assert len(seen) == 2  # 16 training images, batches of 8: every batch mixed
    assert all(same_shape for same_shape, _ in seen)
    for _, targets in seen:
        assert targets.shape == (8, 4)
        assert targets.dtype == torch.float32
        if "snapmix" in augmentation:  # the paper's weights: rho_i + rho_j, between 0 and 2
            assert ((targets.sum(1) >= 0) & (targets.sum(1) <= 2 + 1e-5)).all()
            assert (targets > 0).sum(1).max() <= 2
        else:
            torch.testing.assert_close(targets.sum(1), torch.ones(8))
        assert (targets < 1).any()  # soft
    metrics = reporter.last
    assert metrics["precision"] == precision
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert metrics["train_loss"] > 0
    assert 0 <= metrics["train_acc"] <= 1
    assert 0 <= metrics["val_top1"] <= 1
    if precision != "fp16":  # fp16's GradScaler skips its first steps (2^16 overflows)
        assert not torch.equal(first_head[0], result.model.fc.weight)  # the optimizer stepped


# --- settings and refusals --------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("mix_prob", -0.1), ("mix_prob", 1.5), ("mixup_alpha", 0.0), ("cutmix_alpha", -1.0),
    ("snapmix_alpha", 0.0),
])
def test_each_mixing_field_is_validated(field, value):
    with pytest.raises(ValidationError, match=field):
        TrialConfig(**{field: value})


def test_two_mixing_presets_are_one_line():
    with pytest.raises(UserError, match=r"^`augmentation` = 'flip\+mixup\+cutmix': mixup and "
                                        r"cutmix are both mixing presets"):
        check_augmentation("flip+mixup+cutmix")


@pytest.mark.parametrize(("overrides", "message"), [
    (["augmentation=mixup+snapmix"], "carsweep train: error: `augmentation` = 'mixup+snapmix': "
     "mixup and snapmix are both mixing presets, and a batch is mixed one way; keep one (search "
     "between them with a choice, e.g. [flip+cutmix, flip+snapmix])"),
    (["augmentation=flip+snapmix", "model=mobilenet_v3_small"], "carsweep train: error: "
     "`model` = 'mobilenet_v3_small' cannot run snapmix: the class activation map that weighs "
     "its labels needs a linear head on the last feature map, and its head classifier.3 is one "
     "layer of a nonlinear block (Linear, Hardswish); use cutmix, or a model such as resnet*, "
     "efficientnet_*, regnet_*, convnext_*, swin_*"),
])
def test_a_bad_mixing_setting_is_one_line_and_writes_no_run(overrides, message, dataset,
                                                            tmp_path, capsys):
    sets = [arg for value in overrides for arg in ("--set", value)]
    assert main(["train", "--data", str(dataset.folder), "--out", str(tmp_path / "run"),
                 *sets]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.rstrip("\n") == message
    assert not (tmp_path / "run").exists()


def test_sweep_searches_each_alpha_only_where_its_preset_is_chosen():
    config = SweepConfig.model_validate({"space": {
        "augmentation": {"choice": ["flip", "flip+cutmix", "flip+snapmix"]},
        "mix_prob": {"uniform": [0.3, 1.0]},
        "snapmix_alpha": {"uniform": [1.0, 5.0]},
    }})
    assert config.conditions("snapmix_alpha") == {"augmentation": ["flip+snapmix"]}
    assert config.conditions("mix_prob") == {"augmentation": ["flip+cutmix", "flip+snapmix"]}
    space = DefineByRunSpace(config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = space.sample_all(study.ask())
        assert ("snapmix_alpha" in params) == (params["augmentation"] == "flip+snapmix")
        assert ("mix_prob" in params) == (params["augmentation"] != "flip")


def test_the_cars_config_offers_the_mixing_levers_at_448_px():
    from carsweep.config.sweep import load_sweep

    cars = load_sweep("configs/stanford-cars.yaml")
    assert {"flip", "flip+cutmix", "flip+snapmix"} <= set(cars.space["augmentation"].values)
    assert 448 in cars.space["resize"].values
    assert cars.conditions("snapmix_alpha") == {"augmentation": ["flip+snapmix"]}
