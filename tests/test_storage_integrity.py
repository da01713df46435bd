"""Storage integrity: a damaged checkpoint is passed over for the one before it, and a full disk
is one line naming the file, with the previous file left whole.

The checkpoints are real ones, written by the trainable into `checkpoint_NNNNNN` folders laid
out as Ray Tune lays out a trial's folder; no Ray runtime is needed to pick one. The full disk
is the kernel's own: writes to /dev/full fail with ENOSPC. Only the choice of file descriptor
is patched (config.io.open_temporary_beside hands out /dev/full for the "full" folder), so
everything above the write itself (flush, fsync, rename, clean-up, error message) is the real
code path.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from ray import tune
from trainable_data import make_tiny_dataset

import carsweep.config.io as io_module
from carsweep.cli import main
from carsweep.config.files import CHECKPOINT_FILE
from carsweep.config.io import write_text_atomic
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.search.trial import restorable_checkpoint
from carsweep.storage import location
from carsweep.trainable import load_checkpoint, train
from carsweep.trainable.checkpoint import save_checkpoint

EPOCHS = 3


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return load_dataset(make_tiny_dataset(folder, per_split={"train": 4, "val": 2}))


class RayLikeTrialFolder:
    """Keeps each epoch as Ray Tune does: trial/checkpoint_000000, _000001, ... and a line of
    result.json per epoch."""

    def __init__(self, folder: Path):
        self.folder, self.epochs = folder, []

    def report(self, metrics, checkpoint_dir):
        self.epochs.append(metrics["epoch"])
        shutil.copytree(checkpoint_dir, self.checkpoint(metrics["epoch"]))
        with (self.folder / "result.json").open("a") as results:
            results.write(json.dumps(metrics) + "\n")

    def checkpoint(self, epoch: int) -> Path:
        return self.folder / f"checkpoint_{epoch - 1:06d}"


def trial_config(epochs: int = EPOCHS) -> TrialConfig:
    return TrialConfig(epochs=epochs, batch_size=4, resize=32, num_workers=0, device="cpu",
                       optimizer="sgd", lr=0.02, augmentation="flip", data_cache="off",
                       weights="none", seed=3)


@pytest.fixture(scope="module")
def trained_trial(dataset, tmp_path_factory):
    """A trial folder with the checkpoints of epochs 1..3 (the pristine copy; tests copy it)."""
    trial = RayLikeTrialFolder(tmp_path_factory.mktemp("trial") / "trial_0001")
    train(trial_config(), dataset, reporter=trial)
    assert trial.epochs == [1, 2, 3]
    return trial.folder


def copy_of(trial_folder: Path, tmp_path: Path) -> RayLikeTrialFolder:
    return RayLikeTrialFolder(Path(shutil.copytree(trial_folder, tmp_path / trial_folder.name)))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # what a node dying mid-write leaves


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(
        trained_trial, dataset, tmp_path, caplog):
    trial = copy_of(trained_trial, tmp_path)
    truncate(trial.checkpoint(3) / CHECKPOINT_FILE)
    with caplog.at_level(logging.WARNING, logger="carsweep.search.trial"), \
            restorable_checkpoint(tune.Checkpoint.from_directory(str(trial.checkpoint(3)))) \
            as folder:
        assert folder == trial.checkpoint(2)
        assert load_checkpoint(folder)["epoch"] == 2
        resumed = RayLikeTrialFolder(tmp_path / "resumed")
        train(trial_config(), dataset, reporter=resumed, resume_from=folder)
    assert resumed.epochs == [3]  # epochs 1-2 kept, only the lost epoch is trained again
    assert f"skipping checkpoint {trial.checkpoint(3)}" in caplog.text
    assert "corrupt or truncated" in caplog.text


def test_a_newer_checkpoint_than_rays_is_used_when_its_result_was_recorded(
        trained_trial, dataset, tmp_path):
    # After a killed driver, Ray's restored state can name epoch 2's checkpoint while the
    # trial folder already holds epoch 3's (the state is snapshotted every few seconds).
    trial = copy_of(trained_trial, tmp_path)
    handed = tune.Checkpoint.from_directory(str(trial.checkpoint(2)))
    with restorable_checkpoint(handed) as folder:
        assert folder == trial.checkpoint(3)
        resumed = RayLikeTrialFolder(tmp_path / "resumed")
        train(trial_config(), dataset, reporter=resumed, resume_from=folder)
    assert resumed.epochs == []  # the trial had finished: nothing is trained again
    with restorable_checkpoint(None) as folder:
        assert folder is None


def test_in_a_bucket_a_newer_checkpoint_than_rays_is_used_when_its_result_was_recorded(
        trained_trial, dataset, s3_bucket, tmp_path):
    # Tune uploads a trial's result.json and its own state separately: a driver killed between
    # the two leaves a state naming epoch 2's checkpoint beside epoch 3's row and checkpoint.
    trial = location(f"{s3_bucket}/results/killed/trial_0001")
    trial.upload_tree(trained_trial)
    handed = tune.Checkpoint(f"{trial.fs_path}/checkpoint_000001", filesystem=trial.filesystem)
    with restorable_checkpoint(handed) as folder:
        assert load_checkpoint(folder)["epoch"] == 3
        resumed = RayLikeTrialFolder(tmp_path / "resumed")
        train(trial_config(), dataset, reporter=resumed, resume_from=folder)
    assert resumed.epochs == []  # the trial had finished: nothing is trained again
    rows = (trial / "result.json").read_text().splitlines()
    (trial / "result.json").write_text("\n".join(rows[:2]) + "\n")  # epoch 3's never written
    with restorable_checkpoint(handed) as folder:
        assert load_checkpoint(folder)["epoch"] == 2


def test_a_newer_checkpoint_whose_result_was_never_recorded_is_trained_again(
        trained_trial, tmp_path):
    # The driver died after epoch 3's checkpoint was saved but before it wrote that epoch's
    # result: resuming from it would leave epoch 3 out of the trial's results for good.
    trial = copy_of(trained_trial, tmp_path)
    results = trial.folder / "result.json"
    rows = results.read_text().splitlines()
    results.write_text("\n".join(rows[:2]) + '\n{"epoch": 3, "val_to')  # and a torn last line
    with restorable_checkpoint(tune.Checkpoint.from_directory(str(trial.checkpoint(2)))) as folder:
        assert folder == trial.checkpoint(2)
    results.write_text("\n".join(rows) + "\n")
    truncate(trial.checkpoint(3) / CHECKPOINT_FILE)  # recorded, but damaged: passed over
    with restorable_checkpoint(tune.Checkpoint.from_directory(str(trial.checkpoint(2)))) as folder:
        assert folder == trial.checkpoint(2)


def test_every_checkpoint_damaged_starts_the_trial_over(trained_trial, tmp_path, caplog):
    trial = copy_of(trained_trial, tmp_path)
    truncate(trial.checkpoint(3) / CHECKPOINT_FILE)
    (trial.checkpoint(2) / CHECKPOINT_FILE).write_bytes(b"")  # an empty file
    (trial.checkpoint(1) / CHECKPOINT_FILE).unlink()  # and one never written
    with caplog.at_level(logging.WARNING, logger="carsweep.search.trial"), \
            restorable_checkpoint(tune.Checkpoint.from_directory(str(trial.checkpoint(3)))) \
            as folder:
        assert folder is None
    assert caplog.text.count("skipping checkpoint") == 3
    assert "starts again from epoch 1" in caplog.text


# A full disk -------------------------------------------------------------------------------

@pytest.fixture
def full_disk(monkeypatch, tmp_path):
    """A folder whose disk is full: a new file's descriptor there is /dev/full."""
    full = tmp_path / "full"
    full.mkdir()
    real_open = io_module.open_temporary_beside

    def open_temporary_beside(path):
        if Path(path).resolve().is_relative_to(full.resolve()):
            return os.open("/dev/full", os.O_WRONLY), path.with_name(f".{path.name}.XXXX.tmp")
        return real_open(path)

    monkeypatch.setattr(io_module, "open_temporary_beside", open_temporary_beside)
    return full


