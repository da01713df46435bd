"""Probe tasks run on the Ray nodes before a sweep: paths every node must share, a GPU's memory.

A trial can land on any node, and every node must see the driver's storage and dataset, not a
folder of the same name on its own disk: a node whose storage path is a local disk would write
checkpoints the driver never sees (`status`, `resume`, `analyze` and `export` read them there).
"Writable" is not "shared", so the storage path is proven shared by a round trip: the driver
writes a fresh token in a folder under it, every node must read that token and write its own
back, and the driver must then read each node's. The dataset is proven the same by the digest
of its manifest and class list, and the first image's bytes against the manifest's sha1.

One zero-CPU task is pinned to each alive node (NodeAffinitySchedulingStrategy, soft=False: it
runs there or not at all). The exchange folder is removed afterwards, and so is any folder the
driver had to create for it, so the check leaves nothing behind.

The GPU check runs on every GPU node at once, in a process holding a trial's GPU share (so it
sees CUDA as a trial would): what torch there can run (trainable/device.py `cuda_facts`),
judged on the driver. The GPU memory probe trains one step of a configuration (the space's
largest, per model) on a GPU node and reports the peak memory; it runs in a worker that exits
after it (max_calls=1), so it holds no CUDA memory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray.exceptions import GetTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from carsweep.data.manifest import CLASSES_FILE, INFO_FILE, MANIFEST_FILE
from carsweep.errors import last_line
from carsweep.search.validate import storage_problem

if TYPE_CHECKING:  # torch is imported in the probe's process only
    from carsweep.trainable.device import CudaFacts

PROBE_TIMEOUT_S = 60.0
GPU_CHECK_TIMEOUT_S = 60.0
GPU_PROBE_TIMEOUT_S = 180.0
GIB = 1024**3
EXCHANGE_PREFIX = ".carsweep-shared-"
DRIVER_TOKEN = "driver"


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
    """Prove on every alive node that storage and dataset are the driver's; a node whose
    probe never runs is a problem too."""
    expected = dataset_digest(dataset)
    with token_exchange(storage) as exchange:
        pending = {}
        for node in alive_nodes():
            pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
            task = _probe_paths.options(scheduling_strategy=pinned)
            pending[node["NodeID"]] = (node_label(node), task.remote(
                storage, dataset, expected, exchange, node["NodeID"]))
        reports = []
        for node_id, (label, ref) in pending.items():
            problems = _probe_result(ref)
            if exchange is not None and not problems:
                problems = [p for p in [token_returned(storage, exchange, node_id)] if p]
            reports.append(NodeReport(node=label, problems=tuple(problems)))
    return reports


def _probe_result(ref: ray.ObjectRef) -> list[str]:
    try:
        return ray.get(ref, timeout=PROBE_TIMEOUT_S)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        return [f"the probe task did not run within {PROBE_TIMEOUT_S:.0f} s"]


@ray.remote(num_cpus=0)
def _probe_paths(storage: str, dataset: str, expected_dataset: str | None,
                 exchange: Exchange | None, node_id: str) -> list[str]:
    problem = storage_problem(storage)
    if problem is None and exchange is not None:
        problem = answer_token(storage, exchange, node_id)
    dataset_found = dataset_problem(dataset) or same_dataset_problem(dataset, expected_dataset)
    return [p for p in (problem, dataset_found) if p]


# The storage round trip ---------------------------------------------------------------------

@dataclass(frozen=True)
class Exchange:
    """The folder under the storage path where the driver's and the nodes' tokens meet."""

    folder: str
    token: str


@contextmanager
def token_exchange(storage: str) -> Iterator[Exchange | None]:
    """A fresh exchange folder under `storage` holding the driver's token, removed afterwards
    with every folder made for it. None when the driver cannot write there: then each node's
    own probe says why, so every node is named."""
    target = Path(storage)
    missing = [p for p in (target, *target.parents) if not p.exists()]
    token = secrets.token_hex(16)
    folder = target / f"{EXCHANGE_PREFIX}{token}"
    try:
        folder.mkdir(parents=True)
        (folder / DRIVER_TOKEN).write_text(token)
    except OSError:
        _remove(folder, missing)
        yield None
        return
    try:
        yield Exchange(folder=str(folder), token=token)
    finally:
        _remove(folder, missing)


def _remove(folder: Path, made: list[Path]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    for parent in made:  # deepest first: only folders this check created, and only if empty
        try:
            parent.rmdir()
        except OSError:
            break


def answer_token(storage: str, exchange: Exchange, node_id: str) -> str | None:
    """On a node: read the driver's token and write this node's answer beside it."""
    folder = Path(exchange.folder)
    try:
        seen = (folder / DRIVER_TOKEN).read_text()
    except OSError:
        seen = None
    if seen != exchange.token:
        return (f"storage path {storage} is not shared with the driver: the token the driver "
                "wrote there is not visible on this node (a local disk or another mount at "
                "that path?); put the storage on a file system every node mounts")
    try:
        (folder / node_id).write_text(f"{exchange.token} {node_id}")
    except OSError as error:
        return f"storage path {storage} is not writable ({error.strerror} in {folder})"
    return None


def token_returned(storage: str, exchange: Exchange, node_id: str) -> str | None:
    """On the driver: the node's answer must be there, or the node wrote to another folder."""
    try:
        answer = (Path(exchange.folder) / node_id).read_text()
    except OSError:
        answer = None
    if answer != f"{exchange.token} {node_id}":
        return (f"storage path {storage} is not shared with the driver: what this node wrote "
                "there never reached the driver (a local disk or another mount at that "
                "path?); put the storage on a file system every node mounts")
    return None


