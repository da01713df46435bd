"""Decoded caches (and a bucket's images) on every node before trials start.

Each node that can run a trial holds its own decoded caches on its local disk (carsweep/
data/cache.py): one per (resize, bbox_crop) a trial can get, train+val only. `run_sweep`
builds them right after the pre-flight, before the Tuner exists, so no trial waits on a
half-built cache and the driver's console shows the progress:

    cache 400px on node 10.0.0.2/1a2b3c4d: building 8,144 images in /tmp/carsweep-cache-alice
    cache 400px on node 10.0.0.2/1a2b3c4d: 3,264/8,144 images (40 %), 41 s
    cache 400px on node 10.0.0.2/1a2b3c4d: built, 8,144 images (3.9 GB) in 104 s

One task per node, pinned to it (NodeAffinitySchedulingStrategy, soft=False), asking for no
CPU (no trial runs yet) and decoding in as many processes as the node has CPUs. The task is a
Ray streaming generator: it yields an event at the start, at about every tenth, and at the
end of each build, and the driver multiplexes the nodes' generators with `ray.wait`.

A dataset whose images are in a bucket is mirrored first, in the same task: train+val into
the node's mirror (carsweep/data/mirror.py, beside the caches), which the caches are then
built from and trials decode from; its lines read `mirror on node ...`, and a missing object,
other bytes or a store that refuses the node is an error naming both. The pre-flight plans
the mirror's room with the caches' (cache_checks.py: what the pre-flight says of both): a
cache's room leaves what the mirror still has to fetch on the same disk. With no cache to
build (data_cache off, resize a range) the task still runs for the mirror.

A cache dir a trial resolves on its node ($CARSWEEP_CACHE_DIR there, or the default) is
resolved the same way by these tasks, on the node. Two loopback nodes of one machine share
its disk: the cache lock makes the second wait and find the first one's file.

A node with no room: under `data_cache: on` an error (nothing is launched), under `auto` one
warning line (its trials decode JPEGs). An unreadable image is an error naming the node. A
`resize` searched as a range cannot be prebuilt: each trial then builds its own size's cache
on first use, and the driver says so in one line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError

from carsweep.config.sweep import SweepConfig
from carsweep.data.cache import (
    CacheDiskError,
    CacheError,
    CachePlan,
    cache_plan,
    cached_rows,
    format_bytes,
    progress_text,
    resolve_cache_dir,
    same_disk,
    shared_storage_warning,
)
from carsweep.data.cache_build import build_steps
from carsweep.data.manifest import PreparedDataset, load_dataset
from carsweep.data.mirror import MirrorPlan, mirror_lines, mirror_plan
from carsweep.errors import UserError, last_line
from carsweep.search.preflight.nodes import alive_nodes, node_label, pinned_to
from carsweep.storage import is_bucket

if TYPE_CHECKING:  # run.py makes the Report this check fills
    pass

START_TIMEOUT_S = 120.0  # a node's task must report once within this; then builds take their time
PROGRESS_STEPS = 10  # a progress line at about every tenth of a build
DECODES_INSTEAD = "; trials there decode the JPEGs every epoch (data_cache: auto)"


@dataclass(frozen=True)
class CacheJob:
    """One cache a trial can read: its folder setting (resolved on the node), size and crop."""

    cache_dir: str | None
    size: int
    bbox_crop: bool


@dataclass(frozen=True)
class CacheEvent:
    """What a node's cache task says: `kind` is one of started (not shown), start, progress,
    built, there, mirror (a line of the image mirror's), no-room, warning, error; `label` names
    the cache ("400px"), "" the node; `subject` is "cache", or "mirror" for the image mirror."""

    kind: str
    label: str
    text: str
    subject: str = "cache"


# What the space asks for --------------------------------------------------------------------

def space_values(config: SweepConfig, name: str) -> list[Any] | None:
    """Every value a trial can get for `name` (fixed, choice, or the default); None for a range."""
    spec = config.space.get(name)
    if spec is not None and spec.kind not in ("fixed", "choice"):
        return None
    return config.listed_values(name)


def caches_to_build(config: SweepConfig) -> list[tuple[int, bool]]:
    """Every (resize, bbox_crop) a trial can get and read from a cache; empty when data_cache is
    off for every trial, or resize is a range (see `unbuildable_note`)."""
    if space_values(config, "data_cache") == ["off"]:
        return []
    sizes = space_values(config, "resize")
    if sizes is None:
        return []
    return list(product(sorted(set(sizes)), sorted(set(space_values(config, "bbox_crop")))))


def unbuildable_note(config: SweepConfig) -> str | None:
    """The line to print when some trials' caches cannot be built in advance."""
    if space_values(config, "data_cache") == ["off"] or space_values(config, "resize"):
        return None
    low, high = config.space["resize"].values
    return (f"resize is searched as a range [{low}, {high}]: its caches cannot be built in "
            "advance; each trial builds the cache of its own size on first use (once per node "
            "and size), nearly one per trial: search resize as a choice to share them")


def data_cache_required(config: SweepConfig) -> bool:
    """Whether some trial has `data_cache: on` (then no room is an error, not a warning)."""
    return "on" in (space_values(config, "data_cache") or [])


def images_in_bucket(config: SweepConfig) -> bool:
    """Whether the dataset's images are in a bucket: then every trial node mirrors train+val
    before its caches (carsweep/data/mirror.py)."""
    return is_bucket(load_dataset(config.dataset).root)


def cache_jobs(config: SweepConfig) -> list[CacheJob]:
    folders = space_values(config, "cache_dir") or [None]
    return [CacheJob(folder, size, crop)
            for folder in folders for size, crop in caches_to_build(config)]


def trial_nodes(config: SweepConfig) -> list[dict]:
    """The alive nodes whose resources can hold one trial, in the order of their labels."""
    need = config.resources
    fit = [node for node in alive_nodes()
           if node["Resources"].get("CPU", 0) >= need.cpu
           and node["Resources"].get("GPU", 0) >= need.gpu]
    return sorted(fit, key=node_label)


def shared_paths(config: SweepConfig, dataset: PreparedDataset) -> dict[str, str | Path]:
    """The folders every node of the sweep shares, as the warning names them (a bucket is
    no folder a cache could be inside)."""
    places = {"the experiment storage": config.storage_path, "the dataset folder": dataset.folder,
              "the image folder": dataset.root}
    return {what: place for what, place in places.items() if "://" not in str(place)}


# Building -----------------------------------------------------------------------------------

def prebuild_node_caches(config: SweepConfig, say: Callable[[str], None] = print) -> None:
    """Build every missing cache on every node that can run a trial, printing progress; a
    node's error (no room under `on`, an unreadable image) is a UserError naming it."""
    note = unbuildable_note(config)
    if note:
        say(f"cache: {note}")
    jobs = cache_jobs(config)
    if not jobs and not images_in_bucket(config):
        return
    required = data_cache_required(config)
    streams = {}
    for node in trial_nodes(config):
        workers = max(1, int(node["Resources"].get("CPU", 1)))
        task = _build_on_node.options(scheduling_strategy=pinned_to(node))
        streams[task.remote(config, jobs, workers, required)] = node_label(node)
    failures = _follow(streams, required, say)
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise UserError(f"{failures[0]}{more}")


def _line(label: str, node: str, text: str, subject: str = "cache") -> str:
    return f"{cache_line_name(label, node, subject)}: {text}"


def _follow(streams: dict, required: bool, say: Callable[[str], None]) -> list[str]:
    """Print every node's events as they come; returns the failures, one line each."""
    failures: list[str] = []
    pending, heard, started = list(streams), set(), time.monotonic()
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=5.0)
        for stream in ready:
            try:
                event = ray.get(next(stream))
            except StopIteration:
                continue
            except RayError as error:
                event = CacheEvent("error", "", f"the cache task failed: {last_line(error)}")
            else:
                heard.add(stream)
                pending.append(stream)
            line = _line(event.label, streams[stream], event.text, event.subject)
            if event.kind == "error" or (event.kind == "no-room" and required):
                failures.append(line)
            if event.kind != "started":
                say(line)
        if time.monotonic() - started > START_TIMEOUT_S:
            for stream in [s for s in pending if s not in heard]:
                ray.cancel(stream, force=True)
                pending.remove(stream)
                failures.append(_line("", streams[stream], "the cache task did not start "
                                      f"within {START_TIMEOUT_S:.0f} s"))
                say(failures[-1])
    return failures


