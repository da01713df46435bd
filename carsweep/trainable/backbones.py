"""Backbones: torchvision's classification models by name, and what carsweep reads off each.

The registry is torchvision's own (`list_models(module=torchvision.models)`, `get_model`,
`get_model_weights`): the `model` setting takes its names. What carsweep needs to know about an
architecture is read from the model, not from a table per family, so a model torchvision adds
works unchanged:

    head      the modules whose weights have one row per class, found in a model built for
              an unusual class count (HEAD_PROBE_CLASSES): `fc` (ResNet, RegNet), `classifier.1`
              (EfficientNet), `classifier.3` (MobileNetV3), `classifier.2` (ConvNeXt), `head`
              (Swin), SqueezeNet's 1x1 conv. Start weights drop a head of another size; a frozen
              backbone is everything else.
    stages    the feature maps one forward pass makes, seen by hooks on the meta device (shapes
              only: no memory, no arithmetic): per map side, the last stage-level module (a child
              of the model, or of a Sequential child) whose output is a square (B, C, s, s) map,
              up to the global pooling or the head. Grad-CAM takes its layer from them: the
              deepest for cam-occlusion, the deepest still MIN_CAM_SIDE cells across for
              analysis (analysis/gradcam.py) — `layer4`, `features` (EfficientNet, ConvNeXt,
              MobileNet), `trunk_output` (RegNet), `permute` (Swin: its maps are channels-last
              until then).
    preprocessing  the mean/std and the sizes the ImageNet weights were trained at, from the
              weights' own transforms (`get_model_weights(name).DEFAULT`).

Written down by hand: googlenet and inception_v3 are built without their auxiliary classifiers
(a second output in training mode) and with `transform_input`, as torchvision's builder sets
when it loads their ImageNet weights; the vision transformers (vit_*) are refused, because their
features are a sequence of tokens with no map for Grad-CAM and their position embeddings fix
the input size. A model whose windows fix its input size (maxvit_t: 224 px) is refused at the
sizes it cannot take, by the same meta-device pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models

from carsweep.errors import UserError

DEFAULT_MODEL = "resnet18"
# A class count no backbone has as a channel count, so the head is the only module sized by it.
HEAD_PROBE_CLASSES = 997
BUILD_OPTIONS: dict[str, dict] = {
    "googlenet": {"aux_logits": False, "transform_input": True, "init_weights": False},
    "inception_v3": {"aux_logits": False, "transform_input": True, "init_weights": False},
}
# Keys of the ImageNet files that belong to the auxiliary classifiers built without.
AUXILIARY_KEYS: dict[str, tuple[str, ...]] = {
    "googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",),
}
REFUSED_FAMILIES = {
    "vit_": "a vision transformer: its features are a sequence of tokens with no feature map "
            "for Grad-CAM, and its position embeddings fix the input size",
}
SHOWN_MODELS = ("resnet18", "resnet50", "efficientnet_b0", "efficientnet_b3", "convnext_tiny",
                "mobilenet_v3_large", "regnet_y_800mf", "swin_t")
# Modules that end the feature maps (global pooling), or pass one on unchanged (dropout).
POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
PASS_THROUGH = (nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass(frozen=True)
class Stage:
    """A feature map of the forward pass: the module that outputs it, its side in cells and
    its channels."""

    name: str
    side: int
    channels: int = 0


@dataclass(frozen=True)
class Preprocessing:
    """What a model's ImageNet weights were trained with (their transforms' metadata)."""

    weights: str  # e.g. "ResNet50_Weights.IMAGENET1K_V2"
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int  # the square the weights saw in training and evaluation
    resize_size: int  # the shorter side before the centre crop


@cache
def model_names() -> tuple[str, ...]:
    """Every name `model` takes: torchvision's classification models but the refused ones."""
    return tuple(name for name in list_models(module=torchvision.models)
                 if _refusal(name) is None)