def test_atomic_writes_leave_files_readable_as_any_new_file(tmp_path):
    old_umask = os.umask(0o022)
    try:
        write_text_atomic(tmp_path / "trials.csv", "trial_id\n")
    finally:
        os.umask(old_umask)
    assert (tmp_path / "trials.csv").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["trials.csv"]


def test_full_disk_text_write_is_one_line_and_keeps_the_old_file(full_disk):
    path = full_disk / "trials.csv"
    path.write_text("trial_id\nold\n")  # written before the disk filled up
    with pytest.raises(UserError) as raised:
        write_text_atomic(path, "trial_id\nnew\n" * 1000)
    message = str(raised.value)
    assert message.startswith(f"{path}: no space left on the device while writing it")
    assert "\n" not in message
    assert path.read_text() == "trial_id\nold\n"
    assert sorted(p.name for p in full_disk.iterdir()) == ["trials.csv"]


def test_full_disk_checkpoint_write_keeps_the_previous_checkpoint(trained_trial, full_disk):
    folder = Path(shutil.copytree(trained_trial / "checkpoint_000001", full_disk / "ckpt"))
    state = load_checkpoint(folder)
    assert state["epoch"] == 2
    with pytest.raises(UserError, match=rf"^{folder / CHECKPOINT_FILE}: no space left"):
        save_checkpoint(folder, {**state, "epoch": 3}, trial_config(), ["a", "b", "c", "d"])
    assert load_checkpoint(folder)["epoch"] == 2  # the old one still loads whole
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        p.name for p in (trained_trial / "checkpoint_000001").iterdir())


def test_full_disk_under_carsweep_train_is_exit_2_in_one_line(dataset, full_disk, capsys):
    run = full_disk / "run"
    code = main(["train", "--data", str(dataset.folder), "--out", str(run), "--set", "epochs=1",
                 "--set", "resize=32", "--set", "batch_size=4", "--set", "device=cpu",
                 "--set", "num_workers=0", "--set", "weights=none", "--set", "data_cache='off'"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert err.startswith(f"carsweep train: error: {run / 'trial.yaml'}: no space left")
    assert not any(p.is_file() for p in run.rglob("*"))  # no half-written file left
