"""`analyze_experiment(folder)`: the honest test score of a sweep's best trial, and why it errs.

Besides the best trial's retrain (and its `seeds`): the top-K trials' retrains as an ensemble
and horizontal-flip test-time augmentation (analysis/ensemble.py), and calibration for every
analysis: the expected calibration error, a reliability diagram and a temperature.

Everything is checked before anything is trained, and EXPERIMENT/analysis/ is built in a
temporary folder beside it and renamed into place at the end: a failed or interrupted analyze
leaves the previous analysis as it was. The retrain (analysis/retrain.py) never touches the
trial's checkpoint, and the test split is read once, after training.

Where the retrains run is the `retrain` strategy the caller passes: here, one after another
(the default), or as Ray tasks on a cluster (carsweep.search.cluster_retrain, chosen by the
CLI), so this package never imports ray. Grad-CAM and the saved model use the first retrain's
model, which a cluster strategy rebuilds on this machine from the weights its task sent back.

The temperature (analysis/calibration.py) needs logits of images the model did not train on,
and the retrain trains on train+val. It is fitted on the val split with the best trial's own
best checkpoint: the same configuration trained on train only, which never saw val (the sweep
picked the trial and its epoch by val, which for one scalar hardly matters). Holding part of
train+val out of the retrain would lower the score being reported, and a second retrain on
train only would cost a whole training run. Whether it transfers to the retrained model is
measured, not assumed: metrics.json has the test ECE and NLL before and after it. Where the
checkpoint is gone or does not load, or val is empty, the temperature is 1 and
`calibration.fitted_on` says why. The fit runs before the retrains: it needs none of them.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any, TextIO

import pandas as pd

from carsweep.analysis import calibration, ensemble, gallery, importance, metrics, plots, report
from carsweep.analysis.gradcam import cam_layer
from carsweep.analysis.retrain import (
    TEST_SPLIT,
    Retrain,
    Retrained,
    retrain_locally,
    say,
    seed_summary,
)
from carsweep.analysis.sweep_plots import sweep_plots
from carsweep.config.files import (
    ANALYSIS_DIR,
    CONFUSED_PAIRS_FILE,
    CONFUSION_BY_MAKE_PLOT,
    CONFUSION_FILE,
    CONFUSION_FULL_PLOT,
    CONFUSION_ZOOM_PLOT,
    MISCLASSIFIED_FILE,
    PER_CLASS_FILE,
    PREDICTIONS_FILE,
    RELIABILITY_PLOT,
    STUDY_FILE,
    TEST_METRICS_FILE,
)
from carsweep.config.io import validate
from carsweep.config.trial import TrialConfig
from carsweep.data.folders import building_folder, check_output_path
from carsweep.data.manifest import PreparedDataset, load_dataset
from carsweep.errors import UserError
from carsweep.results import BestTrial, Experiment, load_experiment, open_study
from carsweep.results.console import metric_text
from carsweep.results.export import save_retrained_model
from carsweep.storage import BucketPath, is_bucket, local_copy, local_folder_for
from carsweep.trainable import build_model, load_checkpoint, predict, resolve_device
from carsweep.trainable.cam_occlusion import describe


def analyze_experiment(folder: Path, *, epochs: int | None = None, seeds: int = 1,
                       ensemble_of: int = 1, tta: bool = False, device: str | None = None,
                       retrain: Retrain = retrain_locally, fit_device: str | None = None,
                       out: TextIO | None = None) -> Path:
    """Retrain the best trial `seeds` times and the next `ensemble_of` - 1 trials once with
    `retrain` (their test passes mirrored too with `tta`), test, write folder/analysis/;
    returns that path. `fit_device` is where this process fits the temperature: "cpu" when
    the retrains run on a cluster (this process only coordinates, and its machine may have
    no GPU), else None: the retrains' device."""
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    experiment = load_experiment(folder)
    target = analysis_build_folder(experiment.folder)
    check_output_path(target, flag="the analysis folder", renamed_in=True)  # before hours of work
    trials = ensemble.top_trials(experiment, ensemble_of)
    best = trials[0]
    dataset = _dataset_of(experiment, best)
    configs = [_retrain_config(trial, epochs, device) for trial in trials]
    jobs = ensemble.retrain_jobs(trials, configs, seeds, tta)
    with building_folder(target, final=not is_bucket(experiment.folder)) as building:
        _say_plan(experiment, trials, configs[0], seeds, tta, out)
        fitted = _fit_temperature(best, dataset, fit_device or configs[0].device, out)
        runs = retrain(jobs, dataset, out)
        _build(experiment, trials, dataset, configs[0], runs[:seeds], runs[seeds:], fitted, tta,
               building, out)
    target = publish(target, experiment.folder)
    say(f"[analyze] report: {target / report.REPORT_FILE}", out)
    return target


