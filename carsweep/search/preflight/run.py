"""The pre-flight's checks in the order they run (the package's docstring says what each
does): `preflight` for `carsweep sweep --check`, `check_before_launch` inside every launch's
Ray session, `print_report` for the console."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from carsweep.config.sweep import SweepConfig
from carsweep.errors import UserError
from carsweep.search.preflight.cache_checks import check_node_caches
from carsweep.search.preflight.capacity import (
    check_capacity,
    check_cluster_resources,
    check_local_gpus,
)
from carsweep.search.preflight.config_checks import (
    check_scheduler,
    check_schedules,
    check_sweep,
    check_weights,
)
from carsweep.search.preflight.dry_step import check_dry_step
from carsweep.search.preflight.gpus import check_gpus, check_real_step
from carsweep.search.preflight.nodes import alive_nodes, check_nodes, node_label
from carsweep.search.preflight.report import Report


@dataclass(frozen=True)
class Launch:
    """What the checks measured that the launch uses."""

    gpu_context_bytes: int | None = None  # every trial's memory cap leaves this out


def preflight(config: SweepConfig) -> Report:
    """The full check (starts or joins Ray for the node probes); launches no trial."""
    from carsweep.search.cluster import ray_session
    from carsweep.search.sweep_inputs import resolved

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


def check_before_ray(config: SweepConfig) -> None:
    """What a launch checks before Ray starts (config, space, dataset, the GPUs a local Ray
    would need); a UserError for the first problem."""
    check_sweep(config)
    check_local_gpus(config.resources, config.cluster)


def check_before_launch(config: SweepConfig) -> Launch:
    """For a real launch, inside its Ray session (config and ASHA were checked before Ray);
    its warnings are printed once, on stderr, when every check passed."""
    report = Report()
    check_schedules(config, report)
    launch = cluster_checks(config, report)
    if not report.ok:
        more = len(report.failures) - 1
        suffix = f" (and {more} more; see `carsweep sweep --check`)" if more else ""
        raise UserError(f"pre-flight {report.failures[0]}{suffix}")
    for warning in report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return launch


def static_checks(config: SweepConfig, report: Report) -> None:
    """Schema and ASHA arithmetic: no Ray, no training."""
    try:
        check_sweep(config)
    except UserError as error:
        report.failed("config", str(error))
        return
    report.passed("config", f"{len(config.searched())} searched, {len(config.fixed())} fixed "
                  f"parameters; dataset {config.dataset}")
    check_weights(config, report)
    check_scheduler(config, report)
    check_schedules(config, report)


def cluster_checks(config: SweepConfig, report: Report) -> Launch:
    """The checks that need the connected Ray, cheapest first: resources and slots, every
    GPU node, the dry step, every node's paths and caches, then the real step on each GPU type
    (only when everything before passed: it holds whole GPUs for up to minutes)."""
    try:
        check_cluster_resources(config.resources)
    except UserError as error:
        report.failed("resources", str(error))
        return Launch()
    report.passed("resources", f"{config.resources.cpu:g} CPU, {config.resources.gpu:g} GPU "
                  "per trial fit on a node")
    check_capacity(config, report, [(node_label(node), node["Resources"].get("CPU", 0),
                                     node["Resources"].get("GPU", 0)) for node in alive_nodes()])
    check_gpus(config, report)
    check_dry_step(config, report)
    check_nodes(config, report)
    check_node_caches(config, report)
    if not report.ok:
        return Launch()
    return Launch(gpu_context_bytes=check_real_step(config, report))


def print_report(report: Report) -> int:
    """The report on stdout, each failure once more on stderr; the exit code (0 or 2)."""
    print(report.text())
    warned = f" ({len(report.warnings)} warning(s) above)" if report.warnings else ""
    print(f"pre-flight: all checks passed{warned}" if report.ok
          else f"pre-flight: {len(report.failures)} check(s) failed")
    for failure in report.failures:
        print(f"carsweep sweep --check: {failure}", file=sys.stderr)
    return 0 if report.ok else 2
