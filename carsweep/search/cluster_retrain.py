"""analyze's retrains as Ray tasks on a cluster: where the GPUs are, all seeds at once.

`ClusterRetrain` is the `analysis.retrain.Retrain` strategy the CLI picks when the sweep ran on
a cluster (sweep.yaml's `cluster.address`) or `--address` is given. Each retrain is one Ray task
asking the sweep's per-trial CPUs and, for a GPU sweep, one whole GPU (`--retrain-gpus` sets
another share): a trial's 0.25 would pack `--seeds 3 --ensemble 2` onto one GPU, four
trainings time-slicing it while the cluster's other GPUs idle. So a retrain runs only on a node
with a GPU (the head node needs none), and every job of an analyze (`--seeds K`, the trials of
`--ensemble K`) is one task, all submitted together, spread over the cluster's GPUs.

A task is a streaming generator (`num_returns="streaming"`). It yields where it started, then
each progress line as training makes it (training runs in a thread of the task that feeds a
queue, because `train` reports through a callback), then what the driver needs: the trained
weights as CPU tensors, the test probabilities (and the flipped images' with `--tta`) and
labels, the history. The driver `ray.wait`s on all the generators, prints each line as it
arrives, and rebuilds each model from its weights for the Grad-CAM gallery and the export,
which run here on the CPU.

What travels: the dataset does not (each node reads it at the same path, as trials do, or
from its bucket: then the task first mirrors train+val+test into its node's mirror, its
progress lines shown like training's, carsweep/data/mirror.py); start
weights are loaded once here per (model, weights) pair the jobs need, by the sweep's own
`shipped_weights`, and each put in the object store once for every task that needs it. A task
is never retried (max_retries=0): a failure (node lost, NaN loss, out of memory) is one line
naming the retrain and its node, the other tasks are cancelled, and analyze writes nothing.
Each task gets a fresh worker process that exits after it (max_calls=1), so no GPU memory stays
held on the node.

This module imports analysis.retrain (the ray-free training and result types) sideways; the
analysis package never imports this one.
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import ray
import torch
from ray.exceptions import RayError

from carsweep.analysis.retrain import (
    TEST_SPLIT,
    TRAIN_SPLITS,
    Placement,
    Retrained,
    RetrainJob,
    say,
    train_and_test,
)
from carsweep.config.space import ParamSpec
from carsweep.config.sweep import Resources, SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import PreparedDataset, load_dataset
from carsweep.data.mirror import bring_here
from carsweep.errors import UserError
from carsweep.search.cluster import ray_session
from carsweep.search.preflight.capacity import check_cluster_resources
from carsweep.search.preflight.nodes import node_label
from carsweep.search.release import gpu_memory_released
from carsweep.search.sweep_inputs import shipped_weights
from carsweep.search.trial import readable_dataset, trial_config, weights_key
from carsweep.trainable.checkpoint import cpu_state_dict


@dataclass(frozen=True)
class Started:
    """The first thing a task yields: the node it runs on, and the GPUs Ray gave it."""

    node_id: str
    hostname: str
    gpus: float = 0.0


@dataclass
class Shipped:
    """The last thing a task yields: the retrain, with the model as CPU weights."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    probs: np.ndarray  # (N, C)
    labels: np.ndarray  # (N,)
    tta_probs: np.ndarray | None  # (N, C), with tta only


WHOLE_GPU = 1.0


def retrain_resources(sweep: SweepConfig, gpus: float | None = None) -> Resources:
    """What one retrain task asks: the sweep's CPUs per trial, and `gpus` (default: one whole
    GPU for a GPU sweep, none for a CPU one)."""
    if gpus is None:
        gpus = WHOLE_GPU if sweep.resources.gpu > 0 else 0.0
    try:
        return Resources(cpu=sweep.resources.cpu, gpu=gpus)
    except ValueError as error:
        raise UserError(f"--retrain-gpus {gpus:g}: {error.errors()[0]['msg']}") from None


