"""`analyze_experiment(folder)`: the honest test score of a sweep's best trial, and why it errs.

Everything is checked before anything is trained, and EXPERIMENT/analysis/ is built in a
temporary folder beside it and renamed into place at the end: a failed or interrupted analyze
leaves the previous analysis as it was. The retrain (analysis/retrain.py) never touches the
trial's checkpoint, and the test split is read once, after training.

Where the retrains run is the `retrain` strategy the caller passes: here, one after another
(the default), or as Ray tasks on a cluster (carsweep.search.cluster_retrain, chosen by the
CLI), so this package never imports ray. Grad-CAM and the saved model use the first retrain's
model, which a cluster strategy rebuilds on this machine from the weights its task sent back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from carsweep.analysis import gallery, importance, metrics, plots, report
from carsweep.analysis.gradcam import cam_layer
from carsweep.analysis.retrain import (
    TEST_SPLIT,
    Retrain,
    Retrained,
    retrain_locally,
    say,
    seed_summary,
)
from carsweep.config.io import validate
from carsweep.config.trial import TrialConfig
from carsweep.data.folders import building_folder
from carsweep.data.manifest import PreparedDataset, load_dataset
from carsweep.errors import UserError
from carsweep.results import BestTrial, Experiment, load_experiment
from carsweep.results.export import save_retrained_model
from carsweep.trainable.cam_occlusion import describe

ANALYSIS_DIR = "analysis"


def analyze_experiment(folder: Path, *, epochs: int | None = None, seeds: int = 1,
                       device: str | None = None, retrain: Retrain = retrain_locally,
                       out: TextIO | None = None) -> Path:
    """Retrain the best trial `seeds` times with `retrain`, test, write folder/analysis/;
    returns that path."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    experiment = load_experiment(Path(folder))
    best = experiment.best()
    dataset = _dataset_of(experiment, best)
    config = _retrain_config(best, epochs, device)
    target = experiment.folder / ANALYSIS_DIR
    with building_folder(target) as building:
        _build(experiment, best, dataset, config, seeds, retrain, building, out)
    say(f"[analyze] report: {target / report.REPORT_FILE}", out)
    return target


def _build(experiment: Experiment, best: BestTrial, dataset: PreparedDataset,
           config: TrialConfig, seeds: int, retrain: Retrain, folder: Path,
           out: TextIO | None) -> None:
    say(f"[analyze] best trial {best.trial_id} ({experiment.sweep.metric} {best.value:.4f}); "
        f"retraining on train+val, {config.epochs} epochs, {seeds} seed(s)", out)
    runs = retrain(config, dataset, seeds, out)
    paths = dataset.rows(TEST_SPLIT)["path"].tolist()
    tables = [metrics.predictions_table(paths, r.labels, r.probs, dataset.classes) for r in runs]
    per_seed = [metrics.test_metrics(t, dataset.num_classes) for t in tables]
    predictions = tables[0]  # the first retrain is the one explained below
    predictions.to_csv(folder / "predictions.csv", index=False)
    matrix = metrics.confusion_matrix(predictions["label"], predictions["pred"],
                                      dataset.num_classes)
    pd.DataFrame(matrix, index=dataset.classes, columns=dataset.classes).to_csv(
        folder / "confusion_matrix.csv")
    per_class = metrics.per_class_accuracy(matrix, dataset.classes)
    per_class.to_csv(folder / "per_class_accuracy.csv", index=False)
    pairs = metrics.most_confused_pairs(matrix, dataset.classes)
    pairs.to_csv(folder / "confused_pairs.csv", index=False)
    say("[analyze] drawing confusion matrices", out)
    plots.confusion_full(matrix, dataset.classes, folder / "confusion_full.png")
    plots.confusion_by_make(matrix, dataset.classes, folder / "confusion_by_make.png")
    plots.confusion_zoom(matrix, dataset.classes, folder / "confusion_zoom.png")
    layer = cam_layer(config.model, config.resize)
    shown = gallery.write_gallery(runs[0].model, runs[0].config, dataset, predictions, folder,
                                  layer, out)
    shown.to_csv(folder / "misclassified.csv", index=False)
    save_retrained_model(folder, runs[0].model, runs[0].config, dataset.classes)  # for export
    say("[analyze] hyperparameter importance and sweep plots", out)
    sweep_summary = _sweep_pictures(experiment, best, folder)
    summary = _metrics_json(experiment, best, dataset, config, per_seed, runs, layer)
    summary["sweep"] = sweep_summary
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
    report.write_report(folder, summary, per_class, pairs, shown)


