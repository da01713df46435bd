"""The epoch loop on a tiny easy dataset: it learns, reports the agreed metrics, predicts."""

from __future__ import annotations

import pytest
import torch
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 (autouse)

from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.trainable import build_model, load_checkpoint, predict, train

METRICS = {"epoch", "train_loss", "train_acc", "val_loss", "val_top1", "val_top5",
           "images_per_s", "lr", "epoch_time_s", "precision"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return load_dataset(make_tiny_dataset(tmp_path_factory.mktemp("tiny")))


def small(**changes) -> TrialConfig:
    values = {"epochs": 2, "batch_size": 4, "resize": 32, "num_workers": 0, "device": "cpu",
              "optimizer": "adam", "lr": 0.001, "augmentation": "none", "seed": 0}
    return TrialConfig(**(values | changes))


class Collect:
    """A Reporter that keeps the metrics and loads each checkpoint before it is deleted."""

    def __init__(self):
        self.metrics, self.checkpoints, self.files = [], [], []

    def report(self, metrics, checkpoint_dir):
        self.metrics.append(metrics)
        self.files.append(sorted(p.name for p in checkpoint_dir.iterdir()))
        self.checkpoints.append(load_checkpoint(checkpoint_dir))


def test_two_epochs_learn_the_easy_classes_and_report_every_epoch(dataset):
    reporter = Collect()
    result = train(small(), dataset, reporter=reporter)
    assert [m["epoch"] for m in reporter.metrics] == [1, 2]
    assert all(set(m) == METRICS for m in reporter.metrics)
    last = reporter.metrics[-1]
    assert last["val_top1"] >= 0.75  # chance is 0.25 with four classes
    assert last["val_top5"] == 1.0  # top-5 of four classes always contains the label
    assert last["train_loss"] < reporter.metrics[0]["train_loss"]
    assert all(0 <= m[key] <= 1 for m in reporter.metrics for key in ("train_acc", "val_top1"))
    assert all(m["images_per_s"] > 0 and m["epoch_time_s"] > 0 for m in reporter.metrics)
    assert result.history == reporter.metrics
    assert result.classes == dataset.classes
    assert reporter.files[0] == ["checkpoint.pt", "classes.json", "trial.yaml"]
    assert reporter.checkpoints[-1]["epoch"] == 2
    assert not result.model.training


def test_predict_returns_logits_in_manifest_order(dataset):
    config = small(epochs=1)
    model = build_model(dataset.num_classes, "none").eval()
    logits, labels = predict(model, dataset, "test", config, batch_size=5)
    rows = dataset.rows("test")
    assert logits.shape == (len(rows), dataset.num_classes)
    assert logits.dtype == torch.float32
    assert logits.device.type == "cpu"
    assert labels.tolist() == rows["label"].tolist()
    again, _ = predict(model, dataset, "test", config, batch_size=32)
    torch.testing.assert_close(logits, again)


def test_without_eval_split_only_training_metrics_are_reported(dataset):
    reporter = Collect()
    train(small(epochs=1), dataset, reporter=reporter, train_splits=("train", "val"),
          eval_split=None)
    assert set(reporter.metrics[0]) == METRICS - {"val_loss", "val_top1", "val_top5"}


def test_frozen_backbone_trains_only_the_head_for_the_first_epochs(dataset):
    initial = build_model(dataset.num_classes, "none").state_dict()
    reporter = Collect()
    train(small(freeze_backbone_epochs=1, optimizer="sgd", weight_decay=0.001), dataset,
          reporter=reporter, initial_weights=initial)
    after_one, after_two = (c["model"] for c in reporter.checkpoints)
    assert torch.equal(after_one["layer2.0.conv1.weight"], initial["layer2.0.conv1.weight"])
    assert torch.equal(after_one["bn1.running_mean"], initial["bn1.running_mean"])
    assert not torch.equal(after_one["fc.weight"], initial["fc.weight"])
    assert not torch.equal(after_two["layer2.0.conv1.weight"], initial["layer2.0.conv1.weight"])


def test_bbox_crop_and_augmentation_run(dataset):
    reporter = Collect()
    train(small(epochs=1, bbox_crop=True, augmentation="flip+color-jitter"), dataset,
          reporter=reporter)
    assert reporter.metrics[0]["train_loss"] > 0


def test_unknown_augmentation_fails_before_training(dataset):
    with pytest.raises(UserError, match="unknown preset 'wobble'"):
        train(small(augmentation="flip+wobble"), dataset, reporter=Collect())


def test_empty_split_is_a_user_error(dataset):
    empty = type(dataset)(folder=dataset.folder, root=dataset.root,
                          manifest=dataset.manifest[dataset.manifest["split"] != "val"],
                          classes=dataset.classes, info=dataset.info)
    with pytest.raises(UserError, match="split val has no images"):
        train(small(), empty, reporter=Collect())


def test_unknown_split_names_the_valid_ones(dataset):
    with pytest.raises(UserError, match="split 'valid' is not one of train, val, test"):
        train(small(), dataset, reporter=Collect(), eval_split="valid")


def test_a_nan_loss_stops_the_run_at_once_naming_its_epoch(dataset, tmp_path):
    from carsweep.trainable.checkpoint import torch_save_atomic
    from carsweep.trainable.loop import NonFiniteLossError

    class KeepEpochOne(Collect):
        def report(self, metrics, checkpoint_dir):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == 1:
                state = load_checkpoint(checkpoint_dir)
                state["model"]["fc.weight"][0, 0] = float("nan")  # blows up the next epoch
                torch_save_atomic(state, tmp_path / "checkpoint.pt")
                for name in ("trial.yaml", "classes.json"):
                    (tmp_path / name).write_bytes((checkpoint_dir / name).read_bytes())

    train(small(epochs=2), dataset, reporter=KeepEpochOne())
    reporter = Collect()
    with pytest.raises(NonFiniteLossError) as caught:
        train(small(epochs=3), dataset, reporter=reporter, resume_from=tmp_path)
    assert caught.value.epoch == 2  # the first epoch after the resumed one
    assert str(caught.value).startswith("training loss became nan by batch 1 of the epoch")
    assert reporter.metrics == []  # stopped in its first batch, nothing reported
