"""What the pre-flight says of each node's decoded caches and image mirror, before anything is
built (caches.py builds them, right after): per node that can run a trial and per cache,
there or missing, bytes needed against bytes free (a cache's room leaves what the mirror still
has to fetch on the same disk), and the shared-storage warning. One task per node, pinned to
it, asking for no CPU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import ray
from ray.exceptions import RayError

from carsweep.config.sweep import SweepConfig
from carsweep.data.cache import CachePlan, cached_rows, format_bytes
from carsweep.data.manifest import load_dataset
from carsweep.data.mirror import MirrorPlan, mirror_plan
from carsweep.errors import UserError, last_line
from carsweep.search.preflight.caches import (
    DECODES_INSTEAD,
    CacheJob,
    cache_jobs,
    cache_line_name,
    data_cache_required,
    images_in_bucket,
    node_plans,
    space_values,
    trial_nodes,
    unbuildable_note,
)
from carsweep.search.preflight.nodes import PROBE_TIMEOUT_S, node_label, pinned_to
from carsweep.storage import is_bucket

if TYPE_CHECKING:  # run.py makes the Report this check fills
    from carsweep.search.preflight.report import Report


@dataclass(frozen=True)
class NodeCacheReport:
    """A pre-flight line: one cache on one node (label "400px"), a node ("" label) or the
    sweep (node ""); `verdict` ok, warn or fail."""

    node: str
    label: str
    verdict: str
    text: str
    subject: str = "cache"  # or "mirror": the image mirror's line

    @property
    def check(self) -> str:
        return cache_line_name(self.label, self.node, self.subject)


def plan_report(node: str, plan: CachePlan, required: bool) -> NodeCacheReport:
    """The pre-flight line of one cache plan on one node."""
    size = f"{plan.count:,} images, {format_bytes(plan.bytes_needed)}"
    if plan.state == "fresh":
        return NodeCacheReport(node, plan.label, "ok", f"there ({size} in {plan.folder})")
    if plan.has_room:
        return NodeCacheReport(node, plan.label, "ok", (
            f"missing, built before trials start ({size}; "
            f"{format_bytes(plan.bytes_free)} free in {plan.folder})"))
    if required:
        return NodeCacheReport(node, plan.label, "fail", plan.room_problem())
    return NodeCacheReport(node, plan.label, "warn", f"{plan.room_problem()}{DECODES_INSTEAD}")


def mirror_report(node: str, plan: MirrorPlan) -> NodeCacheReport:
    """The pre-flight line of the image mirror on one node: there, to fetch, or no room (a
    failure: trials there would have no images)."""
    if not plan.to_fetch:
        return NodeCacheReport(node, "", "ok", f"there ({plan.count:,} train+val images in "
                               f"{plan.folder})", subject="mirror")
    if not plan.has_room:
        return NodeCacheReport(node, "", "fail", plan.room_problem(), subject="mirror")
    return NodeCacheReport(node, "", "ok", (
        f"{plan.to_fetch:,} of {plan.count:,} train+val images to fetch before trials start "
        f"({format_bytes(plan.bytes_needed)}; {format_bytes(plan.bytes_free)} free in "
        f"{plan.folder})"), subject="mirror")


def node_cache_reports(config: SweepConfig) -> list[NodeCacheReport]:
    """The pre-flight's cache lines: per node that can run a trial and per cache, there or not,
    bytes needed vs free, the shared-storage warning; builds nothing."""
    note = unbuildable_note(config)
    reports = [NodeCacheReport("", "", "warn", note)] if note else []
    if space_values(config, "data_cache") == ["off"]:
        reports.append(NodeCacheReport("", "", "ok", "data_cache is off: trials decode the "
                                       "JPEGs every epoch"))
    jobs = cache_jobs(config)
    if not jobs and not images_in_bucket(config):
        return reports
    required = data_cache_required(config)
    pending = {node_label(node): _plan_on_node.options(scheduling_strategy=pinned_to(node))
               .remote(config, jobs, node_label(node), required) for node in trial_nodes(config)}
    for node, ref in pending.items():
        try:
            reports.extend(ray.get(ref, timeout=PROBE_TIMEOUT_S))
        except (RayError, TimeoutError) as error:
            ray.cancel(ref, force=True)
            reports.append(NodeCacheReport(node, "", "warn", f"not checked ({last_line(error)})"))
    return reports


@ray.remote(num_cpus=0)
def _plan_on_node(config: SweepConfig, jobs: list[CacheJob], node: str,
                  required: bool) -> list[NodeCacheReport]:
    try:
        dataset = load_dataset(config.dataset)
    except UserError as error:  # the node check above names it; the caches cannot be planned
        return [NodeCacheReport(node, "", "warn", f"not checked ({error})")]
    reports, mirror = [], None
    if is_bucket(dataset.root):
        try:
            mirror = mirror_plan(dataset, cached_rows(dataset))
        except UserError as error:  # the store refuses this node (its credentials, endpoint)
            return [NodeCacheReport(node, "", "fail", str(error), subject="mirror")]
        reports.append(mirror_report(node, mirror))
    for plan, warning in node_plans(config, dataset, jobs, mirror):
        if warning:
            reports.append(NodeCacheReport(node, "", "warn", warning))
        reports.append(plan_report(node, plan, required))
    return reports


def check_node_caches(config: SweepConfig, report: Report) -> None:
    """Per node and cache size: there, or missing with room to build it, or no room (a failure
    under data_cache: on, a warning under auto); the shared-storage warning. Builds nothing."""
    verdicts = {"ok": report.passed, "warn": report.warned, "fail": report.failed}
    for line in node_cache_reports(config):
        verdicts[line.verdict](line.check, line.text)
