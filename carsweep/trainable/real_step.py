"""The real step: one epoch of a trial's own loop over two batches of random images, then an
evaluation batch, as the pre-flight runs it on each GPU type before a sweep launches.

It is the product, not a copy: the device resolution and memory cap (`run_device`), the
precision and GradScaler, the model, optimizer and schedule (`build_run`), cudnn.benchmark
(`deterministic_mode`), the loader's augmentation split and device augmentation
(`random_image_loader`, as `build_loader` splits it), then `run_epoch` itself: the batch hook
(cam-occlusion), the batch mix (snapmix's maps), the optimizer step, the evaluation. Two
training batches, because optimizers allocate their state at the first step. The epoch it
runs is the first in which every hook is on (after freeze_backbone_epochs and at
cam_occlusion_start_epoch), with every mix and occlusion applied to every batch, so the step
is the trial's heaviest.

On a GPU it measures what the trial's process will hold: the caching allocator's peak reserve
(cuDNN's workspace is in it) and what lies outside the allocator after the step (the CUDA
context and loaded kernels, from `torch.cuda.mem_get_info`: on a GPU this process has to
itself, as the pre-flight gives it), against the trial's share of the GPU.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import torch

from carsweep.config.trial import TrialConfig
from carsweep.trainable.data import random_image_loader
from carsweep.trainable.device import cap_gpu_memory, resolve_device
from carsweep.trainable.loop import pick_precision
from carsweep.trainable.run import build_run, deterministic_mode, run_epoch

TRAIN_BATCHES = 2


@dataclass(frozen=True)
class StepMeasure:
    """What one real step ran on and held."""

    device: str  # "cuda:0" or "cpu"
    gpu_name: str | None
    precision: str
    seconds: float
    total_bytes: int | None = None  # the GPU's memory
    peak_bytes: int | None = None  # the allocator's peak reserve
    outside_bytes: int | None = None  # CUDA context and kernels, outside the allocator
    cap_bytes: int | None = None  # what the memory cap let the allocator have

    @property
    def needed_bytes(self) -> int | None:
        """What a trial's process needs on the GPU: its peak reserve and its context."""
        if self.peak_bytes is None or self.outside_bytes is None:
            return None
        return self.peak_bytes + self.outside_bytes


def heaviest_epoch(config: TrialConfig) -> int:
    """The first epoch with the backbone trainable and cam-occlusion on."""
    return max(config.freeze_backbone_epochs + 1, config.cam_occlusion_start_epoch, 1)


def worst_case(config: TrialConfig) -> TrialConfig:
    """`config` with every batch mixed and every image a hook may change changed."""
    return config.model_copy(update={"mix_prob": 1.0, "cam_occlusion_p": 1.0})


def real_step(config: TrialConfig, num_classes: int, gpu_share: float | None) -> StepMeasure:
    """Run the real step of `config` (for `num_classes` classes) here, capped to `gpu_share`
    of this process's GPU less the context measured after CUDA starts; raises what the trial
    would raise (an out-of-memory under the cap among them)."""
    config = worst_case(config)
    started = time.perf_counter()
    device = resolve_device(config.device, gpu_share)
    cap = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        free, total = torch.cuda.mem_get_info(device)  # the context exists from here on
        fraction = cap_gpu_memory(device, gpu_share, context_bytes=total - free)
        cap = int(fraction * total) if fraction is not None else None
    precision = pick_precision(config.precision, device)
    with deterministic_mode(config.deterministic, device):
        torch.manual_seed(config.seed)
        train_loader = random_image_loader(config, num_classes, train=True,
                                           batches=TRAIN_BATCHES, device=device)
        eval_loader = random_image_loader(config, num_classes, train=False, batches=1,
                                          device=device)
        run = build_run(config, num_classes, None, device, precision, len(train_loader))
        run_epoch(run, config, heaviest_epoch(config), train_loader, eval_loader)
    if device.type != "cuda":
        return StepMeasure(device=str(device), gpu_name=None, precision=precision,
                           seconds=time.perf_counter() - started)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    return StepMeasure(device=str(device), gpu_name=torch.cuda.get_device_name(device),
                       precision=precision, seconds=time.perf_counter() - started,
                       total_bytes=total, peak_bytes=torch.cuda.max_memory_reserved(device),
                       outside_bytes=max(0, total - free - reserved), cap_bytes=cap)


def step_failure(error: BaseException, gpu_share: float | None) -> str:
    """One line for what the real step raised: an out-of-memory under the cap names the cap
    and what was asked for; anything else its type and first line."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(error, torch.OutOfMemoryError):
        asked = re.search(r"Tried to allocate ([\d.]+ [KMGT]i?B)", text)
        what = f" (it tried to allocate {asked.group(1)} more)" if asked else ""
        cap = (f"under the cap of a {gpu_share:g} share of the GPU less its CUDA context"
               if gpu_share is not None and gpu_share < 1 else "on the GPU")
        return (f"CUDA out of memory {cap}{what}; raise resources.gpu or lower batch_size / "
                "resize")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__
