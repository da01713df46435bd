"""Bad input rows of docs/bad-input.md that no other test file covers: each is one line on
stderr and exit code 2 (or a documented warning), and writes nothing.

None of these starts Ray: every check here runs before it (the address check is a plain
TCP connect to 127.0.0.1).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from fake_sources import write_image
from sweep_runs import TINY_SWEEP

from carsweep.cli import main


def imagefolder(root: Path, counts: dict[str, dict[str, int]]) -> Path:
    """root/<split>/<class>/*.png with counts[split][class] images each."""
    seed = 0
    for split, per_class in counts.items():
        for name, count in per_class.items():
            for index in range(count):
                seed += 1
                write_image(root / split / name / f"{index}.png", seed=seed)
    return root


def only_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err.rstrip("\n")


# prepare --------------------------------------------------------------------------------

def test_class_in_test_but_not_in_train_is_refused(tmp_path, capsys):
    source = imagefolder(tmp_path / "src", {"train": {"cat": 3, "dog": 3},
                                            "test": {"cat": 1, "dog": 1, "owl": 2}})
    assert main(["prepare", str(source), "--out", str(tmp_path / "out")]) == 2
    assert only_line(capsys.readouterr().err) == (
        "carsweep prepare: error: class 'owl' has 2 test image(s) but none in train, so no "
        "model can learn it; add training images or re-split every class with --split pooled:R")
    assert not (tmp_path / "out").exists()


def test_empty_and_non_image_files_are_left_out_with_a_warning_each(tmp_path, capsys):
    source = imagefolder(tmp_path / "src", {"train": {"cat": 3, "dog": 3},
                                            "test": {"cat": 1, "dog": 1}})
    (source / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (source / "train" / "cat" / "notes.jpg").write_text("not a picture")
    (source / "train" / "cat" / "readme.txt").write_text("no image extension: not looked at")
    assert main(["prepare", str(source), "--out", str(tmp_path / "out")]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert warnings == [
        f"warning: {source}/train/cat/{name}: cannot decode: cannot identify image file "
        f"'{source}/train/cat/{name}'; left out" for name in ("empty.jpg", "notes.jpg")]
    manifest = (tmp_path / "out" / "manifest.csv").read_text()
    assert "empty.jpg" not in manifest
    assert "notes.jpg" not in manifest
    assert "readme.txt" not in manifest
    assert manifest.count("train/cat/") == 3


def test_one_image_classes_are_a_warning_and_the_dataset_is_written(tmp_path, capsys):
    source = imagefolder(tmp_path / "src", {"train": {"cat": 4, "dog": 1, "emu": 1},
                                            "test": {"cat": 1, "dog": 1, "emu": 1}})
    assert main(["prepare", str(source), "--out", str(tmp_path / "out")]) == 0
    assert only_line(capsys.readouterr().err) == (
        "warning: 2 class(es) have a single training image and no val image: 'dog', 'emu'")
    assert (tmp_path / "out" / "manifest.csv").is_file()


# weights files ----------------------------------------------------------------------------

class _Payload:  # unpickling this would call print: code run by loading a file
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture
def evil_weights(tmp_path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _Payload()}, path)
    return path


def test_pickle_with_code_as_weights_of_train_is_refused(prepared_dataset, evil_weights,
                                                         tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared_dataset), "--out", str(run),
                 "--set", f"weights={evil_weights}"]) == 2
    out, err = capsys.readouterr()
    assert only_line(err) == (
        f"carsweep train: error: weights file {str(evil_weights)!r}: refused, it holds objects "
        "other than tensors and numbers (a pickle with code cannot be loaded safely)")
    assert "pwned" not in out
    assert not run.exists()


def sweep_args(tmp_path: Path, dataset: Path, *extra: str, **changes) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY_SWEEP, **changes}))
    return ["sweep", str(path), "--data", str(dataset), "--storage", str(tmp_path / "results"),
            "--num-cpus", "1", *extra]


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ("evil", "refused, it holds objects other than tensors and numbers"),
        ("garbage", "corrupt or truncated file"),
    ],
)
def test_bad_weights_file_in_a_sweep_stops_it_before_anything_is_written(
        prepared_dataset, evil_weights, tmp_path, capsys, weights, expected):
    path = evil_weights
    if weights == "garbage":
        path = tmp_path / "garbage.pt"
        path.write_bytes(b"this is not a checkpoint")
    code = main(sweep_args(tmp_path, prepared_dataset, "--set", f"space.weights={path}"))
    out, err = capsys.readouterr()
    assert code == 2
    assert only_line(err).startswith(f"carsweep sweep: error: weights file {str(path)!r}: ")
    assert expected in err
    assert "pwned" not in out
    assert not (tmp_path / "results").exists()


# configs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("space: [unclosed\n",
         "bad.yaml: not valid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
        ("- a list\n- not a mapping\n", "bad.yaml: expected a mapping of keys to values, got list"),
    ],
)
def test_malformed_sweep_yaml_is_one_line(prepared_dataset, tmp_path, capsys, text, expected):
    (tmp_path / "bad.yaml").write_text(text)
    code = main(["sweep", str(tmp_path / "bad.yaml"), "--data", str(prepared_dataset),
                 "--storage", str(tmp_path / "results")])
    assert code == 2
    assert only_line(capsys.readouterr().err) == f"carsweep sweep: error: {tmp_path}/{expected}"
    assert not (tmp_path / "results").exists()


def test_a_raw_source_given_as_the_dataset_is_refused(tmp_path, capsys):
    source = imagefolder(tmp_path / "src", {"train": {"cat": 2}, "test": {"cat": 1}})
    config = tmp_path / "ok.yaml"
    config.write_text(yaml.safe_dump(TINY_SWEEP))
    assert main(["sweep", str(config), "--data", str(source),
                 "--storage", str(tmp_path / "results")]) == 2
    assert only_line(capsys.readouterr().err) == (
        f"carsweep sweep: error: {source}: not a prepared dataset (missing manifest.csv, "
        "classes.json, dataset.json); run `carsweep prepare SOURCE --out DATASET` first")
    assert not (tmp_path / "results").exists()


def test_check_reports_a_pickle_with_code_as_weights(prepared_dataset, evil_weights, tmp_path,
                                                    capsys):
    code = main(sweep_args(tmp_path, prepared_dataset, "--check",
                           "--set", f"space.weights={evil_weights}"))
    out, err = capsys.readouterr()
    assert code == 2
    assert only_line(err) == (
        f"carsweep sweep --check: weights: weights file {str(evil_weights)!r}: refused, it holds "
        "objects other than tensors and numbers (a pickle with code cannot be loaded safely)")
    assert "pwned" not in out
    assert not (tmp_path / "results").exists()


# resources, cluster, storage --------------------------------------------------------------

def test_cuda_device_with_no_gpu_per_trial_is_refused(prepared_dataset, tmp_path, capsys):
    code = main(sweep_args(tmp_path, prepared_dataset, "--set", "space.device=cuda"))
    assert code == 2
    assert only_line(capsys.readouterr().err) == (
        "carsweep sweep: error: `space.device` can be 'cuda', but `resources.gpu` is 0, so "
        "trials get no GPU; set resources.gpu (e.g. 1 or 0.5) or device: auto")
    assert not (tmp_path / "results").exists()


def closed_loopback_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_address_with_no_ray_behind_it_is_one_line(prepared_dataset, tmp_path, capsys):
    address = f"127.0.0.1:{closed_loopback_port()}"
    code = main(sweep_args(tmp_path, prepared_dataset, "--address", address))
    assert code == 2
    assert only_line(capsys.readouterr().err) == (
        f"carsweep sweep: error: cannot join the Ray cluster at {address}: nothing answers there "
        "(Connection refused); start one with `ray start --head` or give the head node's "
        "HOST:PORT")
    assert not (tmp_path / "results").exists()


def test_resume_with_a_dead_address_leaves_the_experiment_as_it_was(
        prepared_dataset, tmp_path, capsys):
    # An experiment folder as a sweep leaves it (the files' contents do not matter here, but
    # for tuner.pkl being a whole pickle, which resume checks before Ray starts: the command
    # must stop before Ray reads any of them, and write none).
    experiment = tmp_path / "results" / "kept"
    experiment.mkdir(parents=True)
    (experiment / "sweep.yaml").write_text(yaml.safe_dump(
        {**TINY_SWEEP, "name": "kept", "dataset": str(prepared_dataset),
         "storage_path": str(tmp_path / "results")}))
    (experiment / "tuner.pkl").write_bytes(pickle.dumps({"__trainable_name": "run_trial"}))
    for name in ("trials.csv", "trial_0001/checkpoint_000000/checkpoint.pt"):
        (experiment / name).parent.mkdir(parents=True, exist_ok=True)
        (experiment / name).write_bytes(name.encode() * 100)
    before = snapshot(experiment)
    address = f"127.0.0.1:{closed_loopback_port()}"
    assert main(["resume", str(experiment), "--address", address]) == 2
    assert "nothing answers there" in only_line(capsys.readouterr().err)
    assert snapshot(experiment) == before


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_storage_path_under_a_file_is_refused(prepared_dataset, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = sweep_args(tmp_path, prepared_dataset)
    storage = blocker / "results"
    args[args.index("--storage") + 1] = str(storage)
    assert main(args) == 2
    assert only_line(capsys.readouterr().err) == (
        f"carsweep sweep: error: storage path {storage / 'bad'} is not writable ({blocker} "
        "is not a folder); give --storage a folder you can write to")
    assert blocker.read_text() == "not a folder"


def test_train_on_cuda_without_a_gpu_is_one_line_and_writes_no_run_folder(prepared_dataset,
                                                                        tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides every GPU: a machine without one, wherever this runs.
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "carsweep", "train", "--data", str(prepared_dataset),
         "--out", str(run), "--set", "device=cuda", "--set", "epochs=1"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    # torch's own cause: "Found no NVIDIA driver on your system" here, "No CUDA GPUs are
    # available" on a GPU machine.
    assert re.fullmatch(r"carsweep train: error: `device` is 'cuda', but torch \S+ on \S+ "
                        r"cannot use CUDA: [^.;]+; use auto or cpu", only_line(done.stderr))
    assert not run.exists()


def test_a_storage_uri_of_an_unknown_scheme_is_refused(prepared_dataset, tmp_path, capsys):
    args = sweep_args(tmp_path, prepared_dataset)
    args[args.index("--storage") + 1] = "ftp://host/results"
    assert main(args) == 2
    assert only_line(capsys.readouterr().err) == (
        "carsweep sweep: error: ftp://host/results: ftp:// is not a storage carsweep knows; "
        "give a folder, s3://BUCKET/PREFIX (S3 and S3-compatible stores) or gs://BUCKET/PREFIX")


def test_a_storage_bucket_that_does_not_exist_is_one_line(prepared_dataset, tmp_path, capsys,
                                                          s3_bucket):
    args = sweep_args(tmp_path, prepared_dataset)
    args[args.index("--storage") + 1] = f"{s3_bucket}-gone/results"
    assert main(args) == 2
    line = only_line(capsys.readouterr().err)
    assert line.startswith(f"carsweep sweep: error: storage path {s3_bucket}-gone/results/"), line
    assert "is not writable" in line
    assert "check the bucket, the credentials" in line


def test_a_status_of_a_uri_with_nothing_there_is_one_line(s3_bucket, capsys):
    assert main(["status", f"{s3_bucket}/results/none"]) == 2
    assert only_line(capsys.readouterr().err) == (
        f"carsweep status: error: {s3_bucket}/results/none: no such experiment folder")


def test_every_test_the_bad_input_page_names_exists():
    """docs/bad-input.md names a test for each row (`test_x.py::test_name[case]`, and
    `...[case]` for more cases of the test before it): each test must exist, and each case of
    the fuzz table too."""
    from test_fuzz_cli import CASES

    tests = Path(__file__).parent
    page = (tests.parent / "docs" / "bad-input.md").read_text()
    named = set(re.findall(r"`(test_\w+\.py)::(\w+)", page)) - {("test_x.py", "name")}
    assert len(named) > 100
    assert [f"{file}::{name}" for file, name in sorted(named)
            if f"def {name}(" not in (tests / file).read_text()] == []
    fuzz_rows = [line for line in page.splitlines()
                 if "test_fuzz_cli.py::test_bad_input_is_one_line_exit_2_and_changes_nothing["
                 in line]
    said = {case for row in fuzz_rows for case in re.findall(r"(?:nothing|\.\.\.)\[([^\]]+)\]`",
                                                              row)}
    assert len(said) > 40
    assert sorted(said - {case[0] for case in CASES}) == []
