"""The decoded cache: same tensors as decoding, staleness detected, one shared file per node."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from trainable_data import make_tiny_dataset

from carsweep.config.trial import TrialConfig
from carsweep.data import cache
from carsweep.data.cache import (
    CacheError,
    CacheFiles,
    build_cache,
    cache_state,
    check_size,
    open_cache,
)
from carsweep.data.manifest import load_dataset
from carsweep.trainable.cached_data import CachedBatches
from carsweep.trainable.data import build_loader

SIZE = 32


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(make_tiny_dataset(tmp_path / "data", per_split={"train": 4, "val": 2}))


def _config(**changes) -> TrialConfig:
    settings = {"resize": SIZE, "batch_size": 5, "num_workers": 0, "device": "cpu",
                "augmentation": "none", "epochs": 1}
    return TrialConfig(**(settings | changes))


def _all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


@pytest.mark.parametrize("bbox_crop", [False, True])
def test_cached_and_decoded_paths_give_the_same_tensors(dataset, bbox_crop):
    build_cache(dataset, SIZE, bbox_crop=bbox_crop, workers=1, progress=False)
    for split in ("train", "val"):
        cached = build_loader(dataset, split, _config(data_cache="on", bbox_crop=bbox_crop),
                              train=False)
        decoded = build_loader(dataset, split, _config(data_cache="off", bbox_crop=bbox_crop),
                               train=False)
        assert isinstance(cached.batches.dataset, CachedBatches)
        assert not isinstance(decoded.batches.dataset, CachedBatches)
        cached_images, cached_labels = _all_batches(cached)
        decoded_images, decoded_labels = _all_batches(decoded)
        assert cached_images.dtype == torch.uint8
        assert cached_images.shape == (len(dataset.rows(split)), 3, SIZE, SIZE)
        assert torch.equal(cached_images, decoded_images)
        assert torch.equal(cached_labels, decoded_labels)
        x = cached.to_model_input(cached_images[:3])
        torch.testing.assert_close(x, decoded.to_model_input(decoded_images[:3]), rtol=0, atol=0)


def test_training_epoch_from_the_cache_sees_every_image_once(dataset):
    build_cache(dataset, SIZE, workers=1, progress=False)
    # auto: a fresh cache is used. (16 images in batches of 6: no 1-image batch to drop.)
    cached = build_loader(dataset, "train", _config(batch_size=6), train=True)
    assert isinstance(cached.batches.dataset, CachedBatches)
    images, labels = _all_batches(cached)
    decoded, decoded_labels = _all_batches(
        build_loader(dataset, "train", _config(data_cache="off"), train=False))
    order = [_row_of(image, decoded) for image in images]
    assert sorted(order) == list(range(len(decoded)))
    assert torch.equal(labels, decoded_labels[order])


def _row_of(image: torch.Tensor, images: torch.Tensor) -> int:
    (matches,) = torch.nonzero((images == image).flatten(1).all(1), as_tuple=True)
    assert len(matches) == 1
    return int(matches[0])


def test_parallel_build_writes_the_same_array_as_a_single_process(dataset, monkeypatch):
    one = np.array(open_cache(dataset, SIZE, build=True, workers=1))
    monkeypatch.setattr(cache, "CHUNK", 8)  # 24 images: 3 tasks for 2 worker processes
    build_cache(dataset, SIZE, workers=2, progress=False, force=True)
    assert np.array_equal(np.array(open_cache(dataset, SIZE)), one)
    sidecar = json.loads(CacheFiles.of(dataset.folder, SIZE).sidecar.read_text())
    assert sidecar["size"] == SIZE
    assert sidecar["count"] == len(dataset.manifest)
    leftovers = [p.name for p in (dataset.folder / "cache").iterdir() if ".tmp" in p.name]
    assert leftovers == []


@pytest.mark.parametrize(("augment_on", "on_device"), [("device", True), ("cpu", False)])
def test_augmentation_runs_where_the_config_says(dataset, augment_on, on_device):
    build_cache(dataset, SIZE, workers=1, progress=False)
    config = _config(augmentation="flip+color-jitter", augment_on=augment_on)
    loader = build_loader(dataset, "train", config, train=True)
    images, _ = next(iter(loader))
    if on_device:  # workers hand over the cached bytes; the batch is augmented per sample
        assert loader.batches.dataset.transform is None
        _rows_of(images, dataset)  # each image is a cached row as it is, not augmented
    else:
        assert loader.batches.dataset.transform is not None
    first, second = loader.to_model_input(images), loader.to_model_input(images)
    assert first.shape == (len(images), 3, SIZE, SIZE)
    assert on_device != torch.equal(first, second)  # device draws anew on every call


def _rows_of(images: torch.Tensor, dataset) -> list[int]:
    array = torch.from_numpy(np.array(open_cache(dataset, SIZE)))
    return [_row_of(image, array) for image in images]


def test_a_changed_manifest_makes_the_cache_stale(dataset):
    build_cache(dataset, SIZE, workers=1, progress=False)
    assert cache_state(dataset, SIZE) == "fresh"
    assert cache_state(dataset, SIZE, bbox_crop=True) == "missing"
    manifest = dataset.manifest.copy()
    manifest.loc[3, "sha1"] = "a different file"  # the image was replaced
    manifest.to_csv(dataset.folder / "manifest.csv", index=False)
    changed = load_dataset(dataset.folder)
    assert cache_state(changed, SIZE) == "stale"
    with pytest.raises(CacheError, match=r"32px decoded cache is stale .*--cache 32"):
        open_cache(changed, SIZE)
    with pytest.warns(UserWarning, match="stale"):
        loader = build_loader(changed, "train", _config(), train=False)
    assert not isinstance(loader.batches.dataset, CachedBatches)  # decoded instead
    open_cache(changed, SIZE, build=True, workers=1)
    assert cache_state(changed, SIZE) == "fresh"


def test_reordered_rows_make_the_cache_stale(dataset):
    build_cache(dataset, SIZE, workers=1, progress=False)
    swapped = dataset.manifest.iloc[[1, 0, *range(2, len(dataset.manifest))]]
    swapped.to_csv(dataset.folder / "manifest.csv", index=False)
    assert cache_state(load_dataset(dataset.folder), SIZE) == "stale"


def test_missing_cache_is_named_and_not_used_in_auto_mode(dataset):
    with pytest.raises(CacheError, match="32px decoded cache is missing"):
        open_cache(dataset, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing cache is normal: no warning
        loader = build_loader(dataset, "val", _config(), train=False)
    assert not isinstance(loader.batches.dataset, CachedBatches)


def test_unreadable_image_names_the_file_and_leaves_nothing(dataset):
    broken = dataset.image_path(dataset.manifest["path"][2])
    broken.write_bytes(b"not an image")
    with pytest.raises(CacheError, match=rf"{broken.name}: cannot decode"):
        build_cache(dataset, SIZE, workers=1, progress=False)
    assert sorted(p.name for p in (dataset.folder / "cache").iterdir()) == ["32.lock"]


@pytest.mark.parametrize(("size", "error"), [(8, ValueError), (4096, ValueError),
                                             ("32", TypeError), (True, TypeError)])
def test_bad_sizes_are_refused(size, error):
    with pytest.raises(error, match="cache size"):
        check_size(size)


def test_prepare_cache_option_builds_fresh_caches(dataset, tmp_path):
    from carsweep.cli import main

    out = tmp_path / "prepared"
    assert main(["prepare", str(dataset.root), "--out", str(out), "--split", "pooled:0.8",
                 "--cache", "32,48"]) == 0
    prepared = load_dataset(out)
    assert cache_state(prepared, 32) == cache_state(prepared, 48) == "fresh"
    assert open_cache(prepared, 48).shape == (len(prepared.manifest), 3, 48, 48)


READER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import numpy as np
    import carsweep.data.cache as cache
    from carsweep.data.manifest import load_dataset

    folder, log = Path(sys.argv[1]), Path(sys.argv[2])
    original = cache._decode_all

    def logged(*args, **kwargs):  # count builds across processes
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        time.sleep(0.5)  # widen the window in which a second builder could start
        return original(*args, **kwargs)

    cache._decode_all = logged
    array = cache.open_cache(load_dataset(folder), 32, build=True, workers=1)
    total = int(np.asarray(array, dtype=np.int64).sum())  # touch every page
    path = os.path.realpath(array.filename)
    maps = [line.split() for line in Path("/proc/self/maps").read_text().splitlines()]
    mapped = [m for m in maps if len(m) >= 6 and m[5] == path]
    smaps = Path("/proc/self/smaps").read_text().split("\\n")
    anonymous = 0
    for index, line in enumerate(smaps):
        if line.endswith(path):
            for detail in smaps[index + 1:index + 25]:
                if detail.startswith("Anonymous:"):
                    anonymous += int(detail.split()[1])
    print(json.dumps({"inodes": [int(m[4]) for m in mapped], "perms": [m[1] for m in mapped],
                      "anonymous_kb": anonymous, "sum": total}))
""")


def test_concurrent_readers_build_once_and_map_one_shared_file(dataset, tmp_path):
    log = tmp_path / "builds.log"
    tests = str(Path(__file__).parent)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(dataset.folder), str(log)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PYTHONPATH": tests, "PATH": "/usr/bin:/bin"})
               for _ in range(2)]
    results = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len(log.read_text().split()) == 1  # the second process waited and reused it
    inode = CacheFiles.of(dataset.folder, SIZE).array.stat().st_ino
    for result in results:
        assert result["inodes"]
        assert set(result["inodes"]) == {inode}
        assert set(result["perms"]) == {"r--s"}  # read-only, shared: the page cache's copy
        assert result["anonymous_kb"] == 0  # no private copy of any page
    assert results[0]["sum"] == results[1]["sum"] > 0
