"""The pre-flight's GPU checks, run on the GPU nodes themselves.

`check_gpus`, cheap: on every GPU node at once, a process holding a trial's share of a GPU (so
it sees CUDA as a trial will) reports what torch there can run (trainable/device.py
`cuda_facts`), judged here: CUDA usable, kernels for the GPU, a driver new enough. A node that
would train on its CPU fails; `device: cpu` with GPUs reserved is a warning.

`check_real_step`: the real step (trainable/real_step.py: one epoch of the trial's own loop
over two batches of random images, then an evaluation batch) of the space's memory-worst
trials, once per GPU type (Ray's `accelerator_type`; "unknown" for GPUs Ray could not name,
logical ones included) and trial, all at once within REAL_STEP_BUDGET_S. Each runs in a fresh
process on a whole GPU of a node of that type, capped to the trial's share less its CUDA
context as a trial is, so what it measures is its own: an exception or an out-of-memory under
the cap is a failure naming the node, the GPU, the trial and the cause. The largest context
measured is what every trial's memory cap leaves out (`Launch.gpu_context_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray

from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError, last_line
from carsweep.search.preflight.capacity import trials_per_gpu
from carsweep.search.preflight.dry_step import first_trial_values
from carsweep.search.preflight.nodes import alive_nodes, node_label, pinned_to

if TYPE_CHECKING:  # torch is imported in the probes' processes only
    from carsweep.search.preflight.report import Report
    from carsweep.trainable.device import CudaFacts
    from carsweep.trainable.real_step import StepMeasure

GPU_CHECK_TIMEOUT_S = 60.0
REAL_STEP_BUDGET_S = 300.0
UNKNOWN_TYPE = "unknown"
GIB = 1024**3
OPTIMIZER_STATE = {"sgd": 1, "rmsprop": 2, "adam": 3, "adamw": 3}  # rank by state kept


# The GPU check ------------------------------------------------------------------------------

@dataclass(frozen=True)
class GpuProbe:
    """What the GPU check found on one node: its facts, or why there are none."""

    node: str
    facts: CudaFacts | None = None
    not_run: str | None = None  # no GPU was free to check with: a warning
    failed: str | None = None  # the probe itself raised: a failure


def gpu_nodes() -> list[dict]:
    return [node for node in alive_nodes() if node["Resources"].get("GPU", 0) > 0]


def probe_gpu_nodes(share: float) -> list[GpuProbe]:
    """For every alive node that offers GPUs, all at once: the CUDA facts of a process holding
    `share` of a GPU there, or why there are none."""
    pending = [(node_label(node), _cuda_facts.options(scheduling_strategy=pinned_to(node),
                                                      num_gpus=min(share, 1.0)).remote())
               for node in gpu_nodes()]
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


def check_gpus(config: SweepConfig, report: Report) -> None:
    """One failure per GPU node that would train on its CPU or cannot run its GPU; one line
    per kind of working GPU."""
    from carsweep.trainable.device import cuda_facts_problems

    gpu = config.resources.gpu
    if gpu == 0:
        return
    if set(config.listed_values("device")) == {"cpu"}:
        report.warned("gpu", f"device is cpu, so the {gpu:g} GPU each trial reserves goes "
                      "unused; set device: auto to train on the GPUs")
        return
    working: dict[str, list[str]] = {}
    for probe in probe_gpu_nodes(gpu):
        if probe.not_run:
            report.warned("gpu", f"node {probe.node}: {probe.not_run} (busy with other "
                          "work?); not checked")
            continue
        problems = [probe.failed] if probe.failed else cuda_facts_problems(probe.facts)
        for problem in problems:
            report.failed("gpu", f"node {probe.node}: {problem}")
        if not problems:
            working.setdefault(_described(probe.facts), []).append(probe.node)
    for what, labels in working.items():
        report.passed("gpu", f"{_which(labels)}: {what}")


def _described(facts: CudaFacts) -> str:
    driver = ".".join(map(str, facts.driver_cuda)) if facts.driver_cuda else "?"
    return (f"{facts.gpu_name} (sm_{facts.capability[0]}{facts.capability[1]}), torch "
            f"{facts.torch_version}, driver for CUDA {driver}")


def _which(labels: list[str]) -> str:
    return f"node {labels[0]}" if len(labels) == 1 else f"{len(labels)} nodes like {labels[0]}"


# The real step ------------------------------------------------------------------------------

def worst_trials(config: SweepConfig) -> list[dict[str, Any]]:
    """The space's memory-worst trials: per model and per augmentation (snapmix's maps and
    cam-occlusion's backward cost memory; so may a device preset), the largest batch size
    and input size and the optimizer that keeps the most state, the rest as the space's
    first trial; no start weights (they change no memory), no cache, no workers."""
    largest = {}
    for name in ("batch_size", "resize"):
        spec = config.space.get(name)
        largest[name] = spec.largest() if spec else TrialConfig.model_fields[name].default
    optimizer = max(config.listed_values("optimizer"), key=OPTIMIZER_STATE.__getitem__)
    trials = []
    for model in config.listed_values("model"):
        for augmentation in config.listed_values("augmentation"):
            chosen = {"model": model, "augmentation": augmentation, "optimizer": optimizer}
            trials.append(first_trial_values(config, chosen) | largest | {
                "weights": "none", "data_cache": "off", "num_workers": 0})
    return trials


def gpu_type(node: dict) -> str:
    """Ray's `accelerator_type` of a node (`H100`, `A100-80G`), or "unknown"."""
    prefix = "accelerator_type:"
    types = [key.removeprefix(prefix) for key in node["Resources"] if key.startswith(prefix)]
    return types[0] if types else UNKNOWN_TYPE


