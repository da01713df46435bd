"""The decoded cache: node-local, train+val only, keyed by its rows, the same tensors as
decoding, built once under a lock, refused or skipped in one line when the disk has no room."""

from __future__ import annotations

import getpass
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from trainable_data import make_tiny_dataset

from carsweep.cli import main
from carsweep.config.trial import TrialConfig
from carsweep.data.cache import (
    CacheError,
    cache_plan,
    check_size,
    default_cache_dir,
    npy_bytes,
    resolve_cache_dir,
    shared_storage_warning,
)
from carsweep.data.cache_build import build_cache
from carsweep.data.cache_read import CacheRows, map_array
from carsweep.data.manifest import load_dataset
from carsweep.trainable.cached_data import CachedBatches
from carsweep.trainable.data import ManifestImages, build_loader

SIZE = 32
PER_SPLIT = {"train": 4, "val": 2, "test": 3}  # per class, 4 classes: 24 train+val images


@pytest.fixture
def dataset(tmp_path):
    return load_dataset(make_tiny_dataset(tmp_path / "data", per_split=PER_SPLIT))


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "caches"


def _config(cache_dir, **changes) -> TrialConfig:
    settings = {"resize": SIZE, "batch_size": 5, "num_workers": 0, "device": "cpu",
                "augmentation": "none", "epochs": 1, "cache_dir": str(cache_dir)}
    return TrialConfig(**(settings | changes))


def _all_batches(loader) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels)


