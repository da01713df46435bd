"""The pre-flight check: everything that would make a sweep fail late, found before it launches.

`carsweep sweep --check` prints the whole report and launches nothing; every real launch runs
the same checks first and stops at the first failure. The checks, in order:

    config      schema, space, augmentation names, the dataset is a prepared one (driver side)
    asha        grace period <= max_t, reduction factor > 1, the rungs that gives and how many
                trials are expected to reach each (printed)
    schedules   warnings (not failures) where trials reach an ASHA rung at different points
                of their learning-rate schedule, so the rung compares schedules, not settings
    resources   one trial's request fits on some node
    slots       per kind of node, trials at once by CPU and by GPU, and the GPUs a CPU request
                leaves idle (warned, with the resources that fill them); the trials at once
                against num_samples and TPE's startup: how many suggestions see a result
                (search/capacity.py)
    gpu         on every GPU node at once, in a process holding a trial's GPU share: torch
                there can use CUDA, its kernels cover the GPU, the driver is new enough; a
                node that would train on its CPU fails (device: cpu is a warning instead)
    dry step    carsweep.trainable.train for one epoch on a few images at a small size
                really reports the sweep's metric (and ASHA's time attribute, epoch)
    nodes       the storage path is shared with the driver (a token written by the driver is
                read by every alive node, which writes its own back for the driver to read)
                and every node's dataset is the driver's (the manifest's digest)
    caches      per node that can run a trial and per resize: the decoded cache is there, or
                the disk has room to build it (search/node_caches.py); a cache folder on
                shared storage is a warning (warn lines never stop a sweep)
    gpu memory  when the GPU check passed, per model of the space: one training step at the
                largest batch size x input size, measured on a GPU (the allocator's peak
                reserve and the CUDA context), fits in the GPU's memory / trials per GPU

Every failure is one line naming the node, path or value. A warning is one line too, saying
what to do; `--check` prints it as `warn`, a real launch prints it once and goes on. The
checks themselves, each filling the Report with its lines, are in search/preflight_checks.py;
this module runs them in order and prints the report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from carsweep.config.sweep import SweepConfig
from carsweep.errors import UserError
from carsweep.search.preflight_checks import (
    check_asha,
    check_dry_step,
    check_gpu_memory,
    check_gpus,
    check_node_caches,
    check_nodes,
    check_schedules,
    check_weights,
)


@dataclass
class Report:
    """Lines to show (each check's result) and failures (one line each)."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def passed(self, check: str, detail: str) -> None:
        self.lines.append(f"  ok    {check}: {detail}")

    def failed(self, check: str, problem: str) -> None:
        self.lines.append(f"  FAIL  {check}: {problem}")
        self.failures.append(f"{check}: {problem}")

    def warned(self, check: str, text: str) -> None:
        """A line worth reading that does not stop the sweep."""
        self.lines.append(f"  warn  {check}: {text}")
        self.warnings.append(f"{check}: {text}")

    def text(self) -> str:
        return "\n".join(self.lines)


def preflight(config: SweepConfig) -> Report:
    """The full check (starts or joins Ray for the node probes); launches no trial."""
    from carsweep.search.cluster import check_local_gpus, ray_session
    from carsweep.search.tuner import resolved

    report = Report([f"pre-flight check of sweep {config.name!r}: {config.num_samples} trials, "
                     f"{config.metric} ({config.mode})"])
    try:
        config = resolved(config)
        static_checks(config, report)
        check_local_gpus(config.resources, config.cluster)
    except UserError as error:
        report.failed("config", str(error))
    if not report.ok:
        return report
    with ray_session(config.cluster):
        cluster_checks(config, report)
    return report


def check_before_launch(config: SweepConfig) -> None:
    """For a real launch, inside its Ray session (config and ASHA were checked before Ray);
    its warnings are printed once, on stderr, when every check passed."""
    report = Report()
    check_schedules(config, report)
    cluster_checks(config, report)
    if not report.ok:
        more = len(report.failures) - 1
        suffix = f" (and {more} more; see `carsweep sweep --check`)" if more else ""
        raise UserError(f"pre-flight {report.failures[0]}{suffix}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)


def static_checks(config: SweepConfig, report: Report) -> None:
    """Schema and ASHA arithmetic: no Ray, no training."""
    from carsweep.search.validate import check_sweep

    try:
        check_sweep(config)
    except UserError as error:
        report.failed("config", str(error))
        return
    report.passed("config", f"{len(config.searched())} searched, {len(config.fixed())} fixed "
                  f"parameters; dataset {config.dataset}")
    check_weights(config, report)
    check_asha(config, report)
    check_schedules(config, report)


def cluster_checks(config: SweepConfig, report: Report) -> None:
    """The checks that need the connected Ray: resources, dry step, node probes, GPU memory."""
    from carsweep.search.capacity import check_capacity
    from carsweep.search.cluster import check_cluster_resources
    from carsweep.search.probes import alive_nodes, node_label

    try:
        check_cluster_resources(config.resources)
    except UserError as error:
        report.failed("resources", str(error))
        return
    report.passed("resources", f"{config.resources.cpu:g} CPU, {config.resources.gpu:g} GPU "
                  "per trial fit on a node")
    check_capacity(config, report, [(node_label(node), node["Resources"].get("CPU", 0),
                                     node["Resources"].get("GPU", 0)) for node in alive_nodes()])
    gpus_usable = check_gpus(config, report)
    check_dry_step(config, report)
    check_nodes(config, report)
    check_node_caches(config, report)
    if gpus_usable:
        check_gpu_memory(config, report)


def print_report(report: Report) -> int:
    """The report on stdout, each failure once more on stderr; the exit code (0 or 2)."""
    print(report.text())
    warned = f" ({len(report.warnings)} warning(s) above)" if report.warnings else ""
    print(f"pre-flight: all checks passed{warned}" if report.ok
          else f"pre-flight: {len(report.failures)} check(s) failed")
    for failure in report.failures:
        print(f"carsweep sweep --check: {failure}", file=sys.stderr)
    return 0 if report.ok else 2
