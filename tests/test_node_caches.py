"""Decoded caches built on every node before trials start (carsweep/search/preflight/caches.py).

The pure parts (which caches a space needs, the pre-flight's verdicts) run without Ray; the
rest on a two-node loopback Ray cluster (1 CPU each). Both nodes share this machine's disk, as
two loopback nodes do, so the cache lock must make them build each cache once between them.
"""

from __future__ import annotations

import re

import pytest
from trainable_data import make_tiny_dataset

from carsweep.config.sweep import SweepConfig
from carsweep.data.cache import cache_plan
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.search.preflight.cache_checks import node_cache_reports, plan_report
from carsweep.search.preflight.caches import (
    cache_line_name,
    caches_to_build,
    prebuild_node_caches,
    unbuildable_note,
)

SPACE = {"epochs": 1, "resize": 32, "weights": "none", "num_workers": 0, "device": "cpu"}


def sweep(dataset=None, storage="/tmp/unused-results", **space) -> SweepConfig:
    return SweepConfig.model_validate({
        "dataset": str(dataset) if dataset else None, "storage_path": str(storage),
        "resources": {"cpu": 1, "gpu": 0}, "space": {**SPACE, **space}})


@pytest.mark.parametrize(("space", "expected"), [
    ({}, [(32, False)]),
    ({"resize": {"choice": [400, 256, 400]}, "bbox_crop": {"choice": [True, False]}},
     [(256, False), (256, True), (400, False), (400, True)]),
    ({"resize": {"int": [256, 400]}}, []),
    ({"data_cache": "off"}, []),
    ({"data_cache": False}, []),  # YAML's bare `off`, read as the trial will read it
    ({"data_cache": {"choice": ["off", "on"]}, "bbox_crop": True}, [(32, True)]),
])
def test_caches_to_build_are_every_size_and_crop_a_trial_can_get(space, expected):
    assert caches_to_build(sweep(**space)) == expected


def test_a_resize_range_is_said_in_one_line_and_nothing_else_is():
    note = unbuildable_note(sweep(resize={"int": [256, 400]}))
    assert note.startswith("resize is searched as a range [256, 400]: its caches cannot be "
                           "built in advance; each trial builds the cache of its own size")
    assert unbuildable_note(sweep(resize={"choice": [256, 400]})) is None
    assert unbuildable_note(sweep(resize={"int": [256, 400]}, data_cache="off")) is None


def test_pre_flight_verdicts_per_plan(tmp_path):
    dataset = load_dataset(make_tiny_dataset(tmp_path / "data",
                                             per_split={"train": 4, "val": 2}))
    folder = tmp_path / "caches"

    def plan(free):
        return cache_plan(dataset, 32, cache_dir=folder, disk=lambda _: (free, 10**12))

    roomy = plan_report("n/1", plan(10**11), required=False)
    assert (roomy.verdict, roomy.check) == ("ok", "cache 32px on node n/1")
    assert roomy.text == (f"missing, built before trials start (24 images, 73.9 kB; 100.0 GB "
                          f"free in {folder})")
    short = plan(10**6)
    assert plan_report("n/1", short, required=True).verdict == "fail"
    warned = plan_report("n/1", short, required=False)
    assert warned.verdict == "warn"
    assert warned.text == (f"{short.room_problem()}; trials there decode the JPEGs every epoch "
                           "(data_cache: auto)")
    assert cache_line_name("", "") == "cache"
    assert cache_line_name("", "n/1") == "cache on node n/1"


# On a two-node loopback Ray cluster ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_nodes(two_node_ray) -> list[str]:
    """The labels of conftest.py's two loopback nodes, sorted."""
    import ray

    return sorted(f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}"
                  for n in ray.nodes() if n.get("Alive"))


def _by_node(lines: list[str], nodes: list[str]) -> dict[str, list[str]]:
    return {node: [line.split(": ", 1)[1] for line in lines
                   if line.startswith(f"cache 32px on node {node}: ")] for node in nodes}