def analysis_build_folder(experiment: Path | BucketPath) -> Path:
    """Where the analysis folder is built: in the experiment folder; for an experiment in a
    bucket, in this machine's folder for it (`publish` uploads it), after proving the bucket
    takes a file there, so a read-only prefix stops before hours of retraining."""
    if not is_bucket(experiment):
        return experiment / ANALYSIS_DIR
    probe = experiment / ANALYSIS_DIR / f".carsweep-probe-{secrets.token_hex(4)}"
    probe.write_text("")
    probe.unlink()
    local = local_folder_for(experiment)
    local.mkdir(parents=True, exist_ok=True)
    return local / ANALYSIS_DIR


def publish(built: Path, experiment: Path | BucketPath) -> Path | BucketPath:
    """The analysis folder where readers look: already in place for a local experiment; for
    one in a bucket, uploaded over the previous analysis (removed first, as a local analyze
    replaces the folder whole)."""
    if not is_bucket(experiment):
        return built
    remote = experiment / ANALYSIS_DIR
    remote.remove_tree()
    remote.upload_tree(built)
    return remote


def _say_plan(experiment: Experiment, trials: list[BestTrial], config: TrialConfig, seeds: int,
              tta: bool, out: TextIO | None) -> None:
    best = trials[0]
    members = (f"; the next {len(trials) - 1} trial(s) once each for an ensemble of "
               f"{len(trials)}" if len(trials) > 1 else "")
    flipped = "; test images also mirrored (TTA)" if tta else ""
    metric = experiment.sweep.metric
    say(f"[analyze] best trial {best.trial_id} ({metric} {metric_text(metric, best.value)}); "
        f"retraining on train+val, {config.epochs} epochs, {seeds} seed(s){members}{flipped}",
        out)


def _build(experiment: Experiment, trials: list[BestTrial], dataset: PreparedDataset,
           config: TrialConfig, runs: list[Retrained], others: list[Retrained],
           fitted: dict[str, Any], tta: bool, folder: Path, out: TextIO | None) -> None:
    """Everything after the retrains: `runs` are the best trial's seeds, `others` the other
    ensemble members' retrains, `fitted` the temperature's fit."""
    best = trials[0]
    paths = dataset.rows(TEST_SPLIT)["path"].tolist()
    tables = [metrics.predictions_table(paths, r.labels, r.probs, dataset.classes) for r in runs]
    per_seed = [metrics.test_metrics(t, dataset.num_classes) for t in tables]
    predictions = tables[0]  # the first retrain is the one explained below
    predictions.to_csv(folder / PREDICTIONS_FILE, index=False)
    matrix = metrics.confusion_matrix(predictions["label"], predictions["pred"],
                                      dataset.num_classes)
    pd.DataFrame(matrix, index=dataset.classes, columns=dataset.classes).to_csv(
        folder / CONFUSION_FILE)
    per_class = metrics.per_class_accuracy(matrix, dataset.classes)
    per_class.to_csv(folder / PER_CLASS_FILE, index=False)
    pairs = metrics.most_confused_pairs(matrix, dataset.classes)
    pairs.to_csv(folder / CONFUSED_PAIRS_FILE, index=False)
    say("[analyze] drawing confusion matrices", out)
    plots.confusion_full(matrix, dataset.classes, folder / CONFUSION_FULL_PLOT)
    plots.confusion_by_make(matrix, dataset.classes, folder / CONFUSION_BY_MAKE_PLOT)
    plots.confusion_zoom(matrix, dataset.classes, folder / CONFUSION_ZOOM_PLOT)
    layer = cam_layer(config.model, config.resize)
    shown = gallery.write_gallery(runs[0].model, runs[0].config, dataset, predictions, folder,
                                  layer, out)
    shown.to_csv(folder / MISCLASSIFIED_FILE, index=False)
    save_retrained_model(folder, runs[0].model, runs[0].config, dataset.classes)  # for export
    fitted = _on_test(fitted, runs[0])
    plots.reliability_diagram(runs[0].probs, runs[0].labels, fitted["temperature"],
                              folder / RELIABILITY_PLOT)
    say("[analyze] hyperparameter importance and sweep plots", out)
    sweep_summary = _sweep_pictures(experiment, folder)
    summary = _metrics_json(experiment, best, dataset, config, per_seed, runs, layer)
    summary["calibration"] = fitted
    summary |= ensemble.variant_metrics(folder, dataset, paths, [runs[0], *others], tta)
    if others:
        summary["ensemble"]["members"] = ensemble.members_json(trials, [runs[0], *others])
    summary["sweep"] = sweep_summary
    (folder / TEST_METRICS_FILE).write_text(json.dumps(summary, indent=2) + "\n")
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


