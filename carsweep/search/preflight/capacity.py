"""How many trials the cluster runs at once, whether that leaves GPUs idle, and what it leaves
the searcher to learn from.

A trial slot needs `resources.cpu` CPUs and `resources.gpu` of a GPU; Ray packs fractional
shares per device (four trials of 0.25 on each GPU). A node runs the fewer of its slots by CPU
and by GPU, so a CPU request larger than the node's CPUs per GPU slot leaves GPUs idle:
{cpu: 4, gpu: 0.25} fills 6 of a 96-CPU node's 8 GPUs. A GPU trial reading the decoded cache
needs about one core (no loader workers when its augmentation runs on the GPU), plus its
workers when it decodes JPEGs or augments on the CPU (`trial_cpus`).

What the searcher learns: the first C suggestions (C trials at once) are drawn before any
result, and Optuna's TPE draws at random until `n_startup_trials` trials have ended (it counts
COMPLETE and PRUNED ones). Trial k (from 0) starts when k - C + 1 trials have ended, so its
suggestion is informed when k >= C + S - 1: `informed_suggestions`. With C >= num_samples
the sweep is random search, whatever the sampler. Under PASHA a trial ends only at max_t (the
others pause, RUNNING in the study, until the sweep's end), so TPE there is random search in
all but name (docs/schedulers.md has the replay's figures): the check says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import ray

from carsweep.config.sweep import ClusterConfig, Resources, SweepConfig
from carsweep.errors import UserError

EPS = 1e-9


@dataclass(frozen=True)
class NodeSlots:
    """One node's trial slots: by its CPUs, by its GPUs (None for CPU-only trials)."""

    cpus: float
    gpus: int
    by_cpu: int
    by_gpu: int | None
    per_gpu: int | None  # trials sharing one GPU (fractional requests), else None
    gpu: float = 0  # one trial's request

    @property
    def slots(self) -> int:
        return self.by_cpu if self.by_gpu is None else min(self.by_cpu, self.by_gpu)

    @property
    def idle_gpus(self) -> int:
        if self.by_gpu is None:
            return 0
        used = (math.ceil(self.slots / self.per_gpu) if self.per_gpu
                else self.slots * math.ceil(self.gpu))
        return max(0, self.gpus - used)


def trials_per_gpu(gpu: float) -> int:
    return max(1, math.floor(1 / gpu + EPS)) if gpu < 1 else 1


def node_slots(cpus: float, gpus: float, resources: Resources) -> NodeSlots:
    by_cpu = math.floor(cpus / resources.cpu + EPS)
    if resources.gpu == 0:
        return NodeSlots(cpus, int(gpus), by_cpu, None, None)
    whole = math.floor(gpus + EPS)
    if resources.gpu < 1:
        per_gpu = trials_per_gpu(resources.gpu)
        return NodeSlots(cpus, whole, by_cpu, whole * per_gpu, per_gpu, resources.gpu)
    return NodeSlots(cpus, whole, by_cpu, math.floor(whole / resources.gpu + EPS), None,
                     resources.gpu)


def filling_resources(node: NodeSlots, resources: Resources, need: float) -> str | None:
    """The `resources` that keep every GPU of `node` busy with trials that get the `need`
    CPUs they use: fewer CPUs each, else fewer trials per GPU; None when none does."""
    if not node.by_gpu:
        return None
    cpu = math.floor(node.cpus / node.by_gpu * 2 + EPS) / 2  # in halves of a CPU
    if cpu >= need:
        return f"{{cpu: {cpu:g}, gpu: {resources.gpu:g}}}"
    per_gpu = math.floor(node.cpus / (node.gpus * need) + EPS)
    if per_gpu >= 1:
        return f"{{cpu: {need:g}, gpu: {1 / per_gpu:.4g}}}"
    return None


