"""Checkpoints: a run resumed from epoch k ends exactly like one that never stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 (autouse)

from carsweep.config.files import CHECKPOINT_FILE
from carsweep.config.io import load_model
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.trainable import load_checkpoint, train
from carsweep.trainable.run import (
    CHECKPOINT_STAGING_PREFIX,
    ORPHAN_AGE_S,
    remove_orphaned_staging_folders,
    staging_folder,
)

EXACT = ("epoch", "train_loss", "train_acc", "lr", "val_loss", "val_top1", "val_top5")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    per_split = {"train": 6, "val": 3}
    return load_dataset(make_tiny_dataset(tmp_path_factory.mktemp("tiny"), per_split=per_split))


class KeepCheckpoints:
    """Copies every epoch's checkpoint folder (train deletes it once `report` returns)."""

    def __init__(self, folder):
        self.folder, self.metrics = folder, []

    def report(self, metrics, checkpoint_dir):
        self.metrics.append(metrics)
        shutil.copytree(checkpoint_dir, self.folder / f"epoch{metrics['epoch']}")


def config() -> TrialConfig:
    # Augmentation, shuffling and the head's dropout draw random numbers every epoch: resume
    # must restore them. MobileNetV3-small: batch norm's running statistics are restored too,
    # and its checkpoints (weights and sgd's momentum) are 12 MB, ResNet-18's 89 MB (this
    # module took 32 s with ResNet-18).
    return TrialConfig(model="mobilenet_v3_small", epochs=3, batch_size=4, resize=32,
                       num_workers=0, device="cpu", optimizer="sgd", lr=0.02, warmup_epochs=1,
                       lr_schedule="cosine", augmentation="flip+rotation", deterministic=True,
                       seed=7)


def test_resumed_run_equals_uninterrupted_run(dataset, tmp_path):
    whole = KeepCheckpoints(tmp_path / "whole")
    uninterrupted = train(config(), dataset, reporter=whole)
    resumed_reporter = KeepCheckpoints(tmp_path / "resumed")
    resumed = train(config(), dataset, reporter=resumed_reporter,
                    resume_from=tmp_path / "whole" / "epoch1")
    assert [m["epoch"] for m in resumed_reporter.metrics] == [2, 3]
    expected, got = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[key], got[key]) for key in expected)
    assert [{k: m[k] for k in EXACT} for m in resumed.history] == [
        {k: m[k] for k in EXACT} for m in uninterrupted.history
    ]
    final = load_checkpoint(tmp_path / "resumed" / "epoch3")
    assert torch.equal(final["optimizer"]["state"][0]["momentum_buffer"],
                       load_checkpoint(tmp_path / "whole" / "epoch3")["optimizer"]["state"][0][
                           "momentum_buffer"])


def test_a_different_seed_gives_different_weights(dataset, tmp_path):
    # Guards the test above: equality must come from the restored state, not from chance.
    first = train(config().model_copy(update={"epochs": 2}), dataset, reporter=KeepCheckpoints(
        tmp_path / "a"))
    other = train(config().model_copy(update={"epochs": 2, "seed": 8}), dataset,
                  reporter=KeepCheckpoints(tmp_path / "b"))
    assert not torch.equal(first.model.state_dict()["classifier.3.weight"],
                           other.model.state_dict()["classifier.3.weight"])


def test_checkpoint_folder_holds_state_config_and_classes(dataset, tmp_path):
    reporter = KeepCheckpoints(tmp_path)
    train(config().model_copy(update={"epochs": 2}), dataset, reporter=reporter, eval_split=None)
    folder = tmp_path / "epoch1"
    state = torch.load(folder / CHECKPOINT_FILE, weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "epoch", "rng", "history"} <= set(state)
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "data_order"}
    assert state["epoch"] == 1
    assert load_model(TrialConfig, folder / "trial.yaml") == config().model_copy(
        update={"epochs": 2})
    assert (folder / "classes.json").read_text().count("class ") == dataset.num_classes


def test_resume_from_the_last_epoch_trains_nothing_more(dataset, tmp_path):
    short = config().model_copy(update={"epochs": 2})
    train(short, dataset, reporter=KeepCheckpoints(tmp_path))
    reporter = KeepCheckpoints(tmp_path / "again")
    result = train(short, dataset, reporter=reporter, resume_from=tmp_path / "epoch2")
    assert reporter.metrics == []
    assert [m["epoch"] for m in result.history] == [1, 2]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_damaged_checkpoint_is_a_user_error(tmp_path, damage):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    path = folder / CHECKPOINT_FILE
    if damage != "missing":
        torch.save({"model": {"w": torch.zeros(100)}, "epoch": 1}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage")
    with pytest.raises(UserError, match="corrupt or truncated|not a checkpoint folder"):
        load_checkpoint(folder)


def test_a_killed_trials_staging_folder_is_removed_by_the_next_one_on_the_node(tmp_path):
    """A trial killed while it stages a checkpoint never runs its `finally`: the folder, named
    after its process, is removed once it is old and that process is gone; a live process's
    folder and a fresh one stay."""
    with staging_folder() as folder:
        assert folder.name.startswith(f"{CHECKPOINT_STAGING_PREFIX}{os.getpid()}-")
    assert not folder.exists()

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = int(gone.stdout)
    old = time.time() - ORPHAN_AGE_S - 60
    folders = {name: tmp_path / f"{CHECKPOINT_STAGING_PREFIX}{pid}-abc"
               for name, pid in [("killed", dead), ("alive", os.getpid())]}
    folders["fresh"] = tmp_path / f"{CHECKPOINT_STAGING_PREFIX}{dead}-fresh"
    folders["not ours"] = tmp_path / "carsweep-test-caches-x"
    for name, path in folders.items():
        path.mkdir()
        (path / "checkpoint.pt").write_bytes(b"weights")
        if name != "fresh":
            os.utime(path, (old, old))
    assert remove_orphaned_staging_folders(tmp_path) == [folders["killed"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for name, p in folders.items() if name != "killed")


def test_a_checkpoint_keeps_only_the_training_gpus_generator(monkeypatch):
    """On an 8-GPU workstation a run saved every visible GPU's generator (and opened a context
    on each); it saves its own device's, and an older many-GPU checkpoint resumes on one."""
    from carsweep.trainable.checkpoint import restore_rng_states, rng_states

    read, written = [], []
    sevens = torch.full((16,), 7, dtype=torch.uint8)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: read.append(device) or sevens)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU read"))
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: written.append((int(state[0]), device)))
    gpu = torch.device("cuda", 0)
    states = rng_states(None, gpu)
    assert read == [gpu]
    assert torch.equal(states["cuda"], sevens)
    assert rng_states(None)["cuda"] is None  # a CPU run touches no GPU
    restore_rng_states(states, None, gpu)
    many = states | {"cuda": [torch.full((16,), k, dtype=torch.uint8) for k in range(8)]}
    restore_rng_states(many, None, gpu)  # a checkpoint of 8 GPUs, resumed on one
    restore_rng_states(many, None)  # ...or on a CPU: nothing to put back
    assert written == [(7, gpu), (0, gpu)]