@pytest.mark.slow
def test_prebuild_builds_each_cache_once_with_progress_then_finds_it(
        two_nodes, prepared_dataset, tmp_path):
    folder = tmp_path / "caches"
    config = sweep(prepared_dataset, tmp_path / "results", cache_dir=str(folder))
    before = node_cache_reports(config)
    assert [(r.node, r.verdict) for r in before] == [(node, "ok") for node in two_nodes]
    assert all(r.text.startswith("missing, built before trials start (96 images, 295.0 kB; ")
               for r in before)
    assert not folder.exists()  # the pre-flight builds nothing

    lines: list[str] = []
    prebuild_node_caches(config, say=lines.append)
    said = _by_node(lines, two_nodes)
    assert sum(len(node_lines) for node_lines in said.values()) == len(lines)
    builder = next(node for node, node_lines in said.items()
                   if any(line.startswith("built, ") for line in node_lines))
    (other,) = set(two_nodes) - {builder}
    start, *progress, end = said[builder]
    assert start == f"building 96 images in {folder}"
    assert re.fullmatch(r"built, 96 images \(295\.0 kB\) in \d+ s", end)
    assert len(progress) >= 5  # about one line per tenth
    percents = [int(re.fullmatch(r"\d+/96 images \((\d+) %\), \d+ s", line)[1])
                for line in progress]
    assert percents == sorted(percents)
    assert all(0 < p < 100 for p in percents)
    # The other node's task waited on the lock (or came after): it built nothing.
    assert said[other][-1].startswith(("built meanwhile by another process on this disk",
                                       "there (96 images"))
    arrays = list(folder.glob("*.u8.npy"))
    assert len(arrays) == 1
    inode = arrays[0].stat().st_ino

    again: list[str] = []
    prebuild_node_caches(config, say=again.append)
    assert sorted(again) == [f"cache 32px on node {node}: there (96 images, 295.0 kB in "
                             f"{folder})" for node in two_nodes]
    assert arrays[0].stat().st_ino == inode
    assert [r.text for r in node_cache_reports(config)] == [line.split(": ", 1)[1]
                                                             for line in sorted(again)]


@pytest.mark.slow
def test_a_node_that_cannot_build_is_one_line_naming_it(two_nodes, tmp_path):
    data = load_dataset(make_tiny_dataset(tmp_path / "data", per_split={"train": 4, "val": 2}))
    broken = data.image_path(data.manifest["path"][5])
    broken.write_bytes(b"not an image")
    config = sweep(data.folder, tmp_path / "results", cache_dir=str(tmp_path / "caches"))
    lines: list[str] = []
    with pytest.raises(UserError) as caught:
        prebuild_node_caches(config, say=lines.append)
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(rf"cache 32px on node 127\.0\.0\.1/[0-9a-f]{{8}}: {broken}: cannot "
                        r"decode the image \(.*\) \(and 1 more\)", message)
    assert list((tmp_path / "caches").glob("*.npy")) == []
    assert list((tmp_path / "caches").glob(".*.tmp")) == []

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    unwritable = sweep(data.folder, tmp_path / "results", cache_dir=str(blocker / "caches"),
                       data_cache="on")
    with pytest.raises(UserError, match=rf"^cache 32px on node 127\.0\.0\.1/[0-9a-f]{{8}}: "
                       rf"cannot write the cache folder {blocker}/caches \(Not a directory\); "
                       r"point cache_dir .* \(and 1 more\)$"):
        prebuild_node_caches(unwritable, say=lines.append)
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_run_sweep_builds_the_caches_before_its_trials(two_nodes, prepared_dataset, tmp_path,
                                                       capsys):
    from carsweep.search import run_sweep

    folder = tmp_path / "caches"
    config = sweep(prepared_dataset, tmp_path / "results", cache_dir=str(folder),
                   batch_size=16, optimizer="adam", lr=1e-3).model_copy(
        update={"num_samples": 1, "name": "cached"})
    outcome = run_sweep(config, verbose=0)
    assert (outcome.trials, outcome.errors) == (1, ())
    out = capsys.readouterr().out
    built = [line for line in out.splitlines() if re.fullmatch(
        r"cache 32px on node 127\.0\.0\.1/[0-9a-f]{8}: built, 96 images \(295\.0 kB\) in \d+ s",
        line)]
    assert len(built) == 1
    assert len(list(folder.glob("*.u8.npy"))) == 1