@ray.remote(num_cpus=0)
def _build_on_node(config: SweepConfig, jobs: list[CacheJob], workers: int,
                   required: bool) -> Iterator[CacheEvent]:
    """On one node: each job's cache, built if missing, as a stream of events."""
    yield CacheEvent("started", "", "")
    try:
        dataset = load_dataset(config.dataset)
    except UserError as error:
        yield CacheEvent("error", "", str(error))
        return
    if is_bucket(dataset.root):
        try:
            yield from _mirror_on_node(dataset)
        except UserError as error:  # a missing object, a sha1 that differs, no credentials
            yield CacheEvent("error", "", str(error), subject="mirror")
            return
    for plan, warning in node_plans(config, dataset, jobs):
        if warning:
            yield CacheEvent("warning", "", f"warning: {warning}")
        try:
            yield from _build_one(dataset, plan, workers)
        except CacheDiskError as error:
            text = str(error) if required else f"warning: {error.problem}{DECODES_INSTEAD}"
            yield CacheEvent("no-room", plan.label, text)
        except CacheError as error:
            yield CacheEvent("error", plan.label, str(error))


def _mirror_on_node(dataset: PreparedDataset) -> Iterator[CacheEvent]:
    """The train+val images fetched into this node's mirror, which the caches are built from."""
    rows = cached_rows(dataset)
    plan = mirror_plan(dataset, rows)
    if not plan.has_room:
        raise UserError(plan.room_problem())
    for line in mirror_lines(dataset, rows):
        yield CacheEvent("mirror", "", line, subject="mirror")


