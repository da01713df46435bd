"""ResNet-18 with a new head; weight sources: none, a local file, imagenet (cached or not)."""

from __future__ import annotations

import time

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from carsweep.errors import UserError
from carsweep.trainable import build_model
from carsweep.trainable.model import imagenet_cache_path, set_backbone_frozen


def _imagenet_like_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(123)
    return resnet18(weights=None).state_dict()  # 1000-class head, like the real file


def test_head_predicts_the_dataset_classes():
    model = build_model(7, "none").eval()
    with torch.no_grad():
        logits = model(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 7)


def test_state_dict_file_loads_backbone_and_drops_a_head_of_another_size(tmp_path):
    state = _imagenet_like_state()
    path = tmp_path / "weights.pt"
    torch.save(state, path)
    model = build_model(5, str(path))
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.weight"], state["conv1.weight"])
    assert torch.equal(loaded["layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert loaded["fc.weight"].shape == (5, 512)


def test_a_checkpoint_file_is_a_weight_source(tmp_path):
    trained = build_model(3, "none")
    torch.save({"model": trained.state_dict(), "epoch": 2}, tmp_path / "checkpoint.pt")
    model = build_model(3, str(tmp_path / "checkpoint.pt"))
    assert torch.equal(model.state_dict()["fc.weight"], trained.state_dict()["fc.weight"])


class _Payload:  # a pickle that runs code when loaded must be refused
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _Payload()}, path)
    with pytest.raises(UserError, match="refused"):
        build_model(3, str(path))


def test_missing_weights_file_names_the_path_and_the_valid_sources(tmp_path):
    with pytest.raises(UserError, match=r"no-such\.pt.*imagenet, none"):
        build_model(3, str(tmp_path / "no-such.pt"))


def test_weights_of_another_architecture_are_rejected(tmp_path):
    torch.save({"linear.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not resnet18 weights"):
        build_model(3, str(tmp_path / "other.pt"))


def test_imagenet_uses_the_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = imagenet_cache_path()
    assert cached.parent == tmp_path / "hub" / "checkpoints"
    cached.parent.mkdir(parents=True)
    state = _imagenet_like_state()
    torch.save(state, cached)
    model = build_model(4, "imagenet")
    assert torch.equal(model.state_dict()["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])


def test_imagenet_neither_cached_nor_downloadable_fails_fast_and_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    weights = ResNet18_Weights.IMAGENET1K_V1
    # The discard port on loopback: nothing listens, so the connection is refused at once.
    monkeypatch.setattr(weights.value, "url", "http://127.0.0.1:9/resnet18-f37072fd.pth")
    started = time.perf_counter()
    with pytest.raises(UserError, match="not in the torch hub cache") as caught:
        build_model(4, "imagenet")
    assert time.perf_counter() - started < 30
    assert "127.0.0.1:9" in str(caught.value)
    assert not imagenet_cache_path().exists()


def test_an_already_loaded_state_dict_is_used_as_is():
    state = _imagenet_like_state()
    model = build_model(2, state)
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])


def test_freezing_leaves_only_the_head_trainable():
    model = build_model(3, "none").train()
    set_backbone_frozen(model, True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert not model.layer1.training
    assert model.fc.training
    set_backbone_frozen(model, False)
    assert all(p.requires_grad for p in model.parameters())
