"""A torchvision backbone with a new head, and the three weight sources: imagenet, a file, none.

`model` names any of torchvision's classification models (trainable/backbones.py says what is
read off each: its head, its feature maps, its weights' preprocessing); the default is
ResNet-18. `imagenet` uses torchvision's recommended weights of that model
(`get_model_weights(name).DEFAULT`): the file in the torch hub cache if it is there, otherwise
one download with a short socket timeout, so a machine without internet gets a clear error
instead of a hang. Under Ray the driver calls `load_weights` once per (model, weights) pair and
ships the state dict to every trial (`train(..., initial_weights=...)`).

Each model's input is normalised with the mean and std its ImageNet weights were trained
with (backbones.preprocessing, read by augment.normalization; efficientnet_v2_l's 0.5, every
other model ImageNet's), whatever `weights` says, so a model keeps one normalisation from
training to export.
"""

from __future__ import annotations

import socket
import urllib.error
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from carsweep.errors import UserError
from carsweep.trainable.augment import preset_names
from carsweep.trainable.backbones import (
    DEFAULT_MODEL,
    auxiliary_keys,
    cam_head,
    check_model_name,
    construct,
    feature_stages,
    head_modules,
    imagenet_weights,
    in_head,
)
from carsweep.trainable.safe_load import load_tensors_only

IMAGENET = "imagenet"
NONE = "none"
SNAPMIX = "snapmix"  # the preset that needs a CAM of the model (mixing.py)
DOWNLOAD_TIMEOUT_S = 20.0


def build_model(num_classes: int, weights: str | dict | None = NONE,
                model: str = DEFAULT_MODEL) -> nn.Module:
    """torchvision's `model` whose head predicts `num_classes`, initialised from `weights`.

    `weights`: "none"/None (random init), "imagenet", a path to a state dict file, or an
    already-loaded state dict. A head of another size in the weights is dropped (new head).
    """
    if num_classes < 1:
        raise UserError(f"num_classes is {num_classes}, but must be >= 1")
    network = construct(model, num_classes)
    state = weights if isinstance(weights, dict) else load_weights(weights, model)
    if state is not None:
        load_backbone(network, state, source=_describe(weights), model=model)
    return network


def check_backbone(model: str, *, resize: int | None = None,
                   augmentation: str | None = None) -> None:
    """A UserError, before anything is built, for a model carsweep cannot train as asked: an
    unknown name, an input size it cannot take, snapmix without a linear head on its map."""
    check_model_name(model)
    if resize is not None:
        feature_stages(model, resize)
    if resize is not None and augmentation is not None and SNAPMIX in preset_names(augmentation):
        cam_head(model, resize)


def load_weights(source: str | None, model: str = DEFAULT_MODEL) -> dict[str, torch.Tensor] | None:
    """The state dict a weight source names for `model`; None for "none"."""
    if source is None or source == NONE:
        return None
    if source == IMAGENET:
        return imagenet_state_dict(model)
    return state_dict_from_file(Path(source).expanduser())


def imagenet_state_dict(model: str = DEFAULT_MODEL) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of `model`, from the hub cache or downloaded once."""
    weights = imagenet_weights(model)
    cached = imagenet_cache_path(model)
    if cached.is_file():
        return load_tensors_only(cached, what="cached ImageNet weights")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError, RuntimeError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(
            f"weights 'imagenet' of {model}: not in the torch hub cache ({cached}) and the "
            f"download from {weights.url} failed ({reason}); put the file there (download it "
            "once where there is internet), or use `weights: PATH` or `weights: none`"
        ) from None


def imagenet_cache_path(model: str = DEFAULT_MODEL) -> Path:
    """Where torch.hub keeps `model`'s ImageNet file (honours TORCH_HOME)."""
    name = Path(urlparse(imagenet_weights(model).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: a bare one, or our checkpoint/export (its "model" entry)."""
    if not path.is_file():
        raise UserError(
            f"weights {str(path)!r}: no such file; valid sources: imagenet, none, or a path "
            "to a state dict (.pt)"
        )
    loaded = load_tensors_only(path, what="weights file")
    for key in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise UserError(f"weights {str(path)!r}: not a state dict (a mapping of names to tensors)")
    return loaded


def load_backbone(network: nn.Module, state: dict[str, torch.Tensor], *, source: str,
                  model: str = DEFAULT_MODEL) -> None:
    """Load `state` into `network` (torchvision's `model`); a head whose shape differs is left
    at its new init, any other difference is a UserError naming the first key."""
    own = network.state_dict()
    state = {key: value for key, value in state.items()
             if not key.startswith(auxiliary_keys(model))
             and not (in_head(model, key) and key in own and value.shape != own[key].shape)}
    reshaped = [key for key, value in state.items()
                if key in own and value.shape != own[key].shape]
    if reshaped:
        key = reshaped[0]
        raise UserError(f"weights {source}: do not fit {model} ({key} is "
                        f"{list(state[key].shape)}, {model} has {list(own[key].shape)})")
    result = network.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not in_head(model, key)]
    if missing or result.unexpected_keys:
        problem = (f"missing {missing[:3]}" if missing
                   else f"unexpected {result.unexpected_keys[:3]}")
        raise UserError(f"weights {source}: not {model} weights ({problem} ...)")


def set_backbone_frozen(network: nn.Module, frozen: bool, model: str = DEFAULT_MODEL) -> None:
    """Freeze (or unfreeze) everything but the head; frozen modules go to eval, so BatchNorm
    keeps its statistics and dropout before the head is off while only the head trains."""
    heads = head_modules(model)
    for name, module in network.named_modules():
        if in_head(model, name):
            continue
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(not frozen)
        holds_head = name == "" or any(head.startswith(f"{name}.") for head in heads)
        if frozen and not holds_head:
            module.training = False


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for an extra pass inside a training step (cam-occlusion's Grad-CAM, snapmix's
    CAM); every module's own mode restored afterwards (frozen ones stay eval)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def _socket_timeout(seconds: float):
    """A default timeout for new sockets, so a download stuck behind a firewall fails fast."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _describe(weights: str | dict | None) -> str:
    return "(state dict)" if isinstance(weights, dict) else repr(weights)