def node_plans(config: SweepConfig, dataset: PreparedDataset, jobs: list[CacheJob],
           mirror: MirrorPlan | None = None) -> Iterator[tuple[CachePlan, str | None]]:
    """(plan, shared-storage warning or None) per job, the warning once per cache folder.
    Each plan's room leaves what the image `mirror` still has to fetch and the missing caches
    planned before it, where they are on its disk."""
    warned: set[Path] = set()
    taken = [(mirror.folder, mirror.bytes_needed)] if mirror is not None else []
    for job in jobs:
        folder = resolve_cache_dir(job.cache_dir)
        beside = sum(size for where, size in taken if same_disk(where, folder))
        plan = cache_plan(dataset, job.size, job.bbox_crop, job.cache_dir, beside=beside)
        if plan.state != "fresh":
            taken.append((plan.folder, plan.bytes_needed))
        warning = None
        if plan.folder not in warned:
            warned.add(plan.folder)
            warning = shared_storage_warning(plan.folder, shared_paths(config, dataset))
        yield plan, warning


def _build_one(dataset: PreparedDataset, plan: CachePlan,
               workers: int) -> Iterator[CacheEvent]:
    if plan.state == "fresh":
        yield CacheEvent("there", plan.label, f"there ({plan.count:,} images, "
                         f"{format_bytes(plan.bytes_needed)} in {plan.folder})")
        return
    started, shown, built = time.monotonic(), 0, False
    yield CacheEvent("start", plan.label, f"building {plan.count:,} images in {plan.folder}")
    for done, total in build_steps(dataset, plan, workers=workers):
        built = True
        step = done * PROGRESS_STEPS // max(1, total)
        if step > shown and done < total:
            shown = step
            yield CacheEvent("progress", plan.label, progress_text(done, total, started))
    how = "built" if built else "built meanwhile by another process on this disk"
    yield CacheEvent("built", plan.label, f"{how}, {plan.count:,} images "
                     f"({format_bytes(plan.bytes_needed)}) in {time.monotonic() - started:.0f} s")


def cache_line_name(label: str, node: str, subject: str = "cache") -> str:
    """"cache 400px on node 10.0.0.2/1a2b3c4d", "cache on node ...", "cache", or the same
    for the image mirror: "mirror on node ..."."""
    return " ".join([subject, *([label] if label else []),
                     *([f"on node {node}"] if node else [])])