# The dataset --------------------------------------------------------------------------------

def dataset_digest(dataset: str) -> str | None:
    """sha1 of the manifest and the class list, or None where they cannot be read."""
    digest = hashlib.sha1()
    try:
        for name in (MANIFEST_FILE, CLASSES_FILE):
            digest.update((Path(dataset) / name).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def same_dataset_problem(dataset: str, expected: str | None) -> str | None:
    """None if this node's copy of the dataset index is the driver's."""
    here = dataset_digest(dataset)
    if expected is None or here is None or here == expected:
        return None
    return (f"dataset {dataset} is not the driver's: its manifest or classes differ (digest "
            f"{here[:12]} here, {expected[:12]} on the driver); give every node the same "
            "prepared dataset at the same path")


def dataset_problem(dataset: str) -> str | None:
    """None if the manifest, the dataset description and the first image can be read, and
    the image has the bytes the manifest's sha1 says."""
    folder = Path(dataset)
    try:
        with (folder / MANIFEST_FILE).open(newline="") as handle:
            first = next(csv.DictReader(handle), None)
        info = json.loads((folder / INFO_FILE).read_text())
        if first is not None:
            root = Path(info["root"]) if Path(info["root"]).is_absolute() else folder / info["root"]
            image = root / first["path"]
            if first.get("sha1") and hashlib.sha1(image.read_bytes()).hexdigest() != first["sha1"]:
                return (f"dataset {dataset}: {image} has other bytes than its manifest says "
                        "(another copy of the images at that path?)")
    except OSError as error:
        where = error.filename or folder
        return f"dataset {dataset} is not readable ({error.strerror}: {where})"
    except (ValueError, KeyError) as error:
        return f"dataset {dataset} is not a prepared dataset here ({error})"
    return None


# The GPU check ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuProbe:
    """What the GPU check found on one node: its facts, or why there are none."""

    node: str
    facts: CudaFacts | None = None
    not_run: str | None = None  # no GPU was free to check with: a warning
    failed: str | None = None  # the probe itself raised: a failure


def probe_gpu_nodes(share: float) -> list[GpuProbe]:
    """For every alive node that offers GPUs, all at once: the CUDA facts of a process holding
    `share` of a GPU there, or why there are none."""
    pending = []
    for node in alive_nodes():
        if node["Resources"].get("GPU", 0) <= 0:
            continue
        pinned = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        task = _cuda_facts.options(scheduling_strategy=pinned, num_gpus=min(share, 1.0))
        pending.append((node_label(node), task.remote()))
    refs = [ref for _, ref in pending]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=GPU_CHECK_TIMEOUT_S)
    found = []
    for label, ref in pending:
        if ref not in ready:
            ray.cancel(ref, force=True)
            found.append(GpuProbe(label, not_run=f"no GPU there was free within "
                                                f"{GPU_CHECK_TIMEOUT_S:.0f} s to check"))
            continue
        try:
            found.append(GpuProbe(label, facts=ray.get(ref)))
        except ray.exceptions.RayError as error:
            found.append(GpuProbe(label, failed=f"the GPU check failed there: {last_line(error)}"))
    return found