def trial_cpus(config: SweepConfig) -> int:
    """The cores a trial of the space keeps busy: its own process, plus its loader's workers
    where some trial decodes JPEGs (data_cache off) or augments on the CPU. On a GPU every
    preset runs on the device and a cached read needs no worker (cached_data.py)."""
    workers = max(config.listed_values("num_workers"))
    decodes = "off" in config.listed_values("data_cache")
    cpu_side = "cpu" in config.listed_values("augment_on") or config.resources.gpu == 0
    return 1 + (workers if decodes or cpu_side else 0)


def informed_suggestions(num_samples: int, at_once: int, startup: int) -> int:
    """How many of `num_samples` suggestions TPE draws having seen results (module doc)."""
    return max(0, num_samples - (at_once + max(startup, 1) - 1))


def check_capacity(config: SweepConfig, report, nodes: list[tuple[str, float, float]]) -> None:
    """Lines on `report` (preflight.Report) for `nodes` as (label, CPUs, GPUs): per kind of
    node its slots by CPU and by GPU and the GPUs left idle, with the resources that fill
    them; then the trials at once against num_samples and the searcher's startup."""
    resources, need = config.resources, trial_cpus(config)
    if resources.gpu > 0 and resources.cpu < need:
        report.warned("slots", f"a trial of this space uses {need} CPUs (its process and "
                      f"{need - 1} loader workers), but resources.cpu is {resources.cpu:g}: "
                      f"trials on a node will slow each other; set resources.cpu: {need}")
    kinds: dict[tuple[float, float], list[str]] = {}
    for label, cpus, gpus in nodes:
        if resources.gpu == 0 or gpus >= min(resources.gpu, 1):
            kinds.setdefault((cpus, gpus), []).append(label)
    total = 0
    for (cpus, gpus), labels in kinds.items():
        slots = node_slots(cpus, gpus, resources)
        total += slots.slots * len(labels)
        _node_kind_line(report, labels, slots, resources, need)
    _concurrency_line(config, report, total)


def _node_kind_line(report, labels: list[str], node: NodeSlots, resources: Resources,
                    need: int) -> None:
    which = (f"node {labels[0]}" if len(labels) == 1
             else f"{len(labels)} nodes like {labels[0]}")
    shape = f"{node.gpus} GPU, {node.cpus:g} CPU" if node.by_gpu is not None \
        else f"{node.cpus:g} CPU"
    if node.by_gpu is None:
        report.passed("slots", f"{which} ({shape}): {_trials(node.slots)} at once "
                      f"({resources.cpu:g} CPU each)")
        return
    per = f", {node.per_gpu} per GPU" if node.per_gpu else ""
    counts = f"{node.by_gpu} by GPU{per}, {node.by_cpu} by CPU ({resources.cpu:g} each)"
    if not node.idle_gpus:
        report.passed("slots", f"{which} ({shape}): {_trials(node.slots)} at once ({counts})")
        return
    fill = filling_resources(node, resources, need)
    remedy = (f"resources {fill} fill them" if fill
              else "this node has too few CPUs for its GPUs")
    report.warned("slots", f"{which} ({shape}): {_trials(node.slots)} at once ({counts}), so "
                  f"{node.idle_gpus} of {node.gpus} GPUs sit idle; {remedy}")