def _metrics_json(experiment: Experiment, best: BestTrial, dataset: PreparedDataset,
                  config: TrialConfig, per_seed: list[dict], runs: list[Retrained], layer: str
                  ) -> dict[str, Any]:
    summary: dict[str, Any] = dict(per_seed[0])
    summary |= {
        "split_scheme": dataset.split_scheme,
        "dataset": str(dataset.folder),
        "classes": dataset.num_classes,
        "trained_on": "train+val",
        "epochs": config.epochs,
        "seeds": [{"seed": r.config.seed, **m, **r.placement.as_json()}
                  for r, m in zip(runs, per_seed, strict=True)],
        "best_trial": {
            "trial_id": best.trial_id,
            "metric": experiment.sweep.metric,
            "value": best.value,
            "cam_occlusion": describe(best.config),
            "config": best.config.model_dump(mode="json"),
        },
        "gradcam_layer": layer,
    }
    if len(per_seed) > 1:
        summary["over_seeds"] = seed_summary(per_seed)
    return summary


def _sweep_pictures(experiment: Experiment, best: BestTrial, folder: Path) -> dict[str, Any]:
    sweep = experiment.sweep
    searched = list(sweep.searched())
    found = importance.param_importances(experiment.trials, sweep)
    plots.importance_bars(found["importances"], folder / "importance.png")
    plots.metric_vs_params(experiment.trials, searched, sweep.metric,
                           folder / "metric_vs_params.png")
    histories = {str(t): experiment.history(str(t)) for t in experiment.trials["trial_id"]}
    stops = [epoch for epoch, _ in sweep.asha_rungs()[:-1]] if sweep.scheduler == "asha" else []
    plots.asha_rungs(histories, sweep.metric, stops, best.trial_id, folder / "asha_rungs.png")
    return {"metric": sweep.metric, "mode": sweep.mode, "trials": len(experiment.trials),
            "searched": searched, "importance": found}


def _dataset_of(experiment: Experiment, best: BestTrial) -> PreparedDataset:
    """The dataset the sweep trained on, still where it was and still the same classes."""
    if not experiment.sweep.dataset:
        raise UserError(f"{experiment.folder}: sweep.yaml names no dataset")
    dataset = load_dataset(Path(experiment.sweep.dataset))
    if best.classes and list(best.classes) != list(dataset.classes):
        raise UserError(f"{dataset.folder}: its classes differ from those trial "
                        f"{best.trial_id} trained on; was the dataset prepared again?")
    if dataset.rows(TEST_SPLIT).empty:
        raise UserError(f"{dataset.folder}: the test split has no images")
    missing = [p for p in dataset.rows(TEST_SPLIT, "train", "val")["path"]
               if not dataset.image_path(p).is_file()]
    if missing:
        raise UserError(f"{dataset.folder}: {len(missing)} image(s) of the manifest are "
                        f"missing, e.g. {dataset.image_path(missing[0])}")
    return dataset


def _retrain_config(best: BestTrial, epochs: int | None, device: str | None) -> TrialConfig:
    """The best trial's config, with --epochs / --device applied (validated again)."""
    update: dict[str, Any] = {}
    if epochs is not None:
        update["epochs"] = epochs
    if device is not None:
        update["device"] = device
    data = best.config.model_dump(mode="json") | update
    return validate(TrialConfig, data, f"trial {best.trial_id} with --epochs/--device")