def test_cache_folder_is_the_setting_else_the_environment_else_the_default(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setenv("CARSWEEP_CACHE_DIR", str(tmp_path / "from-env"))
    assert resolve_cache_dir() == tmp_path / "from-env"
    assert resolve_cache_dir(str(tmp_path / "set")) == tmp_path / "set"
    monkeypatch.delenv("CARSWEEP_CACHE_DIR")
    # Per user: on a node several users share, one's folder would refuse the next's files.
    assert resolve_cache_dir() == default_cache_dir() == Path(
        f"/tmp/carsweep-cache-{getpass.getuser()}")
    monkeypatch.setattr(getpass, "getuser", lambda: (_ for _ in ()).throw(KeyError("uid")))
    assert default_cache_dir() == Path(f"/tmp/carsweep-cache-{os.getuid()}")  # no passwd entry
    assert TrialConfig().cache_dir is None
    assert TrialConfig().data_cache == "auto"
    with pytest.raises(ValueError, match="a relative folder would be inside each trial's"):
        TrialConfig(cache_dir="caches")


def test_the_test_session_never_writes_the_machine_default():
    assert Path(os.environ["CARSWEEP_CACHE_DIR"]) != default_cache_dir()  # conftest.py sets it
    assert resolve_cache_dir() == Path(os.environ["CARSWEEP_CACHE_DIR"])


@pytest.mark.parametrize("bbox_crop", [False, True])
def test_cached_and_decoded_paths_give_the_same_tensors(dataset, cache_dir, bbox_crop):
    for split in ("train", "val"):
        cached = build_loader(dataset, split, _config(cache_dir, bbox_crop=bbox_crop),
                              train=False)
        decoded = build_loader(dataset, split, _config(cache_dir, data_cache="off",
                                                       bbox_crop=bbox_crop), train=False)
        assert isinstance(cached.batches.dataset, CachedBatches)
        assert isinstance(decoded.batches.dataset, ManifestImages)
        cached_images, cached_labels = _all_batches(cached)
        decoded_images, decoded_labels = _all_batches(decoded)
        assert cached_images.dtype == torch.uint8
        assert cached_images.shape == (len(dataset.rows(split)), 3, SIZE, SIZE)
        assert torch.equal(cached_images, decoded_images)
        assert torch.equal(cached_labels, decoded_labels)
        x = cached.to_model_input(cached_images[:3])
        torch.testing.assert_close(x, decoded.to_model_input(decoded_images[:3]), rtol=0, atol=0)


def test_rows_read_with_pread_are_the_rows_of_the_array(dataset, cache_dir):
    path = build_cache(dataset, SIZE, cache_dir=cache_dir, workers=1, progress=False)
    array = np.array(map_array(path))
    reader = CacheRows(path)
    assert (len(reader), reader.shape[1:]) == (24, (3, SIZE, SIZE))
    rows = np.array([0, 1, 2, 5, 9, 10, 23])  # runs of consecutive rows, and single ones
    out = np.empty((len(rows), 3, SIZE, SIZE), dtype=np.uint8)
    assert np.array_equal(reader.read(rows, out), array[rows])
    copy = pickle.loads(pickle.dumps(reader))  # as a worker gets it: it opens its own file
    assert np.array_equal(copy.read(rows[-2:], out[:2]), array[rows[-2:]])
    with pytest.raises(ValueError, match=r"out is \(2, 3, 32, 32\), need \(7, "):
        reader.read(rows, out[:2])


def test_the_cache_holds_train_and_val_only_and_test_is_decoded(dataset, cache_dir):
    path = build_cache(dataset, SIZE, cache_dir=cache_dir, workers=1, progress=False)
    rows = dataset.rows("train", "val")
    array = np.array(map_array(path))
    assert array.shape == (len(rows), 3, SIZE, SIZE) == (24, 3, SIZE, SIZE)
    assert len(dataset.manifest) == 36  # the 12 test images are not in it
    decoded, _ = _all_batches(build_loader(dataset, ("train", "val"),
                                           _config(cache_dir, data_cache="off"), train=False))
    assert np.array_equal(array, decoded.numpy())  # manifest order
    assert path.stat().st_size == cache_plan(dataset, SIZE, cache_dir=cache_dir).bytes_needed
    sidecar = json.loads(path.with_name(path.name.replace(".u8.npy", ".json")).read_text())
    assert (sidecar["count"], sidecar["splits"], sidecar["size"]) == (24, ["train", "val"], SIZE)
    for splits in ("test", ("val", "test")):  # any loader touching test decodes, even when on
        loader = build_loader(dataset, splits, _config(cache_dir, data_cache="on"), train=False)
        assert isinstance(loader.batches.dataset, ManifestImages)


def test_training_epoch_from_the_cache_sees_every_image_once(dataset, cache_dir):
    # auto builds the missing cache and uses it. (16 images in batches of 6: none dropped.)
    cached = build_loader(dataset, "train", _config(cache_dir, batch_size=6), train=True)
    assert isinstance(cached.batches.dataset, CachedBatches)
    images, labels = _all_batches(cached)
    decoded, decoded_labels = _all_batches(
        build_loader(dataset, "train", _config(cache_dir, data_cache="off"), train=False))
    order = [_row_of(image, decoded) for image in images]
    assert sorted(order) == list(range(len(decoded)))
    assert torch.equal(labels, decoded_labels[order])


def _row_of(image: torch.Tensor, images: torch.Tensor) -> int:
    (matches,) = torch.nonzero((images == image).flatten(1).all(1), as_tuple=True)
    assert len(matches) == 1
    return int(matches[0])


def test_parallel_build_writes_the_same_array_as_a_single_process(dataset, tmp_path):
    one = build_cache(dataset, SIZE, cache_dir=tmp_path / "one", workers=1, progress=False)
    two = build_cache(dataset, SIZE, cache_dir=tmp_path / "two", workers=2, progress=False)
    assert one.name == two.name  # the key depends on the rows, not on the folder
    assert np.array_equal(np.array(map_array(one)), np.array(map_array(two)))
    assert sorted(p.name for p in two.parent.iterdir()) == sorted(
        [two.name, two.name.replace(".u8.npy", ".json"), two.name.replace(".u8.npy", ".lock")])


@pytest.mark.parametrize(("augment_on", "on_device"), [("device", True), ("cpu", False)])
def test_augmentation_runs_where_the_config_says(dataset, cache_dir, augment_on, on_device):
    config = _config(cache_dir, augmentation="flip+color-jitter", augment_on=augment_on)
    loader = build_loader(dataset, "train", config, train=True)
    images, _ = next(iter(loader))
    if on_device:  # workers hand over the cached bytes; the batch is augmented per sample
        assert loader.batches.dataset.transform is None
        array = torch.from_numpy(np.array(map_array(loader.batches.dataset.array_path)))
        [_row_of(image, array) for image in images]  # each image is a cached row as it is
    else:
        assert loader.batches.dataset.transform is not None
    first, second = loader.to_model_input(images), loader.to_model_input(images)
    assert first.shape == (len(images), 3, SIZE, SIZE)
    assert on_device != torch.equal(first, second)  # device draws anew on every call


def _rewritten(dataset, folder: Path, change) -> object:
    """A copy of the dataset's index with `change(manifest)` applied (same images)."""
    folder.mkdir()
    manifest = change(dataset.manifest.copy())
    manifest.to_csv(folder / "manifest.csv", index=False)
    for name in ("classes.json", "dataset.json"):
        shutil.copy(dataset.folder / name, folder / name)
    info = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**info, "root": str(dataset.root)}))
    return load_dataset(folder)