def _concurrency_line(config: SweepConfig, report, cluster_slots: int) -> None:
    cap, samples = config.max_concurrent_trials, config.num_samples
    limit = min(cluster_slots, cap or cluster_slots)  # trials at once, given enough of them
    at_once = min(limit, samples)
    where = (f"{_trials(at_once)} at once ({cluster_slots} slots on the cluster"
             + (f", max_concurrent_trials {cap})" if cap else ")"))
    if cap and cap < cluster_slots:
        report.warned("concurrency", f"max_concurrent_trials {cap} leaves {cluster_slots - cap} "
                      f"of the cluster's {cluster_slots} slots idle; raise it with num_samples "
                      "(below) to use them")
    if config.searcher.algorithm != "tpe":
        report.passed("concurrency", f"{where}; {samples} trials of random search")
        return
    startup = config.searcher.n_startup_trials
    if config.scheduler == "pasha":
        # A paused trial is RUNNING in the study, and TPE counts finished ones (module doc).
        report.warned("concurrency", f"{where}: under pasha a trial ends only at max_t "
                      f"({config.max_t} epochs; the others pause until the sweep ends), so TPE "
                      f"draws at random until {startup} trials have reached it, which few do; "
                      "set searcher.algorithm: random to say so, or use scheduler asha for "
                      "TPE to steer (docs/schedulers.md)")
        return
    informed = informed_suggestions(samples, at_once, startup)
    explained = (f"the first {at_once} start before any result, and TPE draws at random until "
                 f"{startup} have ended")
    if samples <= startup:  # every suggestion random by the config's own choice
        report.passed("concurrency", f"{where}; all {samples} trials are TPE's random start "
                      f"(n_startup_trials {startup})")
    elif at_once >= samples:
        report.warned("concurrency", f"{where}: all {samples} trials start before any result, "
                      "so TPE learns nothing and this is random search; "
                      f"{_remedy(config, limit)}")
    elif informed * 2 < samples:
        report.warned("concurrency", f"{where}: only {informed} of {samples} suggestions see a "
                      f"result ({explained}); {_remedy(config, limit)}")
    else:
        report.passed("concurrency", f"{where}: {informed} of {samples} suggestions see "
                      f"results ({explained})")


def _trials(count: int) -> str:
    return f"{count} trial" if count == 1 else f"{count} trials"


def _remedy(config: SweepConfig, at_once: int) -> str:
    """What makes at least half the suggestions informed at this concurrency, or the cap
    that does it at this num_samples (which leaves slots idle)."""
    startup = config.searcher.n_startup_trials
    samples_needed = 2 * (at_once + max(startup, 1) - 1)
    cap = config.num_samples // 2 - max(startup, 1) + 1
    lower = (f", or lower max_concurrent_trials to {cap} (leaves slots idle)" if cap >= 1
             else "")
    return f"raise num_samples to >= {samples_needed}{lower}"


# Requests that fit ---------------------------------------------------------------------------

def check_local_gpus(resources: Resources, cluster: ClusterConfig) -> None:
    """For a local Ray, refuse GPU trials this machine cannot hold, before starting Ray."""
    if cluster.address is not None or resources.gpu == 0:
        return
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available < math.ceil(resources.gpu):
        has = f"has {available} CUDA GPU(s)" if available else "has no CUDA GPU"
        raise UserError(
            f"`resources.gpu` is {resources.gpu:g} per trial, but this machine {has}; "
            "lower resources.gpu or join a GPU cluster with --address"
        )


def check_cluster_resources(resources: Resources, asked_by: str | None = None) -> None:
    """One trial's request (or `asked_by`'s, e.g. a retrain task's) must fit on some node of
    the connected Ray."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    total_gpus = sum(node.get("GPU", 0) for node in nodes)
    if resources.gpu > 0 and total_gpus == 0:
        if asked_by:
            raise UserError(f"{asked_by} asks {resources.gpu:g} GPU, but the Ray cluster has "
                            "no GPUs; add GPU nodes")
        raise UserError(f"`resources.gpu` is {resources.gpu}, but the Ray cluster has no GPUs; "
                        "set resources.gpu=0 or add GPU nodes")
    fits = [n for n in nodes
            if n.get("CPU", 0) >= resources.cpu and n.get("GPU", 0) >= resources.gpu]
    if not fits:
        most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        who = asked_by or "`resources`"
        per = "" if asked_by else " per trial"
        raise UserError(
            f"{who} asks {resources.cpu:g} CPU and {resources.gpu:g} GPU{per}, but no Ray "
            f"node has that much (largest: {most_cpus:g} CPU, {most_gpus:g} GPU)")
