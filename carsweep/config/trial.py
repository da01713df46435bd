"""One trial's hyperparameters: everything `trainable.train` needs besides the data."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Optimizer = Literal["sgd", "adam", "adamw", "rmsprop"]
Schedule = Literal["cosine", "step", "constant"]

# How `carsweep settings` groups TrialConfig's fields, in the order it lists them (a test keeps
# every field in exactly one group; one left out would be listed under "other").
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "training": ("model", "optimizer", "lr", "weight_decay", "momentum", "nesterov", "epochs",
                 "batch_size", "label_smoothing", "lr_schedule", "step_size", "step_gamma",
                 "warmup_epochs", "weights", "freeze_backbone_epochs"),
    "data": ("resize", "bbox_crop", "num_workers", "data_cache", "cache_dir"),
    "augmentation": ("augmentation", "augment_on", "cam_occlusion_p", "cam_occlusion_q",
                     "cam_occlusion_kind", "cam_occlusion_start_epoch", "mix_prob",
                     "mixup_alpha", "cutmix_alpha", "snapmix_alpha"),
    "run": ("device", "precision", "seed", "deterministic"),
}


class TrialConfig(BaseModel):
    """A training run's settings. Defaults suit a quick CPU run; YAML and `--set` override them.

    Names that come from a registry are checked by the registry that owns them, which lists
    valid names when one is unknown: augmentation presets by `carsweep.trainable.augment`,
    models by `carsweep.trainable.backbones` (torchvision's).
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        "resnet18", min_length=1, description="torchvision classification model, new head for "
        "the dataset: resnet18/34/50, efficientnet_b0..b3, convnext_tiny, mobilenet_v3_small/"
        "large, regnet_y_400mf.., swin_t... (torchvision.models.list_models() but vit_*)")
    optimizer: Optimizer = Field(
        "sgd", description="sgd (momentum, optional nesterov), adam, adamw or rmsprop")
    lr: float = Field(0.01, gt=0, le=10, description="peak learning rate, reached after warm-up")
    weight_decay: float = Field(1e-4, ge=0, lt=1, description="L2 penalty (decoupled for adamw)")
    momentum: float = Field(
        0.9, ge=0, lt=1, description="momentum for sgd and rmsprop; ignored by adam(w)")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd only)")
    epochs: int = Field(10, ge=1, le=10_000, description="training epochs")
    batch_size: int = Field(32, ge=1, le=65_536, description="images per optimizer step")
    resize: int = Field(
        256, ge=16, le=2048, description="square input size in pixels, any size the model "
        "takes (448 is the fine-grained literature's for cars)")
    augmentation: str = Field(
        "flip", min_length=1, description="preset name, or several joined with '+'")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    lr_schedule: Schedule = Field(
        "cosine", description="cosine decay, step decay, or constant after warm-up")
    step_size: int = Field(3, ge=1, description="epochs between decays for the step schedule")
    step_gamma: float = Field(0.1, gt=0, le=1, description="decay factor of the step schedule")
    warmup_epochs: int = Field(0, ge=0, description="epochs of linear warm-up from lr/10 to lr")
    seed: int = Field(0, ge=0, description="seeds every random choice of the run")
    weights: str = Field(
        "none", min_length=1, description="'imagenet', 'none', or a path to a state dict")
    freeze_backbone_epochs: int = Field(
        0, ge=0, description="train only the head for the first k epochs")
    bbox_crop: bool = Field(
        False, description="crop to the bounding box where the manifest has one")
    deterministic: bool = Field(
        False, description="deterministic algorithms (slower; for exact resume checks)")
    num_workers: int = Field(2, ge=0, le=256, description="DataLoader worker processes")
    data_cache: Literal["auto", "on", "off"] = Field(
        "auto", description="decoded train+val cache of `resize` in cache_dir: auto builds it "
        "once if the disk has room (else warns, decodes), on builds it or fails, off decodes")
    cache_dir: str | None = Field(
        None, min_length=1, description="folder for decoded caches on the node that runs the "
        "trial; default: $CARSWEEP_CACHE_DIR, else /tmp/carsweep-cache-$USER")
    augment_on: Literal["auto", "cpu", "device"] = Field(
        "auto", description="auto: with the model on a GPU every preset runs there, per "
        "sample; on a CPU per image in the loader's workers; cpu: always in workers; device: "
        "the batch ops on any device")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda when available")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast on GPUs with native bf16 (Ampere and newer), "
        "fp16 with loss scaling on older ones (T4, V100, P100), fp32 on the CPU")
    cam_occlusion_p: float = Field(
        0.5, gt=0, le=1, description="cam-occlusion: fraction of each batch that is occluded")
    cam_occlusion_q: float = Field(
        0.1, gt=0, lt=1, description="cam-occlusion: fraction of the image area hidden, where "
        "the model's Grad-CAM for the true class is highest")
    cam_occlusion_kind: Literal["blur", "erase"] = Field(
        "erase", description="cam-occlusion: erase to the mean colour, or a strong Gaussian blur")
    cam_occlusion_start_epoch: int = Field(
        2, ge=1, description="cam-occlusion: first epoch it runs (the map of an untrained model "
        "is noise); beyond `epochs` it never runs")
    mix_prob: float = Field(
        1.0, ge=0, le=1, description="mixup, cutmix, snapmix: probability that a training "
        "batch is mixed (the others train on their own labels)")
    mixup_alpha: float = Field(
        0.2, gt=0, le=100, description="mixup: Beta(alpha, alpha) of the blend weight "
        "(torchvision's reference recipe: 0.2)")
    cutmix_alpha: float = Field(
        1.0, gt=0, le=100, description="cutmix: Beta(alpha, alpha) of the kept area (1: uniform)")
    snapmix_alpha: float = Field(
        5.0, gt=0, le=100, description="snapmix: Beta(alpha, alpha) of each box's area (the "
        "paper's code: 5, boxes near half the image)")

    @field_validator("data_cache", mode="before")
    @classmethod
    def _on_off_as_written(cls, value: object) -> object:
        # YAML 1.1 reads a bare `on`/`off` (in a config or `--set data_cache=off`) as a bool.
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("cache_dir")
    @classmethod
    def _absolute_cache_dir(cls, cache_dir: str | None) -> str | None:
        if cache_dir is not None and not os.path.isabs(os.path.expanduser(cache_dir)):
            raise ValueError("a relative folder would be inside each trial's folder, on the "
                             "shared storage; give an absolute folder on the node's local "
                             "disk, e.g. /tmp/carsweep-cache-$USER")
        return cache_dir

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrialConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"warmup_epochs is {self.warmup_epochs}, but must be < epochs ({self.epochs})"
            )
        if self.freeze_backbone_epochs >= self.epochs:
            raise ValueError(
                f"freeze_backbone_epochs is {self.freeze_backbone_epochs}, "
                f"but must be < epochs ({self.epochs})"
            )
        return self