def check_model_name(name: str) -> None:
    """A UserError for a name torchvision does not have (some valid ones listed) or refuses."""
    reason = _refusal(name)
    if reason is not None:
        raise UserError(f"`model` = {name!r} is {reason}; pick a convolutional model or swin, "
                        f"e.g. {', '.join(SHOWN_MODELS[:4])}")
    if name not in model_names():
        close = difflib.get_close_matches(name, model_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(
            f"`model` = {name!r} is not a torchvision classification model{hint}; valid: "
            f"{', '.join(SHOWN_MODELS)} and the rest of "
            "torchvision.models.list_models(module=torchvision.models) but vit_*")


def construct(name: str, num_classes: int) -> nn.Module:
    """torchvision's `name` with random weights and a head for `num_classes`."""
    check_model_name(name)
    return get_model(name, weights=None, num_classes=num_classes, **BUILD_OPTIONS.get(name, {}))


@cache
def head_modules(name: str) -> tuple[str, ...]:
    """The modules whose weights have one row per class (usually one: `fc`, `classifier.1`)."""
    skeleton = meta_model(name)
    heads = tuple(module_name for module_name, module in skeleton.named_modules()
                  if isinstance(getattr(module, "weight", None), torch.Tensor)
                  and module.weight.shape[0] == HEAD_PROBE_CLASSES)
    if not heads:
        raise UserError(f"`model` = {name!r}: no layer of it has one output per class, so "
                        "carsweep cannot give it a new head")
    return heads


def in_head(name: str, module_name: str) -> bool:
    """Whether `module_name` (or a state-dict key) lies in `name`'s head."""
    return any(module_name == head or module_name.startswith(f"{head}.")
               for head in head_modules(name))


def auxiliary_keys(name: str) -> tuple[str, ...]:
    """Prefixes of weight-file keys for classifiers carsweep builds `name` without."""
    return AUXILIARY_KEYS.get(name, ())


@cache
def feature_stages(name: str, resize: int) -> tuple[Stage, ...]:
    """The square feature maps of `name` at `resize` px input, shallow to deep, one per side;
    a size the model cannot take is a UserError saying so."""
    skeleton = meta_model(name)
    seen: list[tuple[str, torch.Tensor | None]] = []
    hooks = [module.register_forward_hook(
        lambda _m, _i, output, module_name=module_name: seen.append(
            (module_name, output if isinstance(output, torch.Tensor) else None)))
        for module_name, module in _stage_level(skeleton)]
    try:
        skeleton(torch.empty(1, 3, resize, resize, device="meta"))
    except (RuntimeError, ValueError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"`model` = {name!r} cannot take {resize} px inputs (torchvision: "
                        f"{reason}); pick another `resize` or model") from None
    finally:
        for hook in hooks:
            hook.remove()
    modules = dict(skeleton.named_modules())
    last_by_side: dict[int, tuple[str, int]] = {}
    for module_name, output in seen:
        if in_head(name, module_name) or isinstance(modules[module_name], POOLING):
            break  # the maps end at the global pooling, or at the head where there is none
        if (output is not None and output.dim() == 4 and output.shape[-1] == output.shape[-2]
                and not isinstance(modules[module_name], PASS_THROUGH)):
            last_by_side[int(output.shape[-1])] = (module_name, int(output.shape[1]))
    if not last_by_side:
        raise UserError(f"`model` = {name!r} makes no square feature map at {resize} px, so "
                        "Grad-CAM has no layer to read; pick another model")
    return tuple(Stage(module_name, side, channels)
                 for side, (module_name, channels) in last_by_side.items())


def deepest_stage(name: str, resize: int) -> str:
    """The last feature map before the pooling: Grad-CAM's usual layer (ResNet's `layer4`)."""
    return feature_stages(name, resize)[-1].name


# Modules that may sit beside a linear head (in its Sequential) with the class score still a
# linear read of the pooled map, up to a per-image scale and offset.
LINEAR_READ = (nn.Dropout, nn.Flatten, nn.Identity, nn.LayerNorm, *POOLING)
CAM_MODELS = "resnet*, efficientnet_*, regnet_*, convnext_*, swin_*"


@dataclass(frozen=True)
class CamHead:
    """How a model's class scores read its last feature map linearly, which a class activation
    map (CAM, Zhou et al. 2016, https://arxiv.org/abs/1512.04150) needs: `layer` outputs the
    map, `head` has one weight row per class over its channels, `scale` names a LayerNorm
    between them whose per-channel scale multiplies those rows (ConvNeXt's; its centring and
    division by the pooled vector's spread are the same for every cell of one image, which a
    map normalised per image does not see)."""

    layer: str
    head: str
    scale: str | None = None

    def class_weights(self, model: nn.Module) -> torch.Tensor:
        """(C, K) float: row c weighs each channel of the map for class c."""
        weight = model.get_submodule(self.head).weight.detach().flatten(1).float()
        if self.scale is not None:
            weight = weight * model.get_submodule(self.scale).weight.detach().float()
        return weight


@cache
def cam_head(name: str, resize: int) -> CamHead:
    """`name`'s CamHead at `resize` px; a UserError where its head is not a linear read of the
    last map (an MLP head: mobilenet_v3_*, vgg*, alexnet, maxvit_t; a ReLU after the head's
    conv: squeezenet*)."""
    stage = feature_stages(name, resize)[-1]
    head = head_modules(name)[-1]
    skeleton = meta_model(name)
    parent, _, own = head.rpartition(".")
    container = skeleton.get_submodule(parent) if parent else None
    siblings = ([(child, module) for child, module in container.named_children() if child != own]
                if container is not None else [])
    others = [type(module).__name__ for _, module in siblings
              if not isinstance(module, LINEAR_READ)]
    width = skeleton.get_submodule(head).weight.flatten(1).shape[1]
    if others or width != stage.channels:
        reason = (f"its head {head} is one layer of a nonlinear block ({', '.join(others)})"
                  if others else
                  f"its head {head} reads {width} features, its last map {stage.name} has "
                  f"{stage.channels} channels")
        raise UserError(f"`model` = {name!r} cannot run snapmix: the class activation map that "
                        f"weighs its labels needs a linear head on the last feature map, and "
                        f"{reason}; use cutmix, or a model such as {CAM_MODELS}")
    norms = [child for child, module in siblings if isinstance(module, nn.LayerNorm)]
    return CamHead(stage.name, head, f"{parent}.{norms[-1]}" if norms else None)


def imagenet_weights(name: str):
    """torchvision's recommended ImageNet weights of `name` (its `DEFAULT` entry)."""
    check_model_name(name)
    return get_model_weights(name).DEFAULT


@cache
def preprocessing(name: str) -> Preprocessing:
    """The normalisation and sizes `name`'s ImageNet weights were trained with."""
    weights = imagenet_weights(name)
    transforms = weights.transforms()
    return Preprocessing(weights=str(weights), mean=tuple(transforms.mean),
                         std=tuple(transforms.std), crop_size=int(transforms.crop_size[0]),
                         resize_size=int(transforms.resize_size[0]))


def _refusal(name: str) -> str | None:
    return next((reason for prefix, reason in REFUSED_FAMILIES.items()
                 if name.startswith(prefix)), None)


@cache
def meta_model(name: str, num_classes: int = HEAD_PROBE_CLASSES) -> nn.Module:
    """`name` with a head for `num_classes` on the meta device, in eval mode: its structure
    and shapes without memory or weight init. RegNet computes its stage widths with tensors
    (`.tolist()` of a meta tensor raises), so that arithmetic alone runs on the CPU: building
    regnet_y_128gf on the CPU to move it took 20 s of weight init and 2.6 GB."""
    with _regnet_widths_on_cpu(), torch.device("meta"):
        model = construct(name, num_classes)
    return model.eval()


@contextmanager
def _regnet_widths_on_cpu() -> Iterator[None]:
    block_params = torchvision.models.regnet.BlockParams
    descriptor = block_params.__dict__["from_init_params"]
    widths = descriptor.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return widths(cls, *args, **kwargs)

    block_params.from_init_params = classmethod(on_cpu)
    try:
        yield
    finally:
        block_params.from_init_params = descriptor


def _stage_level(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's children, and the children of those that are Sequential (a ResNet stage's
    blocks, EfficientNet's `features.3`): the modules a stage can be."""
    modules = []
    for name, child in model.named_children():
        modules.append((name, child))
        if isinstance(child, nn.Sequential):
            modules += [(f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children()]
    return modules