def _key(dataset, cache_dir, bbox_crop=False) -> str:
    return cache_plan(dataset, SIZE, bbox_crop, cache_dir).stem


def test_the_key_follows_the_train_and_val_rows_and_nothing_else(dataset, cache_dir, tmp_path):
    key = _key(dataset, cache_dir)
    test_row = int(np.flatnonzero(dataset.manifest["split"] == "test")[0])

    def replace_image(m):
        m.loc[3, "sha1"] = "another file"
        return m

    def move_to_test(m):
        m.loc[m.index[m["split"] == "val"][0], "split"] = "test"
        return m

    def edit_a_test_row(m):
        m.loc[test_row, "sha1"] = "another test file"
        return m

    changed = {
        "image replaced": replace_image,
        "rows reordered": lambda m: m.iloc[[1, 0, *range(2, len(m))]],
        "a val image moved to test": move_to_test,
        "a test image replaced": edit_a_test_row,
    }
    keys = {name: _key(_rewritten(dataset, tmp_path / name.replace(" ", "-"), change), cache_dir)
            for name, change in changed.items()}
    assert keys.pop("a test image replaced") == key  # test rows are not in the cache
    assert len({key, *keys.values()}) == 4  # every other change means a new cache
    assert _key(dataset, cache_dir, bbox_crop=True) != key
    assert cache_plan(dataset, 48, cache_dir=cache_dir).stem.startswith("48px-")
    assert _key(dataset, cache_dir, bbox_crop=True).startswith(f"{SIZE}px-bbox-")


def test_two_datasets_never_share_a_file(tmp_path, cache_dir):
    first = load_dataset(make_tiny_dataset(tmp_path / "a", per_split=PER_SPLIT, seed=0))
    second = load_dataset(make_tiny_dataset(tmp_path / "b", per_split=PER_SPLIT, seed=1))
    assert list(first.manifest["path"]) == list(second.manifest["path"])  # same names
    paths = [build_cache(d, SIZE, cache_dir=cache_dir, workers=1, progress=False)
             for d in (first, second)]
    assert paths[0] != paths[1]
    assert not np.array_equal(np.array(map_array(paths[0])), np.array(map_array(paths[1])))
    for data, path in zip((first, second), paths, strict=True):  # each reads its own
        loader = build_loader(data, "train", _config(cache_dir), train=False)
        assert loader.batches.dataset.array_path == path


def test_a_fresh_cache_is_not_rebuilt_and_a_killed_builders_leftover_is_removed(
        dataset, cache_dir):
    path = build_cache(dataset, SIZE, cache_dir=cache_dir, workers=1, progress=False)
    inode = path.stat().st_ino
    assert build_cache(dataset, SIZE, cache_dir=cache_dir, workers=1, progress=False) == path
    assert path.stat().st_ino == inode
    leftover = cache_dir / f".{path.name}.4242.tmp"
    leftover.write_bytes(b"half a cache")
    path.unlink()  # missing again: the next build cleans up before it starts
    build_cache(dataset, SIZE, cache_dir=cache_dir, workers=1, progress=False)
    assert not leftover.exists()
    assert cache_plan(dataset, SIZE, cache_dir=cache_dir).state == "fresh"


def test_room_is_the_whole_array_plus_a_reserve(dataset, cache_dir):
    needed = npy_bytes((24, 3, SIZE, SIZE))
    assert needed == 24 * 3 * SIZE * SIZE + 128  # one 128-byte .npy header

    def plan(free, total=10**12):
        return cache_plan(dataset, SIZE, cache_dir=cache_dir, disk=lambda _: (free, total))

    assert plan(needed + 2**30).has_room  # reserve: 1 GiB on a large disk
    assert not plan(needed + 2**30 - 1).has_room
    assert plan(needed + 5_000, total=100_000).has_room  # 5 % of a small one
    short = plan(needed + 4_999, total=100_000)
    assert not short.has_room
    assert short.room_problem() == (
        f"the 32px cache of 24 train+val images needs 73.9 kB in {cache_dir}, but that disk "
        "has 78.9 kB free (5.0 kB kept spare); a container's ephemeral-storage limit "
        "(Kubernetes) is not visible to this check, which sees only the disk")