def _fit_temperature(best: BestTrial, dataset: PreparedDataset, device: str,
                     out: TextIO | None) -> dict[str, Any]:
    """The start of metrics.json's `calibration`: the temperature fitted on val with the best
    trial's checkpoint, or 1.0 and why not. Done before the retrains: it needs none of them."""
    fitted: dict[str, Any] = {"bins": calibration.CALIBRATION_BINS, "temperature": 1.0}
    val = dataset.rows("val")
    if best.checkpoint is None or val.empty:
        why = "no val images" if val.empty else f"trial {best.trial_id} kept no checkpoint"
        return fitted | {"fitted_on": f"not fitted: {why}"}
    try:
        state = load_checkpoint(local_copy(best.checkpoint))
    except UserError as error:  # a damaged checkpoint costs the temperature, not the analysis
        return fitted | {"fitted_on": f"not fitted: {error}"}
    say(f"[analyze] fitting a temperature on {len(val)} val images with trial "
        f"{best.trial_id}'s checkpoint", out)
    model = build_model(dataset.num_classes, state["model"], best.config.model)
    model = model.to(resolve_device(device)).eval()
    # Decoded, not cached: on a cluster's driver a cache would be built for a few images.
    logits, labels = predict(model, dataset, "val", best.config.model_copy(
        update={"device": device, "data_cache": "off"}))
    logits, labels = logits.numpy(), labels.numpy()
    temperature = calibration.fit_temperature(logits, labels)
    if temperature is None:
        why = (f"trial {best.trial_id}'s checkpoint predicts all {len(val)} val images right, so "
               "a smaller T always fits them better and there is no minimum to fit")
        say(f"[analyze] no temperature: {why}", out)
        return fitted | {"fitted_on": f"not fitted: {why}"}
    nll = calibration.negative_log_likelihood(logits, labels)
    nll_calibrated = calibration.negative_log_likelihood(logits, labels, temperature)
    say(f"[analyze] temperature {temperature:.3f} (val NLL {nll:.3f} -> {nll_calibrated:.3f})",
        out)
    return fitted | {
        "temperature": temperature,
        "fitted_on": f"val split ({len(val)} images), trial {best.trial_id}'s checkpoint "
                     f"{best.checkpoint.name} (epoch {state['epoch']})",
        "val_nll": nll,
        "val_nll_calibrated": nll_calibrated,
    }


def _on_test(fitted: dict[str, Any], retrained: Retrained) -> dict[str, Any]:
    """metrics.json's `calibration`: the fit, and what its temperature does to the retrained
    model's test ECE and NLL."""
    temperature, probs, labels = fitted["temperature"], retrained.probs, retrained.labels
    logits = calibration.log_probabilities(probs)
    return fitted | {
        "test_ece": calibration.expected_calibration_error(probs, labels),
        "test_ece_calibrated": calibration.expected_calibration_error(
            calibration.scaled(probs, temperature), labels),
        "test_nll": calibration.negative_log_likelihood(logits, labels),
        "test_nll_calibrated": calibration.negative_log_likelihood(logits, labels, temperature),
    }


def _sweep_pictures(experiment: Experiment, folder: Path) -> dict[str, Any]:
    """Importance and Optuna's plots of the sweep's study, and what the report says of them."""
    sweep = experiment.sweep
    summary = {"metric": sweep.metric, "mode": sweep.mode, "trials": len(experiment.trials),
               "searched": list(sweep.searched())}
    study = open_study(experiment.folder)
    if study is None:
        return summary | {"importance": {"skipped": f"no study file ({STUDY_FILE}): a sweep "
                                                    "from before carsweep kept one"}}
    found = importance.param_importances(study)
    drawn = sweep_plots(study, folder, rungs=sweep.rung_epochs()[:-1],
                        importances=found["importances"])
    return summary | {"importance": found, "plots": [path.name for path in drawn]}


def _dataset_of(experiment: Experiment, best: BestTrial) -> PreparedDataset:
    """The dataset the sweep trained on, still where it was and still the same classes."""
    if not experiment.sweep.dataset:
        raise UserError(f"{experiment.folder}: sweep.yaml names no dataset")
    dataset = load_dataset(experiment.sweep.dataset)
    if best.classes and list(best.classes) != list(dataset.classes):
        raise UserError(f"{dataset.folder}: its classes differ from those trial "
                        f"{best.trial_id} trained on; was the dataset prepared again?")
    if dataset.rows(TEST_SPLIT).empty:
        raise UserError(f"{dataset.folder}: the test split has no images")
    if is_bucket(dataset.root):
        # Here: the test split for the gallery (val for the temperature is mirrored as it is
        # read); each retrain mirrors what it reads on its own node.
        dataset.image_files(dataset.rows(TEST_SPLIT))
        return dataset
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
