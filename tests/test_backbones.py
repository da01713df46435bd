"""Any torchvision backbone: each listed model builds with a new head, trains, gives a Grad-CAM map
of its stage's size, freezes to its head, and survives export -> predict with the same
probabilities; start weights per architecture; every refusal is one line.

The round trip runs the user's path (`train` into a run folder, `carsweep export`, `load_export`
and predict's probabilities) on 64 px images from scratch (weights none): small models always,
one of each other family marked slow. Every listed model (LISTED) is built with a new head and
has its Grad-CAM stages found on the meta device, where even regnet_y_128gf (644 M parameters)
costs no memory; the wider members of a family run the same code as the one that trains here
(the whole list trained once while this was written: regnet_y_32gf took 67 s, regnet_y_16gf
53 s, the rest under 25 s each).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from test_bad_input import only_line
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 - autouse

from carsweep.analysis.gradcam import cam_layer, class_maps
from carsweep.cli import main
from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.results.export import (
    export_payload,
    find_source,
    from_payload,
    load_export,
    save_retrained_model,
)
from carsweep.trainable import build_loader, build_model, predict, train
from carsweep.trainable.augment import normalization
from carsweep.trainable.backbones import (
    deepest_stage,
    feature_stages,
    head_modules,
    meta_model,
)
from carsweep.trainable.cam_occlusion import grad_cam
from carsweep.trainable.checkpoint import save_checkpoint
from carsweep.trainable.data import load_inputs
from carsweep.trainable.gpu_augment import Normalize
from carsweep.trainable.model import imagenet_cache_path, set_backbone_frozen
from carsweep.trainable.run_folder import RunFolder

RESIZE = 64
FAST = ["resnet18", "mobilenet_v3_small", "regnet_y_400mf", "squeezenet1_1"]
HEAVY = ["resnet34", "resnet50", "efficientnet_b0", "efficientnet_b3", "convnext_tiny",
         "mobilenet_v3_large", "regnet_y_800mf", "swin_t"]
LISTED = ["resnet18", "resnet34", "resnet50", "efficientnet_b0", "efficientnet_b1",
          "efficientnet_b2", "efficientnet_b3", "convnext_tiny", "mobilenet_v3_small",
          "mobilenet_v3_large", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf",
          "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = make_tiny_dataset(tmp_path_factory.mktemp("tiny"), size=RESIZE,
                               per_split={"train": 4, "val": 2, "test": 2})
    return load_dataset(folder)


@pytest.mark.parametrize("name", FAST + [pytest.param(n, marks=pytest.mark.slow) for n in HEAVY])
def test_a_backbone_trains_explains_itself_and_survives_export_and_predict(
        name, tiny_data, tmp_path):
    config = TrialConfig(model=name, resize=RESIZE, epochs=1, batch_size=8, optimizer="adam",
                         lr=1e-3, num_workers=0, device="cpu", data_cache="off")
    with RunFolder(tmp_path / "run", config, tiny_data.classes, out=io.StringIO()) as run:
        result = train(config, tiny_data, reporter=run)
    model = result.model
    assert np.isfinite(result.history[0]["train_loss"])
    (head,) = head_modules(name)
    assert dict(model.named_modules())[head].weight.shape[0] == tiny_data.num_classes

    # Grad-CAM at analyze's stage is a map of that stage's size, upsampled to the image.
    images = load_inputs([tiny_data.image_path(p) for p in tiny_data.rows("test")["path"]],
                         config)  # (8, 3, 64, 64) uint8
    layer = cam_layer(name, RESIZE)
    side = {stage.name: stage.side for stage in feature_stages(name, RESIZE)}[layer]
    labels = [index % tiny_data.num_classes for index in range(len(images))]
    normalize = Normalize(*normalization(name))
    raw = grad_cam(model, normalize(images), labels, layer)
    assert raw.shape == (len(images), side, side)
    assert grad_cam(model, normalize(images), labels, deepest_stage(name, RESIZE)).dim() == 3
    maps = class_maps(model, images, labels, layer=layer, normalize=normalize)
    assert maps.shape == (len(images), RESIZE, RESIZE)
    assert torch.isfinite(maps).all()
    assert 0 <= maps.min() <= maps.max() <= 1

    # Export the run folder and predict: the same probabilities as the model in memory.
    out = tmp_path / "best.pt"
    assert main(["export", str(tmp_path / "run"), "--out", str(out)]) == 0
    exported = load_export(out)
    assert (exported.architecture, exported.temperature) == (name, 1.0)
    logits, _ = predict(model, tiny_data, "test", config)
    np.testing.assert_allclose(exported.probabilities(images).numpy(),
                               torch.softmax(logits, dim=1).numpy(), atol=1e-5)


@pytest.mark.parametrize("name", LISTED)
def test_every_listed_backbone_builds_with_a_new_head_and_gradcam_stages(name):
    model = meta_model(name, 7)  # as build_model's, on the meta device
    (head,) = head_modules(name)
    assert dict(model.named_modules())[head].weight.shape[0] == 7
    assert model(torch.empty(2, 3, 448, 448, device="meta")).shape == (2, 7)
    stages = feature_stages(name, 448)
    assert stages[-1].side == 14  # stride 32 at 448 px: the last conv stage
    assert cam_layer(name, 448) == stages[-1].name


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "convnext_tiny", "swin_t"])
def test_freezing_leaves_only_the_head_training_whatever_its_name(name):
    model = build_model(3, "none", name).train()
    set_backbone_frozen(model, True, name)
    (head,) = head_modules(name)
    trainable = {key for key, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{head}.weight", f"{head}.bias"}
    frozen_modes = [m.training for key, m in model.named_modules()
                    if key and not head.startswith(key) and not key.startswith(head)]
    assert not any(frozen_modes)
    assert dict(model.named_modules())[head].training
    set_backbone_frozen(model, False, name)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(("name", "head", "deepest", "at_64"), [
    ("resnet18", "fc", "layer4", "layer2"),
    ("resnet50", "fc", "layer4", "layer2"),
    ("efficientnet_b3", "classifier.1", "features", "features.3"),
    ("convnext_tiny", "classifier.2", "features", "features.3"),
    ("mobilenet_v3_large", "classifier.3", "features", "features.6"),
    ("regnet_y_400mf", "fc", "trunk_output", "trunk_output.block2"),
    ("regnet_y_128gf", "fc", "trunk_output", "trunk_output.block2"),
    ("swin_t", "head", "permute", "permute"),  # channels-last maps until its `permute`
    ("squeezenet1_1", "classifier.1", "features", "features.7"),  # a 1x1 conv head
])
def test_head_and_gradcam_layers_are_found_per_architecture(name, head, deepest, at_64):
    assert head_modules(name) == (head,)
    stages = feature_stages(name, 448)
    assert stages[-1].name == deepest_stage(name, 448) == deepest
    assert [s.side for s in stages] == sorted((s.side for s in stages), reverse=True)
    assert cam_layer(name, 448) == deepest  # 14 cells at 448 px for a stride of 32
    assert cam_layer(name, RESIZE) == at_64  # the deepest map still 7 cells across


def _imagenet_like(name: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return build_model(1000, "none", name).state_dict()  # a 1000-class head, like the real file


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_start_weights_drop_a_head_of_another_size_whatever_its_name(name, tmp_path):
    state = _imagenet_like(name)
    torch.save(state, tmp_path / "start.pt")
    model = build_model(5, str(tmp_path / "start.pt"), name)
    (head,) = head_modules(name)
    loaded = model.state_dict()
    assert loaded[f"{head}.weight"].shape[0] == 5
    kept = [key for key in state if not key.startswith(f"{head}.")]
    assert all(torch.equal(loaded[key], state[key]) for key in kept)


def test_imagenet_of_another_model_is_its_own_file_in_the_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = imagenet_cache_path("efficientnet_b0")
    assert cached.name == "efficientnet_b0_rwightman-7f5810bc.pth"  # torchvision's file name
    assert cached != imagenet_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    state = _imagenet_like("efficientnet_b0")
    torch.save(state, cached)
    model = build_model(4, "imagenet", "efficientnet_b0")
    assert torch.equal(model.state_dict()["features.0.0.weight"], state["features.0.0.weight"])


def test_shipped_weights_are_keyed_by_model_and_source(tmp_path, monkeypatch):
    from carsweep.search.preflight import Report
    from carsweep.search.preflight.config_checks import check_weights
    from carsweep.search.sweep_inputs import shipped_weights
    from carsweep.search.trial import weights_key

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    models = ["resnet18", "efficientnet_b0"]
    for name in models:
        imagenet_cache_path(name).parent.mkdir(parents=True, exist_ok=True)
        torch.save(_imagenet_like(name), imagenet_cache_path(name))
    start = tmp_path / "start.pt"
    torch.save(_imagenet_like("resnet18"), start)
    config = SweepConfig(space={"model": {"choice": models},
                                "weights": {"choice": ["imagenet", str(start), "none"]}})
    shipped = shipped_weights(config)
    assert set(shipped) == {(m, w) for m in models for w in ("imagenet", str(start))}
    assert "features.0.0.weight" in shipped[("efficientnet_b0", "imagenet")]
    assert "conv1.weight" in shipped[("resnet18", "imagenet")]
    assert shipped[("resnet18", str(start))] is shipped[("efficientnet_b0", str(start))]
    trial = TrialConfig(model="efficientnet_b0", weights="imagenet")
    assert shipped[weights_key(trial)] is shipped[("efficientnet_b0", "imagenet")]
    report = Report()
    check_weights(config, report)
    assert report.lines == [
        "  ok    weights: imagenet for resnet18 (trained at 224 px), "
        f"{start} for resnet18, imagenet for efficientnet_b0 (trained at 224 px), "
        f"{start} for efficientnet_b0 loaded"]


def test_weights_of_another_architecture_name_the_key_that_does_not_fit(tmp_path):
    torch.save(_imagenet_like("resnet18"), tmp_path / "resnet.pt")
    with pytest.raises(UserError) as caught:
        build_model(3, str(tmp_path / "resnet.pt"), "resnet50")
    assert str(caught.value) == (
        f"weights {str(tmp_path / 'resnet.pt')!r}: do not fit resnet50 (layer1.0.conv1.weight "
        "is [64, 64, 3, 3], resnet50 has [64, 64, 1, 1])")


@pytest.mark.parametrize(("overrides", "message"), [
    (["model=resnet19"], "carsweep train: error: `model` = 'resnet19' is not a torchvision "
     "classification model (did you mean 'resnet18'?); valid: resnet18, resnet50, "
     "efficientnet_b0, efficientnet_b3, convnext_tiny, mobilenet_v3_large, regnet_y_800mf, "
     "swin_t and the rest of torchvision.models.list_models(module=torchvision.models) but "
     "vit_*"),
    (["model=vit_b_16", "resize=224"], "carsweep train: error: `model` = 'vit_b_16' is a vision "
     "transformer: its features are a sequence of tokens with no feature map for Grad-CAM, and "
     "its position embeddings fix the input size; pick a convolutional model or swin, e.g. "
     "resnet18, resnet50, efficientnet_b0, efficientnet_b3"),
    (["model=inception_v3", "resize=32"], "carsweep train: error: `model` = 'inception_v3' "
     "cannot take 32 px inputs (torchvision: Calculated padded input size per channel: (1 x 1). "
     "Kernel size: (3 x 3). Kernel size can't be greater than actual input size); pick another "
     "`resize` or model"),
])
def test_a_model_carsweep_cannot_train_is_one_line_and_writes_no_run(
        overrides, message, tiny_data, tmp_path, capsys):
    sets = [arg for value in overrides for arg in ("--set", value)]
    assert main(["train", "--data", str(tiny_data.folder), "--out", str(tmp_path / "run"),
                 *sets]) == 2
    assert only_line(capsys.readouterr().err) == message
    assert not (tmp_path / "run").exists()


def test_a_sweep_space_with_a_model_that_cannot_take_a_size_is_refused():
    from carsweep.search.preflight.config_checks import check_models

    space = {"model": {"choice": ["resnet18", "maxvit_t"]}, "resize": {"choice": [224, 448]}}
    with pytest.raises(UserError, match=r"^space: `model` = 'maxvit_t' cannot take 448 px "
                                        r"inputs \(torchvision: .*\); pick another `resize`"):
        check_models(SweepConfig(space=space))
    check_models(SweepConfig(space={**space, "model": {"choice": ["resnet18", "convnext_tiny"]}}))


def test_a_sweep_space_pairing_snapmix_with_a_model_without_a_linear_head_is_refused():
    from carsweep.search.preflight.config_checks import check_models

    space = {"model": {"choice": ["resnet18", "mobilenet_v3_small"]}, "resize": 64,
             "augmentation": {"choice": ["flip", "flip+snapmix"]}}
    with pytest.raises(UserError, match=r"^space: `model` = 'mobilenet_v3_small' cannot run "
                                        r"snapmix: .*use cutmix"):
        check_models(SweepConfig(space=space))
    check_models(SweepConfig(space={**space, "augmentation": {"choice": ["flip", "flip+cutmix"]}}))


def test_an_export_from_before_architectures_and_temperatures_is_resnet18(tmp_path):
    config = TrialConfig(resize=32)
    model = build_model(3, "none")
    save_checkpoint(tmp_path / "ckpt", {"model": model.state_dict(), "epoch": 1}, config,
                    ["a", "b", "c"])
    payload = export_payload(find_source(tmp_path / "ckpt"))
    assert (payload["version"], payload["architecture"], payload["temperature"]) == (
        2, "resnet18", 1.0)
    old = {key: value for key, value in payload.items()
           if key not in ("architecture", "temperature", "calibration")} | {"version": 1}
    exported = from_payload(old, "old export")
    assert (exported.architecture, exported.temperature) == ("resnet18", 1.0)
    assert all(torch.equal(exported.model.state_dict()[k], v)
               for k, v in model.state_dict().items())
    hotter = from_payload(payload | {"temperature": 2.0}, "calibrated export")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        logits = hotter.model(hotter.normalize(images))
    np.testing.assert_allclose(hotter.probabilities(images).numpy(),
                               torch.softmax(logits / 2.0, dim=1).numpy(), atol=1e-6)
    with pytest.raises(UserError, match="export version 1 of vit_b_16; this carsweep reads"):
        from_payload(old | {"architecture": "vit_b_16"}, "export")


def test_each_model_is_normalised_as_its_weights_expect(tiny_data):
    # efficientnet_v2_l's ImageNet weights were trained on inputs scaled to [-1, 1].
    assert normalization("efficientnet_v2_l") == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert normalization("resnet18") == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    config = TrialConfig(model="efficientnet_v2_l", resize=RESIZE, batch_size=4,
                         num_workers=0, device="cpu", data_cache="off")
    loader = build_loader(tiny_data, "val", config, train=False)
    images, _ = next(iter(loader))
    torch.testing.assert_close(loader.to_model_input(images), images.float() / 127.5 - 1.0)


def test_the_meta_model_of_the_largest_regnet_needs_no_weight_init():
    """RegNet's widths are computed on the CPU, the rest built on the meta device: 644 M
    parameters that take no memory, and torchvision's builder left as it was after."""
    meta_model.cache_clear()
    model = meta_model("regnet_y_128gf", 7)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert sum(p.numel() for p in model.parameters()) > 600_000_000
    with torch.device("meta"), pytest.raises(NotImplementedError):
        torchvision.models.regnet_y_400mf()  # unpatched again: its .tolist() on meta raises


@pytest.mark.parametrize("name", ["mnasnet0_5", "resnet18"])
def test_a_retrained_model_survives_export_with_its_state_dict_versions(name, tmp_path):
    """MNASNet's loader refuses weights without the state dict's per-module versions, which
    a dict comprehension over state_dict() dropped: analyze's retrained model and every .pt
    export of an mnasnet failed to load ("version should be set to 1 or 2 instead of None")."""
    config = TrialConfig(model=name, resize=RESIZE)
    model = build_model(3, model=name)
    save_retrained_model(tmp_path / "analysis", model, config, ["a", "b", "c"])
    payload = export_payload(find_source(tmp_path / "analysis" / "model"))
    exported = from_payload(payload, "export")
    for key, tensor in model.state_dict().items():
        assert torch.equal(exported.model.state_dict()[key], tensor), key