NO_ROOM = textwrap.dedent("""
    import json, sys, warnings
    from pathlib import Path
    import carsweep.data.cache as cache
    import carsweep.data.cache_build as cache_build
    from carsweep.config.trial import TrialConfig
    from carsweep.data.manifest import load_dataset
    from carsweep.trainable.data import build_loader

    dataset, small = load_dataset(Path(sys.argv[1])), Path(sys.argv[2])
    config = TrialConfig(resize=64, num_workers=0, device="cpu", cache_dir=str(small))
    seen = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loader = build_loader(dataset, "train", config, train=False)  # auto
    seen["auto"] = [str(w.message) for w in caught]
    seen["auto_reads"] = type(loader.batches.dataset).__name__
    try:
        build_loader(dataset, "train", config.model_copy(update={"data_cache": "on"}),
                     train=False)
    except cache.CacheError as error:
        seen["on"] = str(error)
    # The disk fills up between the plan and the build: the allocation fails, not a worker.
    cache.disk_space = lambda path: (10**12, 10**12)
    try:
        cache_build.build_cache(dataset, 64, cache_dir=small, workers=1, progress=False)
    except cache.CacheError as error:
        seen["full"] = str(error)
    seen["left"] = sorted(p.name for p in small.iterdir())
    print(json.dumps(seen))
""")


def test_no_room_on_a_real_small_disk_warns_under_auto_and_fails_under_on(dataset, tmp_path):
    """A 64 kB tmpfs (its own mount namespace) as the cache folder: the 24 images at 64 px
    need 295 kB."""
    small = tmp_path / "small-disk"
    small.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {small} && "
              f"{sys.executable} -c \"$SCRIPT\" {dataset.folder} {small}")
    tests = str(Path(__file__).parent)
    env = {**os.environ, "SCRIPT": NO_ROOM, "PYTHONPATH": os.pathsep.join(sys.path + [tests])}
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    problem = (f"the 64px cache of 24 train+val images needs 295.0 kB in {small}, but that "
               "disk has 65.5 kB free (3.3 kB kept spare); a container's ephemeral-storage "
               "limit (Kubernetes) is not visible to this check, which sees only the disk")
    assert seen["auto"] == [f"{problem}; decoding the JPEGs every epoch instead "
                            "(data_cache: auto)"]
    assert seen["auto_reads"] == "ManifestImages"
    assert seen["on"] == (f"{problem}; free some space there or point cache_dir "
                          "($CARSWEEP_CACHE_DIR) at a larger local disk")
    assert seen["full"].startswith(f"cannot reserve 295.0 kB for the 64px cache in {small} "
                                   "(No space left on device)")
    assert [name for name in seen["left"] if not name.endswith(".lock")] == []  # no temp file
    assert list(small.iterdir()) == []  # the tmpfs was the subprocess's own