class ClusterRetrain:
    """Retrain on the Ray cluster at `address`, each retrain a task of `retrain_resources`."""

    def __init__(self, sweep: SweepConfig, address: str, gpus: float | None = None) -> None:
        self.sweep, self.address = sweep, address
        self.resources = retrain_resources(sweep, gpus)

    def __call__(self, jobs: list[RetrainJob], dataset: PreparedDataset,
                 out: TextIO | None = None) -> list[Retrained]:
        resources = self.resources
        jobs = [RetrainJob(task_config(job.config, resources), job.name, job.tta)
                for job in jobs]
        weights = self._start_weights(jobs)
        with _joined(self.sweep, self.address, resources):
            say(f"[analyze] {len(jobs)} retrain task(s) on the Ray cluster at {self.address}, "
                f"{resources.cpu:g} CPU and {resources.gpu:g} GPU each; each starts when a "
                "node has them free", out)
            task = _retrain_task.options(num_cpus=resources.cpu, num_gpus=resources.gpu)
            # One copy of each start-weights state in the object store, for all its tasks.
            shared = {key: ray.put(state) for key, state in weights.items()}
            runs = {}
            for index, job in enumerate(jobs):
                run = _Run(job, index)
                ref = task.remote(job, str(dataset.folder), shared.get(weights_key(job.config)),
                                  resources.gpu)
                runs[ref] = run
            return _collect(runs, dataset.num_classes, out)

    def _start_weights(self, jobs: list[RetrainJob]) -> dict[tuple[str, str], dict]:
        """The sweep's loader, for the (model, weights) pairs of these jobs only: another
        choice of the space (imagenet on a driver without internet) must not stop them."""
        weights: dict[tuple[str, str], dict] = {}
        for model, source in sorted({weights_key(job.config) for job in jobs}):
            space = self.sweep.space | {"model": ParamSpec.model_validate(model),
                                        "weights": ParamSpec.model_validate(source)}
            weights |= shipped_weights(self.sweep.model_copy(update={"space": space}))
        return weights


def task_config(config: TrialConfig, resources: Resources) -> TrialConfig:
    """The config a task trains (its device resolved on the node with the task's GPU share,
    as a trial's); `cuda` without a GPU per task is refused here rather than on the node."""
    if config.device == "cuda" and resources.gpu == 0:
        raise UserError("`device` is 'cuda', but a retrain task gets no GPU (the sweep's "
                        "`resources.gpu` is 0); give --retrain-gpus 1 or --device auto, or "
                        "--local on a machine with a GPU")
    return trial_config(config.model_dump())


@contextmanager
def _joined(sweep: SweepConfig, address: str, resources: Resources) -> Iterator[None]:
    """Ray joined at `address` with the sweep's cluster settings, and one retrain's resources
    fit on some node; a cluster that is not there, or too small, is one line offering --local."""
    with ExitStack() as stack:
        try:
            stack.enter_context(ray_session(sweep.cluster.model_copy(update={"address": address})))
            check_cluster_resources(resources, asked_by="a retrain task (--retrain-gpus)")
        except UserError as error:
            raise UserError(f"{error}; or retrain on this machine with --local") from None
        yield


@dataclass
class _Run:
    """One submitted retrain, as the driver follows it."""

    job: RetrainJob
    index: int
    placement: Placement | None = None

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def where(self) -> str:
        return f"on {self.placement.describe()}" if self.placement else "before it started"


