"""Probe tasks run on the Ray nodes before a sweep: paths every node must see, a GPU's memory.

A trial can land on any node, so the storage path must be writable and the dataset readable
from each of them, not only from the driver. One zero-CPU task is pinned to each alive node
(NodeAffinitySchedulingStrategy, soft=False: it runs there or not at all). The GPU probe
trains one step of the largest configuration in the space on a GPU node and reports the peak
memory; it runs in a worker that exits after it (max_calls=1), so it holds no CUDA memory.
"""

from __future__ import annotations

import csv
import json
import socket
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import GetTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from carsweep.search.validate import storage_problem

PROBE_TIMEOUT_S = 60.0
GPU_PROBE_TIMEOUT_S = 180.0
GIB = 1024**3


@dataclass(frozen=True)
class NodeReport:
    """What one node's probe found: its name and one line per problem."""

    node: str
    problems: tuple[str, ...]


def node_label(node: dict) -> str:
    """How a report names a node: address and short id (loopback nodes share the address)."""
    return f"{node['NodeManagerAddress']}/{node['NodeID'][:8]}"


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def probe_every_node(storage: str, dataset: str) -> list[NodeReport]:
    """Run the path probe on every alive node; a node whose probe never runs is a problem too."""
    pending = {}
    for node in alive_nodes():
        pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        task = _probe_paths.options(scheduling_strategy=pinned)
        pending[node_label(node)] = task.remote(storage, dataset)
    reports = []
    for label, ref in pending.items():
        try:
            problems = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except GetTimeoutError:
            ray.cancel(ref, force=True)
            problems = [f"the probe task did not run within {PROBE_TIMEOUT_S:.0f} s"]
        reports.append(NodeReport(node=label, problems=tuple(problems)))
    return reports


@ray.remote(num_cpus=0)
def _probe_paths(storage: str, dataset: str) -> list[str]:
    return [p for p in (storage_problem(storage), dataset_problem(dataset)) if p]


def dataset_problem(dataset: str) -> str | None:
    """None if the manifest, the dataset description and the first image can be read."""
    folder = Path(dataset)
    try:
        with (folder / "manifest.csv").open(newline="") as handle:
            first = next(csv.DictReader(handle), None)
        info = json.loads((folder / "dataset.json").read_text())
        if first is not None:
            root = Path(info["root"]) if Path(info["root"]).is_absolute() else folder / info["root"]
            with (root / first["path"]).open("rb") as image:
                image.read(1)
    except OSError as error:
        where = error.filename or folder
        return f"dataset {dataset} is not readable ({error.strerror}: {where})"
    except (ValueError, KeyError) as error:
        return f"dataset {dataset} is not a prepared dataset here ({error})"
    return None


@dataclass(frozen=True)
class GpuMeasurement:
    node: str
    gpu_name: str
    total_bytes: int
    peak_bytes: int


def measure_gpu_step(gpu_fraction: float, trial: dict, num_classes: int) -> GpuMeasurement:
    """Peak memory of one training step of `trial` on a GPU node Ray picks."""
    task = _measure_gpu_step.options(num_gpus=min(gpu_fraction, 1.0), max_calls=1)
    ref = task.remote(trial, num_classes)
    try:
        return ray.get(ref, timeout=GPU_PROBE_TIMEOUT_S)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise TimeoutError(
            f"no GPU was free within {GPU_PROBE_TIMEOUT_S:.0f} s to measure a training step"
        ) from None


@ray.remote(num_cpus=0)
def _measure_gpu_step(trial: dict, num_classes: int) -> GpuMeasurement:
    node = ray.get_runtime_context().get_node_id()
    name, total, peak = peak_step_memory(trial, num_classes)
    return GpuMeasurement(f"{socket.gethostname()}/{node[:8]}", name, total, peak)


def peak_step_memory(trial: dict, num_classes: int, steps: int = 2) -> tuple[str, int, int]:
    """(GPU name, total bytes, peak bytes allocated) over `steps` training steps of `trial` on
    random data: forward, backward and optimizer step as the epoch loop does them (bf16
    autocast, channels_last). Two steps, because optimizers allocate their state on the first."""
    import torch
    from torch import nn

    from carsweep.config.trial import TrialConfig
    from carsweep.trainable import build_model
    from carsweep.trainable.loop import autocast
    from carsweep.trainable.optim import build_optimizer

    config = TrialConfig.model_validate(trial)
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    model = optimizer = images = labels = None
    try:
        model = build_model(num_classes, None).to(device, memory_format=torch.channels_last)
        optimizer = build_optimizer(model, config)
        criterion = nn.CrossEntropyLoss()
        shape = (config.batch_size, 3, config.resize, config.resize)
        images = torch.randn(shape, device=device).to(memory_format=torch.channels_last)
        labels = torch.randint(0, num_classes, (config.batch_size,), device=device)
        for _ in range(steps):
            with autocast(device):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize(device)
        properties = torch.cuda.get_device_properties(device)
        return properties.name, properties.total_memory, torch.cuda.max_memory_allocated(device)
    finally:
        del model, optimizer, images, labels
        torch.cuda.empty_cache()
