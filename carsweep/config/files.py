"""The names of what an experiment folder holds (docs/experiment-folder.md), in one place.

Every module that writes or reads an experiment folder takes its names from here, those of the
files inside a checkpoint folder too (carsweep.trainable.checkpoint writes them; the results
store reads them without importing torch). Ray Tune's own names are here too, where carsweep
reads them: Ray writes them, carsweep must find them.
"""

from __future__ import annotations

SWEEP_FILE = "sweep.yaml"  # the resolved SweepConfig
STUDY_FILE = "study.journal"  # the searcher's Optuna study (JournalStorage, one line per write)
STUDY_NAME = "carsweep"  # the one study in STUDY_FILE
TRIALS_FILE = "trials.csv"  # the trials table at the end of a sweep (a copy for spreadsheets)
TUNER_FILE = "tuner.pkl"  # (Ray) the Tuner, for Tuner.restore
# (Ray) the driver's experiment state, experiment_state-<session>.json: one per run of the
# driver, rewritten at each snapshot it uploads
EXPERIMENT_STATE_PREFIX = "experiment_state-"
TRIAL_PREFIX = "trial_"  # trial_<trial_id>/: one folder per trial
RESULT_FILE = "result.json"  # (Ray) a trial's reports, one JSON object per line
PARAMS_FILE = "params.json"  # (Ray) a trial's parameters
ERROR_FILE = "error.txt"  # (Ray) a trial's failures, each headed "Failure # N"
ANALYSIS_DIR = "analysis"  # written by `carsweep analyze`
REPORT_FILE = "report.html"  # in ANALYSIS_DIR
TEST_METRICS_FILE = "metrics.json"  # in ANALYSIS_DIR
RETRAINED_MODEL_DIR = "model"  # in ANALYSIS_DIR: the retrained model, a checkpoint folder
CHECKPOINT_FILE = "checkpoint.pt"  # in a checkpoint folder: weights (and optimizer, for a trial's)
TRIAL_FILE = "trial.yaml"  # in a checkpoint folder: the TrialConfig that trained it

# The rest of ANALYSIS_DIR: analyze writes them, the report shows and links them.
PREDICTIONS_FILE = "predictions.csv"  # every test image: label, prediction, probabilities
CONFUSION_FILE = "confusion_matrix.csv"
PER_CLASS_FILE = "per_class_accuracy.csv"
CONFUSED_PAIRS_FILE = "confused_pairs.csv"
MISCLASSIFIED_FILE = "misclassified.csv"  # the gallery's mistakes, most confident first
CONFUSION_FULL_PLOT = "confusion_full.png"
CONFUSION_BY_MAKE_PLOT = "confusion_by_make.png"
CONFUSION_ZOOM_PLOT = "confusion_zoom.png"
RELIABILITY_PLOT = "reliability.png"
# Optuna's sweep plots (analysis/sweep_plots.py)
HISTORY_PLOT = "optimization_history.png"
CURVES_PLOT = "intermediate_values.png"
SLICE_PLOT = "slice.png"
PARALLEL_PLOT = "parallel_coordinate.png"
IMPORTANCE_PLOT = "importance.png"


def trial_dir_name(trial_id: str) -> str:
    """The folder of a trial, relative to the experiment folder."""
    return f"{TRIAL_PREFIX}{trial_id}"