def _collect(runs: dict[Any, _Run], num_classes: int, out: TextIO | None) -> list[Retrained]:
    """Follow every task's stream until each has sent its result; lines printed as they come."""
    from carsweep.trainable import build_model

    done: dict[int, Retrained] = {}
    try:
        while len(done) < len(runs):
            streaming = [g for g, run in runs.items() if run.index not in done]
            ready, _ = ray.wait(streaming, num_returns=1)
            for generator in ready:
                run = runs[generator]
                item = _next_item(generator, run)
                if isinstance(item, Started):
                    run.placement = _placement(item)
                    say(f"[analyze] {run.name} {run.where}: started", out)
                elif isinstance(item, Shipped):
                    config = run.job.config
                    model = build_model(num_classes, item.state_dict, config.model).eval()
                    done[run.index] = Retrained(
                        config=config, model=model, history=item.history,
                        probs=item.probs, labels=item.labels, placement=run.placement,
                        tta_probs=item.tta_probs)
                else:
                    say(f"[analyze] {run.name} {run.where} {item}", out)
    finally:
        for generator, run in runs.items():
            if run.index not in done:
                ray.cancel(generator, force=True)
    return [done[k] for k in sorted(done)]


def _next_item(generator, run: _Run) -> Any:
    """What the task yielded next; its failure as one line naming the retrain and the node."""
    try:
        return ray.get(next(generator))
    except StopIteration:
        raise UserError(f"{run.name} {run.where} ended without a result") from None
    except RayError as error:
        raise UserError(f"{run.name} {run.where} failed: {failure_reason(error)}") from None


def failure_reason(error: RayError) -> str:
    """One line: the exception the task raised (NaN loss, a dataset the node cannot read), or
    what Ray says happened to it (node lost, worker killed for memory)."""
    cause = getattr(error, "cause", None)  # RayTaskError: the task's own exception
    if isinstance(cause, UserError):
        return str(cause)
    shown = cause if cause is not None else error
    lines = [line.strip() for line in str(shown).splitlines() if line.strip()]
    if not lines:
        return type(shown).__name__
    # Ray's own errors go on with how to debug Ray (`ray list nodes ...`); its first sentence
    # says what happened, and the message already names the node.
    first = lines[0] if cause is not None else lines[0].split(". ")[0].rstrip(".")
    return f"{type(shown).__name__}: {first}"


def _placement(started: Started) -> Placement:
    node = next((n for n in ray.nodes() if n["NodeID"] == started.node_id), None)
    label = node_label(node) if node is not None else started.node_id[:8]
    return Placement(ran_on="cluster", hostname=started.hostname, node=label, gpus=started.gpus,
                     node_id=started.node_id)


@ray.remote(num_returns="streaming", max_retries=0, max_calls=1)
def _retrain_task(job: RetrainJob, dataset: str, weights: dict | None, gpu_share: float):
    """On the node: where it runs, the progress lines as they come, then the result."""
    context = ray.get_runtime_context()
    yield Started(node_id=context.get_node_id(), hostname=socket.gethostname(),
                  gpus=context.get_assigned_resources().get("GPU", 0.0))
    lines: queue.Queue[str | None] = queue.Queue()
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=_train_into,
                              args=(job, dataset, weights, gpu_share, lines, outcome), daemon=True)
    worker.start()
    while (line := lines.get()) is not None:
        yield line
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    yield outcome["result"]


def _train_into(job: RetrainJob, dataset: str, weights: dict | None, gpu_share: float,
                lines: queue.Queue, outcome: dict[str, Any]) -> None:
    """The task's training thread: lines into `lines` (None at the end), result or error into
    `outcome`."""
    try:
        with gpu_memory_released():
            data = load_dataset(readable_dataset(dataset))
            # images in a bucket: train+val+test into this node's mirror, with progress
            bring_here(data, data.rows(*TRAIN_SPLITS, TEST_SPLIT), say=lines.put)
            tested = train_and_test(job.config, data, lines.put, initial_weights=weights,
                                    tta=job.tta, gpu_share=gpu_share)
            outcome["result"] = Shipped(
                state_dict=cpu_state_dict(tested.model),
                history=tested.history, probs=tested.probs, labels=tested.labels,
                tta_probs=tested.tta_probs)
    except BaseException as error:  # noqa: BLE001 - re-raised by the task, for the driver
        outcome["error"] = error
    finally:
        lines.put(None)
