"""The nodes check: storage every node must share with the driver, and the driver's dataset.

A trial can land on any node, and every node must see the driver's storage and dataset, not a
folder of the same name on its own disk: a node whose storage path is a local disk would write
checkpoints the driver never sees (`status`, `resume`, `analyze` and `export` read them there).
"Writable" is not "shared", so the storage path is proven shared by a round trip: the driver
writes a fresh token in a folder under it, every node must read that token and write its own
back, and the driver must then read each node's. The dataset is proven the same by the digest
of its manifest and class list, and the first image's bytes against the manifest's sha1.
Where some trial decodes the images itself (data_cache off, or resize searched as a range),
every train+val image's bytes are checked against its sha1 on every node: an image cut short
or deleted after `prepare` is one line naming it, not a failure in every trial. (A cache built
before launch decodes every image and names a broken one itself.) A dataset in a bucket is
proven readable with each node's own credentials; images in a bucket are checked by each
node's mirror, every one against its sha1 (search/preflight/caches.py).

One zero-CPU task is pinned to each alive node (NodeAffinitySchedulingStrategy, soft=False: it
runs there or not at all). The exchange folder is removed afterwards, and so is any folder the
driver had to create for it, so the check leaves nothing behind.
"""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray.exceptions import GetTimeoutError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from carsweep.data.manifest import CLASSES_FILE, INFO_FILE, MANIFEST_FILE, load_dataset
from carsweep.errors import UserError
from carsweep.search.preflight.config_checks import storage_problem
from carsweep.storage import BucketPath, StorageError, is_bucket, location

if TYPE_CHECKING:  # run.py makes the Report this check fills
    from carsweep.config.sweep import SweepConfig
    from carsweep.search.preflight.report import Report

PROBE_TIMEOUT_S = 60.0
HASH_BYTES_PER_S = 20e6  # the slowest network file system a probe that hashes waits for
HASH_THREADS = 8  # hashlib releases the GIL: reads and hashes overlap
SPLITS_READ = ("train", "val")  # what trials read; the test split is analyze's alone
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


def pinned_to(node: dict) -> NodeAffinitySchedulingStrategy:
    """A task's scheduling on that node and no other (a probe of a node must run there)."""
    return NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)


def probe_every_node(storage: str, dataset: str, *,
                     check_images: bool = False) -> list[NodeReport]:
    """Prove on every alive node that storage and dataset are the driver's (with
    `check_images`, every train+val image's bytes too); a node whose probe never runs is a
    problem too."""
    expected = dataset_digest(dataset)
    timeout = PROBE_TIMEOUT_S + (images_bytes(dataset) / HASH_BYTES_PER_S if check_images
                                 else 0.0)
    with token_exchange(storage) as exchange:
        pending = {}
        for node in alive_nodes():
            task = _probe_paths.options(scheduling_strategy=pinned_to(node))
            pending[node["NodeID"]] = (node_label(node), task.remote(
                storage, dataset, expected, exchange, node["NodeID"], check_images))
        reports = []
        for node_id, (label, ref) in pending.items():
            problems = _probe_result(ref, timeout)
            if exchange is not None and not problems:
                problems = [p for p in [token_returned(storage, exchange, node_id)] if p]
            reports.append(NodeReport(node=label, problems=tuple(problems)))
    return reports


def _probe_result(ref: ray.ObjectRef, timeout: float) -> list[str]:
    try:
        return ray.get(ref, timeout=timeout)
    except GetTimeoutError:
        ray.cancel(ref, force=True)
        return [f"the probe task did not run within {timeout:.0f} s"]


@ray.remote(num_cpus=0)
def _probe_paths(storage: str, dataset: str, expected_dataset: str | None,
                 exchange: Exchange | None, node_id: str, check_images: bool) -> list[str]:
    problem = storage_problem(storage)
    if problem is None and exchange is not None:
        problem = answer_token(storage, exchange, node_id)
    dataset_found = dataset_problem(dataset) or same_dataset_problem(dataset, expected_dataset)
    if dataset_found is None and check_images:
        dataset_found = changed_images_problem(dataset)
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
    target = location(storage)  # in a bucket: objects under the URI, each node's credentials
    missing = [] if is_bucket(target) else [p for p in (target, *target.parents)
                                            if not p.exists()]
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


def _remove(folder: Path | BucketPath, made: list[Path]) -> None:
    if is_bucket(folder):
        folder.remove_tree()
        return
    shutil.rmtree(folder, ignore_errors=True)
    for parent in made:  # deepest first: only folders this check created, and only if empty
        try:
            parent.rmdir()
        except OSError:
            break