def one_node_per_type(nodes: list[dict]) -> dict[str, dict]:
    """The first of `nodes` of each GPU type."""
    chosen: dict[str, dict] = {}
    for node in nodes:
        chosen.setdefault(gpu_type(node), node)
    return chosen


def trial_text(trial: dict[str, Any]) -> str:
    return (f"{trial['model']} at batch_size={trial['batch_size']} x resize={trial['resize']}, "
            f"{trial['augmentation']}, {trial['optimizer']}")


def check_real_step(config: SweepConfig, report: Report) -> int | None:
    """The real step of every worst trial on every GPU type, all at once; the largest CUDA
    context measured (bytes), None where no GPU measured one."""
    from carsweep.data.manifest import load_dataset

    gpu = config.resources.gpu
    if gpu == 0:
        return None
    classes = load_dataset(config.dataset).num_classes
    pending = []
    for kind, node in one_node_per_type(gpu_nodes()).items():
        task = _real_step_task.options(scheduling_strategy=pinned_to(node),
                                       num_gpus=max(1.0, gpu))  # the GPU to itself
        for trial in worst_trials(config):
            where = f"{kind} GPU on node {node_label(node)}"
            pending.append((where, trial, task.remote(trial, classes, gpu)))
    refs = [ref for *_, ref in pending]
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=REAL_STEP_BUDGET_S)
    contexts = []
    for where, trial, ref in pending:
        if ref not in ready:
            ray.cancel(ref, force=True)
            report.warned("real step", f"{where}: {trial_text(trial)}: did not finish within "
                          f"{REAL_STEP_BUDGET_S:.0f} s (waiting for a whole GPU there, or a slow "
                          "step); not checked")
            continue
        try:
            measured, failure = ray.get(ref)
        except ray.exceptions.RayError as error:
            measured, failure = None, f"the step's process failed: {last_line(error)}"
        if report_step(report, where, trial, measured, failure, gpu) and measured.outside_bytes:
            contexts.append(measured.outside_bytes)
    return max(contexts, default=None)


def report_step(report: Report, where: str, trial: dict[str, Any],
                measured: StepMeasure | None, failure: str | None, gpu: float) -> bool:
    """One line for one real step: a failure (what it raised, or more memory than the
    trial's share), else its figures. True when it passed."""
    if failure is None:
        failure = memory_problem(measured, gpu)
    if failure is not None:
        report.failed("real step", f"{where}: {trial_text(trial)}: {failure}")
        return False
    report.passed("real step", f"{where}: {trial_text(trial)}, {measured.precision}: "
                  f"{step_figures(measured, gpu)}")
    return True


def memory_problem(measured: StepMeasure, gpu: float) -> str | None:
    """The step's process needs more than the trial's share of the GPU: say by how much."""
    if measured.needed_bytes is None or gpu >= 1:
        return None
    share = measured.total_bytes * gpu
    if measured.needed_bytes <= share:
        return None
    return (f"needs {measured.needed_bytes / GIB:.2f} GiB on {measured.gpu_name} "
            f"({_needed(measured)}), more than the {share / GIB:.2f} GiB each of "
            f"{trials_per_gpu(gpu)} trials per GPU gets with resources.gpu = {gpu:g}; raise "
            "resources.gpu or lower batch_size / resize")


def step_figures(measured: StepMeasure, gpu: float) -> str:
    if measured.needed_bytes is None:
        return f"trained and evaluated on {measured.device} in {measured.seconds:.1f} s"
    share = measured.total_bytes * min(gpu, 1.0)
    return (f"{measured.needed_bytes / GIB:.2f} GiB ({_needed(measured)}) of the "
            f"{share / GIB:.2f} GiB each of {trials_per_gpu(gpu)} trials per GPU gets on "
            f"{measured.gpu_name} ({measured.total_bytes / GIB:.0f} GiB); "
            f"{measured.seconds:.1f} s")


def _needed(measured: StepMeasure) -> str:
    return (f"{measured.peak_bytes / GIB:.2f} allocator peak + "
            f"{measured.outside_bytes / GIB:.2f} CUDA context")


# A fresh worker that exits after the step (max_calls=1): its memory cap, peak statistics and
# CUDA context are its own, and it holds no GPU memory afterwards.
@ray.remote(num_cpus=0, max_calls=1)
def _real_step_task(trial: dict, num_classes: int, gpu: float
                    ) -> tuple[StepMeasure | None, str | None]:
    from carsweep.trainable.real_step import real_step, step_failure

    try:
        return real_step(TrialConfig.model_validate(trial), num_classes, gpu), None
    except UserError as error:
        return None, str(error)
    except Exception as error:  # noqa: BLE001 - any crash of the trial's step is the finding
        return None, step_failure(error, gpu)