# A fresh worker (max_calls=1): CUDA is initialised in this process only, as in a trial's.
@ray.remote(num_cpus=0, max_calls=1)
def _cuda_facts() -> CudaFacts:
    from carsweep.trainable.device import cuda_facts

    return cuda_facts()


@dataclass(frozen=True)
class GpuMeasurement:
    node: str
    gpu_name: str
    total_bytes: int
    peak_bytes: int


class NoCudaOnGpuNode(RuntimeError):
    """A node gives Ray GPUs, but torch on it sees no CUDA device (trials would use its CPU)."""


def measure_gpu_step(gpu_fraction: float, trial: dict, num_classes: int) -> GpuMeasurement:
    """Peak memory of one training step of `trial` on a GPU node Ray picks."""
    ref = _measure_gpu_step.options(num_gpus=min(gpu_fraction, 1.0)).remote(trial, num_classes)
    try:
        node_id, measured = ray.get(ref, timeout=GPU_PROBE_TIMEOUT_S)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        raise TimeoutError(
            f"no GPU was free within {GPU_PROBE_TIMEOUT_S:.0f} s to measure a training step"
        ) from None
    node = next((n for n in alive_nodes() if n["NodeID"] == node_id), None)
    label = node_label(node) if node is not None else node_id[:8]
    if measured is None:
        raise NoCudaOnGpuNode(
            f"node {label} gives Ray GPUs, but torch there sees no CUDA device, so trials on it "
            "would train on its CPU (check its NVIDIA driver and that its torch is a CUDA build)")
    return GpuMeasurement(label, *measured)


# A fresh worker that exits after the measurement (max_calls=1), so it holds no CUDA memory.
@ray.remote(num_cpus=0, max_calls=1)
def _measure_gpu_step(trial: dict, num_classes: int) -> tuple[str, tuple | None]:
    import torch

    node = ray.get_runtime_context().get_node_id()
    if not torch.cuda.is_available():
        return node, None
    return node, peak_step_memory(trial, num_classes)


def peak_step_memory(trial: dict, num_classes: int, steps: int = 2) -> tuple[str, int, int]:
    """(GPU name, total bytes, bytes the trial's process needs) over `steps` training steps of
    `trial` on random data: forward, backward and optimizer step as the epoch loop does them
    (the GPU's autocast, channels_last). Two steps, because optimizers allocate their state on
    the first. What a process needs is more than the tensors it allocates: the caching
    allocator's reserve (cuDNN's workspace included) and the CUDA context, which nvidia-smi
    sees for this process; where it cannot be read, a typical context size is added."""
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
        model = build_model(num_classes, None, config.model).to(
            device, memory_format=torch.channels_last)
        optimizer = build_optimizer(model, config)
        criterion = nn.CrossEntropyLoss()
        shape = (config.batch_size, 3, config.resize, config.resize)
        images = torch.randn(shape, device=device).to(memory_format=torch.channels_last)
        labels = torch.randint(0, num_classes, (config.batch_size,), device=device)
        for _ in range(steps):
            with autocast(device, config.precision):
                loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        torch.cuda.synchronize(device)
        properties = torch.cuda.get_device_properties(device)
        reserved = torch.cuda.max_memory_reserved(device)
        needed = max(process_gpu_bytes() or 0, reserved + CUDA_CONTEXT_BYTES)
        return properties.name, properties.total_memory, needed
    finally:
        del model, optimizer, images, labels
        torch.cuda.empty_cache()


# A CUDA context with cuDNN and cuBLAS loaded takes a few hundred MiB outside PyTorch's
# allocator (CUDA 12-13, measured on other machines at 300-600 MiB): the upper end is assumed
# where nvidia-smi cannot say what this process holds.
CUDA_CONTEXT_BYTES = 600 * 1024**2


def process_gpu_bytes() -> int | None:
    """GPU memory nvidia-smi counts for this process (context included), or None."""
    try:
        listing = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()) and used.strip().isdigit():
            return int(used.strip()) * 1024**2  # MiB
    return None  # another PID namespace (a container): nvidia-smi shows the host's PIDs
