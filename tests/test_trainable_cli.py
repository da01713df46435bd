"""`carsweep train`: one trial standalone, its run folder, resume, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 (autouse)

from carsweep.cli import main
from carsweep.trainable import load_checkpoint

METRICS = ["epoch", "train_loss", "train_acc", "images_per_s", "lr", "val_loss", "val_top1",
           "val_top5", "epoch_time_s", "precision"]
QUICK = ["--set", "resize=32", "--set", "batch_size=4", "--set", "num_workers=0",
         "--set", "device=cpu", "--set", "optimizer=adam", "--set", "lr=0.001"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), per_split={"train": 4, "val": 2})


def _rows(run):
    with (run / "metrics.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_train_writes_the_run_folder_and_resumes(data, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "trial.yaml"
    config.write_text("epochs: 2\naugmentation: flip\n")
    assert main(["train", "--data", str(data), "--config", str(config), "--out", str(run),
                 *QUICK]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2  train loss" in out
    assert "epoch 2/2  train loss" in out
    assert {p.name for p in run.iterdir()} >= {"trial.yaml", "classes.json", "metrics.csv",
                                                "checkpoints"}
    rows = _rows(run)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert list(rows[0]) == METRICS
    assert load_checkpoint(run / "checkpoints" / "last")["epoch"] == 2
    best_epoch = max(rows, key=lambda row: float(row["val_top1"]))["epoch"]
    assert load_checkpoint(run / "checkpoints" / "best")["epoch"] == int(best_epoch)

    events = EventAccumulator(str(run))
    events.Reload()
    assert [event.step for event in events.Scalars("val_top1")] == [1, 2]
    assert events.Scalars("train_loss")[0].value == pytest.approx(float(rows[0]["train_loss"]))

    assert main(["train", "--data", str(data), "--out", str(run), "--resume",
                 "--set", "epochs=3"]) == 0
    assert "epoch 3/3" in capsys.readouterr().out
    assert [row["epoch"] for row in _rows(run)] == ["1", "2", "3"]
    assert load_checkpoint(run / "checkpoints" / "last")["epoch"] == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "lr=-1"], "`lr`"),
        (["--set", "augmentation=flip+wobble"], "unknown preset 'wobble'"),
        (["--set", "weights=missing.pt"], "missing.pt"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(data, tmp_path, capsys, extra, message):
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "run"), *QUICK,
                 "--set", "epochs=1", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_an_existing_run_folder_is_not_overwritten(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("keep me")
    assert main(["train", "--data", str(data), "--out", str(run)]) == 2
    assert "use --resume" in capsys.readouterr().err
    assert (run / "metrics.csv").read_text() == "keep me"


def test_missing_dataset_is_a_user_error(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err


def test_train_runs_on_the_shared_synthetic_dataset(prepared_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(prepared_dataset), "--out", str(run), *QUICK,
                 "--set", "epochs=1", "--set", "augmentation=flip+color-jitter"]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    rows = _rows(run)
    assert len(rows) == 1
    assert 0.0 <= float(rows[0]["val_top1"]) <= 1.0
    classes = json.loads((prepared_dataset / "classes.json").read_text())
    assert json.loads((run / "classes.json").read_text()) == classes
    assert load_checkpoint(run / "checkpoints" / "last")["classes"] == classes
