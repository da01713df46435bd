"""analyze beyond one model: TTA and ensemble probabilities are the means they claim, every
analysis reports calibration, and the temperature it fits is the one export stores."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from sweep_runs import linked_copy
from test_bad_input import only_line
from trainable_data import make_tiny_dataset, one_torch_thread  # noqa: F401 - autouse

from carsweep.analysis import calibration, metrics
from carsweep.analysis.analyze import analyze_experiment
from carsweep.analysis.ensemble import VARIANT_FILES
from carsweep.analysis.retrain import retrain_locally, train_and_test
from carsweep.cli import main
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.results import load_experiment
from carsweep.results.export import load_export
from carsweep.trainable import build_model, load_checkpoint, predict
from carsweep.trainable.augment import normalization
from carsweep.trainable.data import load_inputs
from carsweep.trainable.gpu_augment import Normalize

CONFIG = TrialConfig(optimizer="adam", lr=1e-3, epochs=1, batch_size=8, resize=32,
                     num_workers=0, device="cpu", data_cache="off")


def test_tta_probabilities_are_the_mean_over_each_image_and_its_mirror_image(tmp_path,
                                                                              monkeypatch):
    dataset = load_dataset(make_tiny_dataset(tmp_path, per_split={"train": 4, "val": 1,
                                                                  "test": 3}))
    written = []
    monkeypatch.setattr("carsweep.trainable.run.save_checkpoint",
                        lambda folder, *args: written.append(folder))
    tested = train_and_test(CONFIG.model_copy(update={"epochs": 2}), dataset,
                            lambda line: None, tta=True)
    assert written == []  # a retrain writes no checkpoint: its model is handed over in memory
    images = load_inputs([dataset.image_path(p) for p in dataset.rows("test")["path"]], CONFIG)
    with torch.no_grad():
        normalize = Normalize(*normalization(CONFIG.model))
        plain = torch.softmax(tested.model(normalize(images)).double(), dim=1)
        mirrored = torch.softmax(tested.model(normalize(images.flip(-1))).double(), dim=1)
    np.testing.assert_allclose(tested.probs, plain.numpy(), atol=1e-6)
    np.testing.assert_allclose(tested.tta_probs, ((plain + mirrored) / 2).numpy(), atol=1e-6)
    assert not np.allclose(tested.tta_probs, tested.probs)  # the mirror image did count


@pytest.fixture(scope="module")
def ensembled(finished_experiment, tmp_path_factory):
    """`analyze --ensemble 2 --tta --epochs 1` of a copy of the finished sweep (its trials
    linked, not copied), with every retrain the strategy returned kept for the tests."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    copy = linked_copy(finished_experiment, tmp_path_factory.mktemp("ensembled") / "experiment")
    kept = []

    def keeping(jobs, dataset, out=None):
        runs = retrain_locally(jobs, dataset, out)
        kept.extend(runs)
        return runs

    printed = io.StringIO()
    folder = analyze_experiment(copy, epochs=1, ensemble_of=2, tta=True, retrain=keeping,
                                out=printed)
    return folder, kept, printed.getvalue()


def _probs(folder, name: str) -> np.ndarray:
    return metrics.probabilities(pd.read_csv(folder / name))


