"""Every GPU generation: the autocast a run computes in, loss scaling for fp16, checkpoints
written only where a sweep needs them. fp16 autocast and its GradScaler run on the CPU too,
which is how the path T4/V100/P100 trials take is exercised without a GPU."""

from __future__ import annotations

import shutil

import pytest
import torch
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 (autouse)

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.trainable import load_checkpoint, train
from carsweep.trainable.checkpoint import NO_CHECKPOINTS, CheckpointPolicy
from carsweep.trainable.data import persistent_workers
from carsweep.trainable.loop import pick_precision

CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_tiny_dataset(tmp_path_factory.mktemp("tiny"),
                                          per_split={"train": 6, "val": 3}))


class Kept:
    """Keeps every report, and a copy of each checkpoint folder it was handed."""

    def __init__(self, folder):
        self.folder, self.metrics, self.checkpointed = folder, [], []

    def report(self, metrics, checkpoint_dir):
        self.metrics.append(metrics)
        if checkpoint_dir is not None:
            self.checkpointed.append(metrics["epoch"])
            shutil.copytree(checkpoint_dir, self.folder / f"epoch{metrics['epoch']}")


def config(**changes) -> TrialConfig:
    # SqueezeNet: the CPU has no fast fp16 kernels, and two fp16 epochs of these 9 images take
    # ResNet-18 24 s, SqueezeNet 1.1 2 s; the precision is the point here, not the model.
    return TrialConfig(**{"model": "squeezenet1_1", "epochs": 2, "batch_size": 4, "resize": 32,
                          "num_workers": 0, "device": "cpu", "optimizer": "sgd", "lr": 0.02,
                          "seed": 3, **changes})


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "fp16"), ((7, 5), "fp16"),
                                                      ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_follows_the_gpu_generation(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert pick_precision("auto", CUDA) == expected
    assert pick_precision("fp32", CUDA) == "fp32"


def test_auto_precision_is_fp32_on_the_cpu_and_explicit_choices_are_kept():
    cpu = torch.device("cpu")
    assert [pick_precision(p, cpu) for p in ("auto", "fp32", "fp16", "bf16")] == [
        "fp32", "fp32", "fp16", "bf16"]


def test_bf16_on_a_gpu_without_native_bf16_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(UserError) as error:
        pick_precision("bf16", CUDA)
    assert str(error.value) == (
        "`precision` = 'bf16', but Tesla V100-SXM2-16GB has no native bf16 (compute capability "
        "below 8.0, where it is emulated and slow); use auto or fp16")


def test_fp16_trains_with_a_loss_scale_stored_in_the_checkpoint(dataset, tmp_path):
    kept = Kept(tmp_path)
    result = train(config(precision="fp16"), dataset, reporter=kept)
    assert [m["precision"] for m in kept.metrics] == ["fp16", "fp16"]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in kept.metrics)
    state = load_checkpoint(tmp_path / "epoch2")
    assert state["precision"] == "fp16"
    assert state["scaler"]["scale"] > 1  # a live GradScaler (a disabled one saves {})
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # fp32 master


def test_fp32_run_saves_no_scaler_and_resumes_as_fp16(dataset, tmp_path):
    # A trial moved to an older GPU continues in fp16 from an fp32/bf16 checkpoint.
    first = Kept(tmp_path / "first")
    train(config(precision="fp32"), dataset, reporter=first)
    assert load_checkpoint(tmp_path / "first" / "epoch1")["scaler"] == {}
    resumed = Kept(tmp_path / "resumed")
    train(config(precision="fp16"), dataset, reporter=resumed,
          resume_from=tmp_path / "first" / "epoch1")
    assert [(m["epoch"], m["precision"]) for m in resumed.metrics] == [(2, "fp16")]


def test_checkpoints_only_where_the_policy_asks(dataset, tmp_path):
    kept = Kept(tmp_path)
    policy = CheckpointPolicy(at_epochs=frozenset({2}), every_s=3600)
    train(config(epochs=4), dataset, reporter=kept, checkpoints=policy)
    assert [m["epoch"] for m in kept.metrics] == [1, 2, 3, 4]  # every epoch reported
    assert kept.checkpointed == [2, 4]  # the rung and the last epoch


@pytest.mark.parametrize(("epoch", "seconds", "due"), [
    (1, 0.0, False), (3, 0.0, True), (5, 0.0, True), (2, 599.0, False), (2, 600.0, True)])
def test_checkpoint_policy_rungs_last_epoch_and_interval(epoch, seconds, due):
    policy = CheckpointPolicy(at_epochs=frozenset({3}), every_s=600.0)
    assert policy.due(epoch, last_epoch=5, seconds_since_last=seconds) is due
    assert CheckpointPolicy().due(epoch, last_epoch=5, seconds_since_last=0.0)  # default: all
    assert not NO_CHECKPOINTS.due(epoch, last_epoch=5, seconds_since_last=1e9)  # retrains


def test_workers_persist_across_epochs_unless_the_run_is_deterministic():
    assert persistent_workers(config(num_workers=2))
    assert not persistent_workers(config(num_workers=2, deterministic=True))
    assert not persistent_workers(config(num_workers=0))
