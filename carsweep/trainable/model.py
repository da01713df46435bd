"""ResNet-18 with a new head, and the three weight sources: imagenet, a local file, none.

`imagenet` uses torchvision's ResNet18_Weights: the file in the torch hub cache if it is
there, otherwise one download with a short socket timeout, so a machine without internet
gets a clear error instead of a hang. Under Ray the driver calls `load_weights` once and
ships the state dict to every trial (`train(..., initial_weights=...)`).
"""

from __future__ import annotations

import socket
import urllib.error
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from carsweep.errors import UserError
from carsweep.trainable.safe_load import load_tensors_only

IMAGENET = "imagenet"
NONE = "none"
HEAD = "fc"
DOWNLOAD_TIMEOUT_S = 20.0


def build_model(num_classes: int, weights: str | dict | None = NONE) -> nn.Module:
    """ResNet-18 whose last layer predicts `num_classes`, initialised from `weights`.

    `weights`: "none"/None (random init), "imagenet", a path to a state dict file, or an
    already-loaded state dict. A head of another size in the weights is dropped (new head).
    """
    if num_classes < 1:
        raise UserError(f"num_classes is {num_classes}, but must be >= 1")
    model = resnet18(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    state = weights if isinstance(weights, dict) else load_weights(weights)
    if state is not None:
        load_backbone(model, state, source=_describe(weights))
    return model


def load_weights(source: str | None) -> dict[str, torch.Tensor] | None:
    """The state dict a weight source names; None for "none"."""
    if source is None or source == NONE:
        return None
    if source == IMAGENET:
        return imagenet_state_dict()
    return state_dict_from_file(Path(source).expanduser())


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet-18 weights, from the hub cache or downloaded once."""
    weights = ResNet18_Weights.IMAGENET1K_V1
    cached = imagenet_cache_path()
    if cached.is_file():
        return load_tensors_only(cached, what="cached ImageNet weights")
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, TimeoutError, RuntimeError) as error:
        reason = getattr(error, "reason", None) or error
        raise UserError(
            f"weights 'imagenet': not in the torch hub cache ({cached}) and the download from "
            f"{weights.url} failed ({reason}); put the file there (download it once where there "
            "is internet), or use `weights: PATH` or `weights: none`"
        ) from None


def imagenet_cache_path() -> Path:
    """Where torch.hub keeps the ImageNet ResNet-18 file (honours TORCH_HOME)."""
    name = Path(urlparse(ResNet18_Weights.IMAGENET1K_V1.url).path).name
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


def load_backbone(model: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Load `state` into `model`; a head whose shape differs is left at its new init."""
    state = dict(state)
    own = model.state_dict()
    for key in (f"{HEAD}.weight", f"{HEAD}.bias"):
        if key in state and state[key].shape != own[key].shape:
            del state[key]
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(f"{HEAD}.")]
    if missing or result.unexpected_keys:
        problem = (f"missing {missing[:3]}" if missing
                   else f"unexpected {result.unexpected_keys[:3]}")
        raise UserError(f"weights {source}: not ResNet-18 weights ({problem} ...)")


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) everything but the head; frozen BatchNorm keeps its statistics."""
    for name, module in model.named_children():
        if name == HEAD:
            continue
        for parameter in module.parameters():
            parameter.requires_grad_(not frozen)
        if frozen:
            module.eval()


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
