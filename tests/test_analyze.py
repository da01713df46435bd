"""carsweep analyze: the suite's finished sweep, whose test images were unreadable while it ran,
then the analysis of its best trial (retrain on train+val, one test pass, report) checked
against the files it wrote."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from sweep_runs import ANALYZE, FINISHED_SWEEP

from carsweep.analysis import plots
from carsweep.analysis.gradcam import cam_layer, class_maps, pointing_game
from carsweep.analysis.metrics import by_make
from carsweep.analysis.report import data_uri
from carsweep.cli import main
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth import make_synthetic_dataset
from carsweep.results import load_experiment
from carsweep.trainable import predict, train
from carsweep.trainable.augment import normalization
from carsweep.trainable.cam_occlusion import describe
from carsweep.trainable.data import load_inputs
from carsweep.trainable.gpu_augment import Normalize


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_metrics_json_matches_a_recomputation_from_predictions_csv(finished_analysis,
                                                                   prepared_dataset):
    metrics = read_metrics(finished_analysis)
    table = pd.read_csv(finished_analysis / "predictions.csv")
    dataset = load_dataset(prepared_dataset)
    assert table["path"].tolist() == dataset.rows("test")["path"].tolist()
    assert table["label"].tolist() == dataset.rows("test")["label"].tolist()
    probs = table[[f"p_{i}" for i in range(dataset.num_classes)]].to_numpy()
    labels = table["label"].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert (probs.argmax(axis=1) == table["pred"]).all()
    ranks = (probs > probs[np.arange(len(labels)), labels][:, None]).sum(axis=1)
    per_class = [np.mean(table.loc[labels == c, "pred"] == c) for c in range(dataset.num_classes)]
    assert metrics["test_images"] == len(table) == 32
    assert metrics["top1"] == pytest.approx(np.mean(ranks == 0))
    assert metrics["top5"] == pytest.approx(np.mean(ranks < 5))  # 4 classes: always 1
    assert metrics["mean_per_class_accuracy"] == pytest.approx(np.mean(per_class))
    assert metrics["split_scheme"] == dataset.split_scheme == "official"
    assert metrics["epochs"] == ANALYZE["epochs"]
    assert metrics["trained_on"] == "train+val"
    seeds = metrics["seeds"]
    assert [s["seed"] for s in seeds] == [metrics["best_trial"]["config"]["seed"] + k
                                         for k in range(ANALYZE["seeds"])]
    assert seeds[0]["top1"] == metrics["top1"]
    top1 = [s["top1"] for s in seeds]
    assert metrics["over_seeds"]["top1"]["mean"] == pytest.approx(np.mean(top1))
    assert metrics["over_seeds"]["top1"]["std"] == pytest.approx(np.std(top1, ddof=1))
    print(f"test top-1 over seeds: {top1}")


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_best_trial_and_its_cam_occlusion_are_reported(finished_analysis):
    metrics = read_metrics(finished_analysis)
    best = load_experiment(finished_analysis.parent).best()
    assert metrics["best_trial"]["trial_id"] == best.trial_id
    assert metrics["best_trial"]["value"] == pytest.approx(best.value)
    assert metrics["best_trial"]["config"]["lr"] == pytest.approx(best.config.lr)
    assert metrics["best_trial"]["cam_occlusion"] == describe(best.config)
    used = "cam-occlusion" in best.config.augmentation
    assert metrics["best_trial"]["cam_occlusion"].startswith("yes" if used else "no")
    html = (finished_analysis / "report.html").read_text()
    assert f"CAM-guided occlusion: <b>{describe(best.config)}</b>" in html


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_confusion_matrix_sums_to_the_test_count_and_matches_per_class_accuracy(finished_analysis):
    matrix = pd.read_csv(finished_analysis / "confusion_matrix.csv", index_col=0)
    per_class = pd.read_csv(finished_analysis / "per_class_accuracy.csv").set_index("class_name")
    table = pd.read_csv(finished_analysis / "predictions.csv")
    assert matrix.to_numpy().sum() == read_metrics(finished_analysis)["test_images"] == len(table)
    assert list(matrix.index) == list(matrix.columns)
    for name in matrix.index:
        row = matrix.loc[name]
        assert per_class.loc[name, "images"] == row.sum() == (table["true_name"] == name).sum()
        assert per_class.loc[name, "correct"] == row[name]
        assert per_class.loc[name, "accuracy"] == pytest.approx(row[name] / row.sum())
    pairs = pd.read_csv(finished_analysis / "confused_pairs.csv")
    for pair in pairs.itertuples():
        assert matrix.loc[pair.true_name, pair.pred_name] == pair.count
    assert pairs["count"].sum() == (table["label"] != table["pred"]).sum()


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_every_misclassified_image_has_its_gradcam_overlay(finished_analysis):
    table = pd.read_csv(finished_analysis / "predictions.csv")
    wrong = table[table["label"] != table["pred"]]
    shown = pd.read_csv(finished_analysis / "misclassified.csv")
    assert sorted(shown["path"]) == sorted(wrong["path"])
    by_path = wrong.set_index("path")
    for row in shown.itertuples():
        assert row.pred_name == by_path.loc[row.path, "pred_name"] != row.true_name
        with Image.open(finished_analysis / row.overlay) as overlay:
            assert overlay.mode == "RGB"
            assert max(overlay.size) == 224
        with Image.open(finished_analysis / row.example) as example:
            assert example.size[0] > 0
    print(f"{len(shown)} misclassified of {len(table)}")


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_report_embeds_the_confusion_matrix_and_the_gallery(finished_analysis):
    html = (finished_analysis / "report.html").read_text()
    for name in ("confusion_full.png", "intermediate_values.png"):
        assert data_uri(finished_analysis / name) in html, name
    sweep = read_metrics(finished_analysis)["sweep"]
    assert "intermediate_values.png" in sweep["plots"]  # Optuna's, from the sweep's study
    assert (f"is its {sweep['metric']} at its last epoch; the trials analyzed here are ranked "
            f"by their best {sweep['metric']} at any epoch") in html
    counted = sweep["importance"]["complete_trials"] + sweep["importance"]["stopped_trials"]
    assert counted == FINISHED_SWEEP["num_samples"]
    shown = pd.read_csv(finished_analysis / "misclassified.csv")
    assert len(shown) > 0, "the retrain should make some mistakes at 32 px after 2 epochs"
    for row in shown.head(60).itertuples():
        assert data_uri(finished_analysis / row.overlay) in html
    assert "src='gallery/" not in html
    assert 'src="' not in html


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_bad_input_is_one_line_and_keeps_the_previous_analysis(finished_analysis, tmp_path,
                                                               capsys):
    experiment = tmp_path / "copy"  # every file but the checkpoints: analyze stops before them
    shutil.copytree(finished_analysis.parent, experiment,
                    ignore=shutil.ignore_patterns("checkpoint_*"))
    before = (experiment / "analysis" / "metrics.json").read_text()

    assert main(["analyze", str(tmp_path)]) == 2
    assert "not an experiment folder" in capsys.readouterr().err

    sweep = yaml.safe_load((experiment / "sweep.yaml").read_text())
    sweep["dataset"] = str(tmp_path / "moved")
    (experiment / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["analyze", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "moved" in err

    assert main(["analyze", str(experiment), "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err

    (experiment / "trials.csv").unlink()
    for result in experiment.glob("trial_*/result.json"):
        result.write_text("")
    assert main(["analyze", str(experiment)]) == 2
    assert "no trial has reported" in capsys.readouterr().err
    assert (experiment / "analysis" / "metrics.json").read_text() == before
    assert sorted(p.name for p in experiment.iterdir() if p.name.startswith(".analysis")) == []


POINTING = {"classes": 4, "per_class": 60, "test_per_class": 10, "size": 64, "seed": 0}
POINTING_THRESHOLD = 0.5  # "most" correctly classified test images
TOLERANCE_PX = 4  # the pointing game's 15 px at 224 px, scaled to these 64 px pictures


@pytest.mark.slow  # the sweep + analyze fixture, or a training run
def test_gradcam_points_at_the_class_deciding_part(tmp_path):
    """The pointing game on the synthetic data, with the layer the gallery uses at 64 px."""
    source = make_synthetic_dataset(tmp_path / "source", **POINTING)
    prepare_dataset(source, tmp_path / "data", split="official", val_fraction=0.25, seed=0)
    dataset = load_dataset(tmp_path / "data")
    config = TrialConfig(epochs=8, batch_size=16, resize=64, augmentation="flip",
                         weights="none", optimizer="adam", lr=1e-3, num_workers=0,
                         device="cpu", data_cache="off")
    model = train(config, dataset, reporter=Quiet(), train_splits=("train", "val"),
                  eval_split=None).model
    logits, labels = predict(model, dataset, "test", config)
    correct = (logits.argmax(1) == labels).numpy()
    rows = dataset.rows("test")
    layer = cam_layer(config.model, config.resize)
    images = load_inputs([dataset.image_path(p) for p in rows["path"]], config)
    cams = class_maps(model, images, labels.tolist(), layer=layer,
                      normalize=Normalize(*normalization(config.model)))
    game = pointing_game(cams, rows, dataset.parts(), tolerance=TOLERANCE_PX)
    hits = game["hit"].to_numpy()[correct]
    chance = chance_of_a_hit(rows[correct], dataset.parts(), TOLERANCE_PX)
    print(f"pointing game ({layer}, +-{TOLERANCE_PX} px): {hits.mean():.2f} of "
          f"{len(hits)} correctly classified (test top-1 {correct.mean():.2f}); a random "
          f"point hits {chance:.2f}; threshold {POINTING_THRESHOLD}")
    assert correct.mean() >= 0.6, "the model must have learned the cue for the game to mean much"
    assert hits.mean() >= POINTING_THRESHOLD
    assert hits.mean() >= 3 * chance


def chance_of_a_hit(rows: pd.DataFrame, parts: pd.DataFrame, tolerance: float) -> float:
    """How often a uniformly random point would land in a (widened) part box."""
    shares = []
    for row in rows.itertuples():
        boxes = parts[parts["path"] == row.path][["x1", "y1", "x2", "y2"]].to_numpy(float)
        mask = np.zeros((row.height, row.width), dtype=bool)
        for x1, y1, x2, y2 in boxes:
            mask[max(0, int(y1 - tolerance)):int(y2 + tolerance) + 1,
                 max(0, int(x1 - tolerance)):int(x2 + tolerance) + 1] = True
        shares.append(mask.mean())
    return float(np.mean(shares))


class Quiet:
    def report(self, metrics, checkpoint_dir) -> None:
        pass


def test_many_classes_are_drawn_by_make_and_zoomed_on_the_most_confused(tmp_path):
    makes = ["Audi", "BMW", "Bentley", "Chevrolet", "Ford", "Volkswagen"]
    classes = [f"{make} Model {i} 2012" for make in makes for i in range(8)]  # 48 > 40 labelled
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 2, (48, 48)) + np.diag(rng.integers(5, 10, 48))
    bentley = classes.index("Bentley Model 3 2012")
    beetle = classes.index("Volkswagen Model 5 2012")
    matrix[bentley, beetle] = 30
    names, grouped = by_make(matrix, classes)
    assert names == sorted(makes)
    assert grouped.sum() == matrix.sum()
    audi, bmw = range(0, 8), range(8, 16)
    assert grouped[0, 1] == matrix[np.ix_(audi, bmw)].sum()
    assert np.trace(grouped) >= np.trace(matrix)
    chosen = plots.most_confused_classes(matrix)
    assert len(chosen) == plots.ZOOM_CLASSES
    assert {bentley, beetle} <= set(chosen)
    for draw in (plots.confusion_full, plots.confusion_by_make, plots.confusion_zoom):
        path = draw(matrix, classes, tmp_path / f"{draw.__name__}.png")
        with Image.open(path) as picture:
            assert picture.width > 500
    four = matrix[:4, :4]
    assert plots.confusion_zoom(four, classes[:4], tmp_path / "z.png") is None  # full shows it
    assert plots.confusion_by_make(four, ["a", "b", "c", "d"], tmp_path / "m.png") is None


@pytest.mark.slow  # the sweep + analyze fixture
def test_analysis_folder_is_readable_like_any_new_folder(finished_analysis):
    umask = os.umask(0)
    os.umask(umask)
    # Not mkdtemp's private 0700.
    assert finished_analysis.stat().st_mode & 0o777 == 0o777 & ~umask