@pytest.mark.slow  # the finished sweep, then two retrains
def test_ensemble_and_tta_probabilities_are_the_means_they_claim(ensembled, finished_experiment):
    folder, runs, printed = ensembled
    best, member = runs
    summary = json.loads((folder / "metrics.json").read_text())
    ranked = load_experiment(finished_experiment).trials["trial_id"].tolist()
    assert [m["trial_id"] for m in summary["ensemble"]["members"]] == ranked[:2]
    assert f"retrain 2/2 (trial {ranked[1]}, seed 0)" in printed
    np.testing.assert_allclose(_probs(folder, "predictions.csv"), best.probs)
    np.testing.assert_allclose(_probs(folder, VARIANT_FILES["tta"]), best.tta_probs)
    np.testing.assert_allclose(_probs(folder, VARIANT_FILES["ensemble"]),
                               (best.probs + member.probs) / 2)
    np.testing.assert_allclose(_probs(folder, VARIANT_FILES["ensemble_tta"]),
                               (best.tta_probs + member.tta_probs) / 2)
    labels = best.labels
    for key, probs in (("tta", best.tta_probs), ("ensemble", (best.probs + member.probs) / 2)):
        shown = summary[key]
        assert shown["top1"] == pytest.approx(metrics.top_k_accuracy(probs, labels, 1))
        assert shown["top5"] == pytest.approx(metrics.top_k_accuracy(probs, labels, 5))
        assert shown["ece"] == pytest.approx(calibration.expected_calibration_error(probs, labels))
    assert summary["ensemble"]["tta"]["top1"] == pytest.approx(metrics.top_k_accuracy(
        (best.tta_probs + member.tta_probs) / 2, labels, 1))
    html = (folder / "report.html").read_text()
    assert f"ensemble of 2 trials ({ranked[0]}, {ranked[1]})" in html


@pytest.mark.slow  # the finished sweep, then two retrains
def test_calibration_is_fitted_on_val_with_the_best_checkpoint_and_exported(
        ensembled, prepared_dataset, tmp_path, capsys):
    folder, (best_run, _), printed = ensembled
    summary = json.loads((folder / "metrics.json").read_text())
    assert summary["ece"] == pytest.approx(
        calibration.expected_calibration_error(best_run.probs, best_run.labels))
    fitted = summary["calibration"]
    best = load_experiment(folder.parent).best()
    assert fitted["fitted_on"].startswith(f"val split (24 images), trial {best.trial_id}'s "
                                          f"checkpoint {best.checkpoint.name} (epoch ")
    dataset = load_dataset(prepared_dataset)
    model = build_model(4, load_checkpoint(best.checkpoint)["model"], best.config.model).eval()
    logits, labels = predict(model, dataset, "val", best.config)
    assert fitted["temperature"] == pytest.approx(
        calibration.fit_temperature(logits.numpy(), labels.numpy()), rel=1e-6)
    assert fitted["val_nll_calibrated"] <= fitted["val_nll"]
    assert (f"[analyze] temperature {fitted['temperature']:.3f} (val NLL {fitted['val_nll']:.3f} "
            f"-> {fitted['val_nll_calibrated']:.3f})") in printed
    assert fitted["test_ece_calibrated"] == pytest.approx(calibration.expected_calibration_error(
        calibration.scaled(best_run.probs, fitted["temperature"]), best_run.labels))
    assert (folder / "reliability.png").stat().st_size > 0
    assert "Reliability diagram" in (folder / "report.html").read_text()

    out = tmp_path / "best.pt"
    capsys.readouterr()
    assert main(["export", str(folder.parent), "--out", str(out)]) == 0
    assert f", temperature {fitted['temperature']:.3f}) from " in capsys.readouterr().out
    exported = load_export(out)
    assert exported.temperature == fitted["temperature"]
    assert torch.load(out, weights_only=True)["calibration"] == fitted


@pytest.mark.slow  # the finished sweep
@pytest.mark.parametrize(("flags", "message"), [
    (["--ensemble", "0"], "carsweep analyze: error: --ensemble must be at least 1, got 0"),
    (["--ensemble", "9"], "carsweep analyze: error: --ensemble 9: the sweep has 4 trial(s) with "
     "a result that did not diverge; give --ensemble 4 or less"),
])
def test_an_ensemble_the_sweep_cannot_make_is_one_line(finished_experiment, tmp_path, capsys,
                                                       flags, message):
    before = sorted(p.name for p in finished_experiment.iterdir())
    assert main(["analyze", str(finished_experiment), *flags]) == 2
    assert only_line(capsys.readouterr().err) == message
    assert sorted(p.name for p in finished_experiment.iterdir()) == before