def test_an_unwritable_cache_folder_is_one_line(dataset, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = _config(blocker / "caches", data_cache="on")
    with pytest.raises(CacheError, match=rf"^cannot write the cache folder {blocker}/caches "
                       r"\(Not a directory\); point cache_dir \(\$CARSWEEP_CACHE_DIR\) at a "
                       r"folder you can write$"):
        build_loader(dataset, "train", config, train=False)
    with pytest.warns(UserWarning, match="cannot write the cache folder .*; decoding the JPEGs"):
        loader = build_loader(dataset, "train", _config(blocker / "caches"), train=False)
    assert isinstance(loader.batches.dataset, ManifestImages)


def test_unreadable_image_names_the_file_and_leaves_nothing(dataset, cache_dir):
    broken = dataset.image_path(dataset.manifest["path"][2])
    broken.write_bytes(b"not an image")
    with pytest.raises(CacheError, match=rf"{broken.name}: cannot decode"):
        build_cache(dataset, SIZE, cache_dir=cache_dir, workers=1, progress=False)
    assert [p.suffix for p in cache_dir.iterdir()] == [".lock"]


@pytest.mark.parametrize(("size", "error"), [(8, ValueError), (4096, ValueError),
                                             ("32", TypeError), (True, TypeError)])
def test_bad_sizes_are_refused(size, error):
    with pytest.raises(error, match="cache size"):
        check_size(size)


def test_prepare_cache_option_warms_this_machines_cache(dataset, tmp_path, capsys):
    out, folder = tmp_path / "prepared", tmp_path / "warm"
    assert main(["prepare", str(dataset.root), "--out", str(out), "--split", "pooled:0.8",
                 "--cache", "32,48", "--cache-dir", str(folder)]) == 0
    prepared = load_dataset(out)
    plans = [cache_plan(prepared, size, cache_dir=folder) for size in (32, 48)]
    assert [plan.state for plan in plans] == ["fresh", "fresh"]
    printed = capsys.readouterr().out
    count = len(prepared.rows("train", "val"))
    assert count == 28  # pooled 0.8 of 36, val carved out of it: the test split is left out
    assert f"decoded cache 48px (28 train+val images, 193.7 kB): {plans[1].array}\n" in printed
    assert map_array(plans[1].array).shape == (count, 3, 48, 48)
    # The folder defaults to $CARSWEEP_CACHE_DIR; an --out elsewhere gives no shared warning.
    assert main(["prepare", str(dataset.root), "--out", str(out), "--force", "--cache", "32",
                 "--split", "pooled:0.8"]) == 0
    captured = capsys.readouterr()
    assert f"{resolve_cache_dir()}/{plans[0].array.name}" in captured.out
    assert "warning" not in captured.err


def test_prepare_cache_dir_without_cache_and_inside_the_dataset(dataset, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", str(dataset.root), "--out", str(out), "--cache-dir", "/x"]) == 2
    assert capsys.readouterr().err == ("carsweep prepare: error: --cache-dir is where --cache "
                                       "SIZES builds; give --cache too, e.g. --cache 256,400\n")
    assert not out.exists()
    inside = dataset.root / "cache"
    assert main(["prepare", str(dataset.root), "--out", str(out), "--cache", "32",
                 "--split", "pooled:0.8", "--cache-dir", str(inside)]) == 0
    err = capsys.readouterr().err  # the warning, and the progress bar
    (warning,) = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning.startswith(f"warning: cache folder {inside} is inside the image folder "
                              f"({dataset.root}), which every node shares: the cache works")


MOUNTS = textwrap.dedent("""\
    /dev/vda / ext4 rw,relatime 0 0
    nfs.internal:/export /shared nfs4 rw,relatime 0 0
    sshfs#me@host:/data /mnt/remote\\040data fuse.sshfs rw 0 0
    /dev/nvme0n1 /shared/local-nvme ext4 rw 0 0
""")


@pytest.mark.parametrize(("folder", "where"), [
    ("/shared/cache", "is on a network file system (nfs4 at /shared)"),
    ("/mnt/remote data/cache", "is on a network file system (fuse.sshfs at /mnt/remote data)"),
    ("/shared/local-nvme/cache", None),  # a local disk mounted inside the NFS tree
    ("/tmp/carsweep-cache", None),
    ("/data/results/cache", "is inside the experiment storage (/data/results), which every "
                            "node shares"),
])
def test_shared_storage_warning(folder, where):
    warning = shared_storage_warning(folder, {"the experiment storage": "/data/results",
                                              "the dataset folder": None}, mounts=MOUNTS)
    assert warning == (where and f"cache folder {folder} {where}: the cache works there, but "
                       "reading it over a network file system (100-200 MB/s) is no faster than "
                       "decoding the JPEGs (BENCHMARKS.md); set cache_dir ($CARSWEEP_CACHE_DIR) "
                       "to a local disk of each node")


READER = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    import numpy as np
    import carsweep.data.cache_build as cache_build
    import carsweep.data.cache_read as cache_read
    from carsweep.data.manifest import load_dataset

    folder, log, cache_dir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    original = cache_build._decode_all

    def logged(*args, **kwargs):  # count builds across processes
        with open(log, "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        time.sleep(0.5)  # widen the window in which a second builder could start
        yield from original(*args, **kwargs)

    cache_build._decode_all = logged
    path = cache_build.build_cache(load_dataset(folder), 32, cache_dir=cache_dir, workers=1,
                                   progress=False)
    array = cache_read.map_array(path)
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


def test_concurrent_builders_build_once_and_map_one_shared_file(dataset, tmp_path, cache_dir):
    log = tmp_path / "builds.log"
    tests = str(Path(__file__).parent)
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(dataset.folder), str(log),
                                 str(cache_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={"PYTHONPATH": os.pathsep.join(sys.path + [tests]),
                                     "PATH": "/usr/bin:/bin"})
               for _ in range(2)]
    results = []
    for reader in readers:
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len(log.read_text().split()) == 1  # the second process waited and reused it
    inode = cache_plan(dataset, SIZE, cache_dir=cache_dir).array.stat().st_ino
    for result in results:
        assert result["inodes"]
        assert set(result["inodes"]) == {inode}
        assert set(result["perms"]) == {"r--s"}  # read-only, shared: the page cache's copy
        assert result["anonymous_kb"] == 0  # no private copy of any page
    assert results[0]["sum"] == results[1]["sum"] > 0
