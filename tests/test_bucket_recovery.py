"""Recovery on a bucket: a restarted trial resumes from the checkpoint it would in a folder.

Ray hands a restarted trial the latest checkpoint its saved experiment state knows: after a
killed driver, possibly older than the trial's folder holds. With the experiment in a bucket
that checkpoint is `tune.Checkpoint(path, filesystem=S3FileSystem)`, and `as_directory()`
downloads it alone into a temporary folder, with no `checkpoint_*` beside it and no
result.json. These tests put a real trial's folder (three checkpoints written by the trainable,
one a epoch, and its result.json) in a bucket on the loopback S3 server
(tests/bucket_server.py), hand `restorable_checkpoint` the checkpoint Ray would, and check
which epochs the trial trains after it: the same as for a folder
(tests/test_storage_integrity.py).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from ray import tune
from trainable_data import make_tiny_dataset
from trial_folders import RayLikeTrialFolder, checkpoint_name, trial_config, truncate

from carsweep.config.files import CHECKPOINT_FILE, RESULT_FILE
from carsweep.data.manifest import load_dataset
from carsweep.search.trial import restorable_checkpoint
from carsweep.storage import BucketPath, location
from carsweep.trainable import load_checkpoint, train

MODEL = "squeezenet1_1"  # 5.6 MB a checkpoint: the choice is the point, not the model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    return load_dataset(make_tiny_dataset(folder, per_split={"train": 4, "val": 2}))


@pytest.fixture(scope="module")
def trained_trial(dataset, tmp_path_factory) -> Path:
    """A trial folder with the checkpoints of epochs 1..3 (the pristine copy; tests copy it)."""
    trial = RayLikeTrialFolder(tmp_path_factory.mktemp("trial") / "trial_0001")
    train(trial_config(model=MODEL), dataset, reporter=trial)
    assert trial.epochs == [1, 2, 3]
    return trial.folder


@pytest.fixture
def trial(trained_trial, tmp_path) -> RayLikeTrialFolder:
    """A copy of the trained trial's folder, for the test to damage before `in_bucket`."""
    return RayLikeTrialFolder(Path(shutil.copytree(trained_trial, tmp_path / "trial_0001")))


def in_bucket(trial: RayLikeTrialFolder, bucket: str) -> BucketPath:
    """The trial's folder uploaded where a sweep in the bucket keeps it."""
    folder = location(f"{bucket}/results/sweep/{trial.folder.name}")
    folder.upload_tree(trial.folder)
    return folder


def handed(folder: BucketPath, epoch: int) -> tune.Checkpoint:
    """The checkpoint of `epoch` as Ray hands it to a trial of a sweep in a bucket."""
    return tune.Checkpoint(f"{folder.fs_path}/{checkpoint_name(epoch)}",
                           filesystem=folder.filesystem)


def epochs_trained_after(folder: Path | None, dataset, tmp_path: Path) -> list[int]:
    """The epochs a trial restarted from `folder` (None: from scratch) trains."""
    resumed = RayLikeTrialFolder(tmp_path / "resumed")
    train(trial_config(model=MODEL), dataset, reporter=resumed, resume_from=folder)
    return resumed.epochs


def test_a_newer_checkpoint_than_rays_is_used_when_its_result_reached_the_bucket(
        trial, dataset, s3_bucket, tmp_path):
    # Ray's restored state names epoch 1's checkpoint; the bucket holds epoch 3's, recorded.
    folder_in_bucket = in_bucket(trial, s3_bucket)
    with restorable_checkpoint(handed(folder_in_bucket, 1)) as folder:
        assert epochs_trained_after(folder, dataset, tmp_path) == []  # it had finished
        assert load_checkpoint(folder)["epoch"] == 3
    assert not folder.exists()  # the downloaded copy is gone


def test_a_newer_checkpoint_whose_result_never_reached_the_bucket_is_trained_again(
        trial, dataset, s3_bucket, tmp_path):
    # The driver died after epoch 3's checkpoint was uploaded, before its result was.
    results = trial.folder / RESULT_FILE
    rows = results.read_text().splitlines()
    results.write_text("\n".join(rows[:2]) + '\n{"epoch": 3, "val_to')  # and a torn last line
    folder_in_bucket = in_bucket(trial, s3_bucket)
    with restorable_checkpoint(handed(folder_in_bucket, 1)) as folder:
        assert epochs_trained_after(folder, dataset, tmp_path) == [3]
        assert load_checkpoint(folder)["epoch"] == 2


def test_a_truncated_latest_checkpoint_in_the_bucket_falls_back_to_the_previous_one(
        trial, dataset, s3_bucket, tmp_path, caplog):
    truncate(trial.checkpoint(3) / CHECKPOINT_FILE)
    folder_in_bucket = in_bucket(trial, s3_bucket)
    with caplog.at_level(logging.WARNING, logger="carsweep.search.trial"), \
            restorable_checkpoint(handed(folder_in_bucket, 3)) as folder:
        assert epochs_trained_after(folder, dataset, tmp_path) == [3]
        assert load_checkpoint(folder)["epoch"] == 2
    assert f"skipping checkpoint {folder_in_bucket / checkpoint_name(3)}" in caplog.text
    assert "corrupt or truncated" in caplog.text


def test_every_checkpoint_in_the_bucket_damaged_starts_the_trial_over(
        trial, dataset, s3_bucket, caplog):
    truncate(trial.checkpoint(3) / CHECKPOINT_FILE)
    (trial.checkpoint(2) / CHECKPOINT_FILE).write_bytes(b"")  # an empty object
    (trial.checkpoint(1) / CHECKPOINT_FILE).unlink()  # and one never uploaded
    folder_in_bucket = in_bucket(trial, s3_bucket)
    with caplog.at_level(logging.WARNING, logger="carsweep.search.trial"), \
            restorable_checkpoint(handed(folder_in_bucket, 2)) as folder:
        assert folder is None
    assert caplog.text.count("skipping checkpoint") == 3
    assert "starts again from epoch 1" in caplog.text