def answer_token(storage: str, exchange: Exchange, node_id: str) -> str | None:
    """On a node: read the driver's token and write this node's answer beside it."""
    folder = location(exchange.folder)
    try:
        seen = (folder / DRIVER_TOKEN).read_text()
    except StorageError as error:  # a bucket this node cannot reach: its credentials, endpoint
        return f"storage path {storage} cannot be read on this node ({error})"
    except OSError:
        seen = None
    if seen != exchange.token:
        return (f"storage path {storage} is not shared with the driver: the token the driver "
                "wrote there is not visible on this node (a local disk or another mount at "
                "that path?); put the storage on a file system every node mounts")
    try:
        (folder / node_id).write_text(f"{exchange.token} {node_id}")
    except OSError as error:
        return f"storage path {storage} is not writable ({error.strerror or error} in {folder})"
    return None


def token_returned(storage: str, exchange: Exchange, node_id: str) -> str | None:
    """On the driver: the node's answer must be there, or the node wrote to another folder."""
    try:
        answer = (location(exchange.folder) / node_id).read_text()
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
            digest.update((location(dataset) / name).read_bytes())
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
    the image has the bytes the manifest's sha1 says (a dataset in a bucket: if it loads
    with this node's credentials; its images in a bucket: the mirror checks each one)."""
    if is_bucket(location(dataset)):
        try:
            load_dataset(dataset)
        except UserError as error:  # a StorageError names the object and what the store said
            return f"dataset {dataset} cannot be read on this node: {error}"
        return None
    folder = Path(dataset)
    try:
        with (folder / MANIFEST_FILE).open(newline="") as handle:
            first = next(csv.DictReader(handle), None)
        info = json.loads((folder / INFO_FILE).read_text())
        if first is not None and "://" not in info["root"]:
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


def trials_decode_images(config: SweepConfig) -> bool:
    """Whether some trial may decode the images itself: data_cache off, or resize searched as
    a range (each trial builds its own size's cache on first use)."""
    # caches.py imports this module: its helpers are imported where they are used.
    from carsweep.search.preflight.caches import caches_to_build, space_values

    return not caches_to_build(config) or "off" in (space_values(config, "data_cache") or [])


def images_bytes(dataset: str) -> int:
    """The bytes of the train+val images on this machine (what a node that hashes reads)."""
    prepared = load_dataset(dataset)
    if is_bucket(prepared.root):  # no node hashes them: the mirror does, with its own time
        return 0
    return sum(_size(prepared.image_path(path)) for path in prepared.rows(*SPLITS_READ)["path"])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def changed_images_problem(dataset: str) -> str | None:
    """None if every train+val image has the bytes `prepare` read (its manifest's sha1)."""
    try:
        prepared = load_dataset(dataset)
    except UserError as error:
        return str(error)
    if is_bucket(prepared.root):  # each node's mirror checks every image against its sha1
        return None
    rows = prepared.rows(*SPLITS_READ)
    rows = rows[rows["sha1"].astype(str).str.len() == 40]  # a manifest without sha1s: nothing
    with ThreadPoolExecutor(HASH_THREADS) as pool:
        found = list(pool.map(_image_changed, map(prepared.image_path, rows["path"]),
                              rows["sha1"]))
    changed = [said for said in found if said]
    if not changed:
        return None
    return (f"dataset {dataset}: {len(changed)} train+val image(s) changed since `carsweep "
            f"prepare` read them ({changed[0]}); trials decode them: restore them, or prepare "
            "the dataset again")


def _image_changed(path: Path, sha1: str) -> str | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{path} is missing"
    except OSError as error:
        return f"{path} is not readable ({error.strerror})"
    return None if hashlib.sha1(data).hexdigest() == sha1 else f"{path} has other bytes"


def check_nodes(config: SweepConfig, report: Report) -> None:
    check_images = trials_decode_images(config)
    nodes = probe_every_node(config.storage_path, config.dataset, check_images=check_images)
    bad = [node for node in nodes if node.problems]
    for node in bad:
        for problem in node.problems:
            report.failed("node", f"node {node.node}: {problem}")
    if not bad:
        images = ", every train+val image as prepared (sha1)" if check_images else ""
        report.passed("nodes", f"storage {config.storage_path} shared (a token round trip) "
                      f"and dataset {config.dataset} the same (manifest digest{images}) on "
                      f"all {len(nodes)} node(s)")
