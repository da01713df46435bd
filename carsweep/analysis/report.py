"""report.html: one page with everything analyze found, readable offline from any folder.

Every picture is embedded as a base64 data URI, so the file works when copied alone or
opened straight from disk (no server, no scripts). The gallery shows the most confident
mistakes first and at most GALLERY_IN_REPORT of them; all of them are in gallery/ and
misclassified.csv.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd

from carsweep.analysis.retrain import Placement
from carsweep.config.files import (
    CONFUSED_PAIRS_FILE,
    CONFUSION_BY_MAKE_PLOT,
    CONFUSION_FILE,
    CONFUSION_FULL_PLOT,
    CONFUSION_ZOOM_PLOT,
    CURVES_PLOT,
    HISTORY_PLOT,
    IMPORTANCE_PLOT,
    MISCLASSIFIED_FILE,
    PARALLEL_PLOT,
    PER_CLASS_FILE,
    RELIABILITY_PLOT,
    REPORT_FILE,
    SLICE_PLOT,
)
from carsweep.config.io import write_text_atomic
from carsweep.results.console import metric_text

GALLERY_IN_REPORT = 60
TABLE_ROWS = 25

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:14px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left} th{background:#f3f3f3}
.kpi{display:inline-block;margin:0 1.5em .5em 0} .kpi b{font-size:1.6em;display:block}
img.plot{max-width:100%;border:1px solid #eee;margin:.3em 0}
.gallery{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:6px;width:470px;font-size:13px}
.card img{height:160px;margin-right:4px;vertical-align:top}
.wrong{color:#b00} .note{color:#666;font-size:13px}
"""


def write_report(folder: Path, summary: dict[str, Any], per_class: pd.DataFrame,
                 pairs: pd.DataFrame, shown: pd.DataFrame) -> Path:
    """Write folder/report.html from what analyze wrote into `folder`."""
    sections = [
        _header(summary),
        _section("Calibration", _calibration(folder, summary)),
        _section("Confusion matrix", _figures(folder, [
            (CONFUSION_ZOOM_PLOT, "The most confused classes"),
            (CONFUSION_BY_MAKE_PLOT, "Grouped by make"),
            (CONFUSION_FULL_PLOT, "All classes")]) + _link(CONFUSION_FILE)),
        _section("Misclassified test images", gallery_section(folder, shown)),
        _section("Most confused pairs", _table(pairs) + _link(CONFUSED_PAIRS_FILE)),
        _section("Per-class accuracy (worst first)",
                 _table(per_class.head(TABLE_ROWS)) + _link(PER_CLASS_FILE)),
        _section("The sweep", _sweep(folder, summary["sweep"])),
        _section("Best trial's configuration", _config(summary["best_trial"]["config"])),
    ]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>carsweep analysis: "
            f"{escape(summary['best_trial']['trial_id'])}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(sections)}</body></html>\n")
    path = folder / REPORT_FILE
    write_text_atomic(path, page)
    return path


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _header(summary: dict[str, Any]) -> str:
    best = summary["best_trial"]
    kpis = [("test top-1", _pct(summary["top1"])), ("test top-5", _pct(summary["top5"])),
            ("mean per-class accuracy", _pct(summary["mean_per_class_accuracy"])),
            ("expected calibration error", f"{summary['ece']:.3f}"),
            ("test images", str(summary["test_images"]))]
    spread = ""
    if "over_seeds" in summary:
        top1 = summary["over_seeds"]["top1"]
        spread = (f"<p>Over {len(summary['seeds'])} retrains (seeds "
                  f"{', '.join(str(s['seed']) for s in summary['seeds'])}): top-1 "
                  f"{_pct(top1['mean'])} ± {_pct(top1['std'])} (min {_pct(top1['min'])}, "
                  f"max {_pct(top1['max'])}).</p>")
    return (
        "<h1>carsweep analysis</h1>"
        f"<p>Best trial <b>{escape(best['trial_id'])}</b> ({escape(best['metric'])} "
        f"{metric_text(best['metric'], best['value'])} in the sweep), retrained on "
        f"{escape(summary['trained_on'])} for "
        f"{summary['epochs']} epochs from its starting weights, then tested once on the "
        f"{escape(summary['split_scheme'])} test split of {escape(summary['dataset'])}.</p>"
        + "".join(f"<div class='kpi'><b>{v}</b>{escape(k)}</div>" for k, v in kpis)
        + spread
        + _variants(summary)
        + f"<p>{escape(_where(summary['seeds']))}</p>"
        + f"<p>CAM-guided occlusion: <b>{escape(best['cam_occlusion'])}</b></p>"
    )


def _variants(summary: dict[str, Any]) -> str:
    """The single best model next to its TTA and the ensemble (and the ensemble's TTA)."""
    rows = [("the best trial's model", summary)]
    if "tta" in summary:
        rows.append(("with horizontal-flip TTA", summary["tta"]))
    if "ensemble" in summary:
        ensemble = summary["ensemble"]
        members = ", ".join(m["trial_id"] for m in ensemble["members"])
        rows.append((f"ensemble of {len(ensemble['members'])} trials ({members})", ensemble))
        if "tta" in ensemble:
            rows.append(("ensemble with TTA", ensemble["tta"]))
    if len(rows) == 1:
        return ""
    cells = "".join(f"<tr><td>{escape(name)}</td><td>{_pct(m['top1'])}</td>"
                    f"<td>{_pct(m['top5'])}</td><td>{m['ece']:.3f}</td></tr>"
                    for name, m in rows)
    return ("<table><tr><th>test predictions of</th><th>top-1</th><th>top-5</th><th>ECE</th>"
            f"</tr>{cells}</table><p class='note'>Ensemble: the mean of the members' softmaxes; "
            "TTA: the mean of the softmaxes of each image and its mirror image.</p>")


def _calibration(folder: Path, summary: dict[str, Any]) -> str:
    fitted = summary["calibration"]
    if fitted["temperature"] == 1.0:
        text = f"<p>No temperature ({escape(fitted['fitted_on'])}).</p>"
    else:
        text = (f"<p>Temperature <b>{fitted['temperature']:.3f}</b>, fitted on the "
                f"{escape(fitted['fitted_on'])} (NLL {fitted['val_nll']:.3f} &rarr; "
                f"{fitted['val_nll_calibrated']:.3f}); on test it takes the ECE from "
                f"{fitted['test_ece']:.3f} to {fitted['test_ece_calibrated']:.3f} and the NLL "
                f"from {fitted['test_nll']:.3f} to {fitted['test_nll_calibrated']:.3f}. "
                "<code>carsweep export</code> stores it and <code>carsweep predict</code> "
                "divides the logits by it.</p>")
    return (f"<p class='note'>Expected calibration error over {fitted['bins']} equal-width "
            "confidence bins: how far the model's top probability is from how often it is "
            "right (0 = calibrated).</p>" + text
            + _figures(folder, [(RELIABILITY_PLOT, "Reliability diagram")]))


def _where(seeds: list[dict[str, Any]]) -> str:
    """One line: where each retrain ran (metrics.json's per-seed placement)."""
    placed = [(seed["seed"], Placement.from_json(seed)) for seed in seeds]
    if all(placement.ran_on == "local" for _, placement in placed):
        return f"Retrained on {placed[0][1].describe()}."
    return "Retrained as Ray tasks on the cluster: " + ", ".join(
        f"seed {seed} on {placement.describe()}" for seed, placement in placed) + "."


def gallery_section(folder: Path, shown: pd.DataFrame) -> str:
    """The gallery's HTML: the first GALLERY_IN_REPORT mistakes of `shown` as cards."""
    if shown.empty:
        return "<p>No test image was misclassified.</p>"
    cards = []
    for row in shown.head(GALLERY_IN_REPORT).itertuples(index=False):
        example = (f"<img src='{data_uri(folder / row.example)}' alt='training example of "
                   f"{escape(row.pred_name)}'>" if row.example else "")
        cards.append(
            f"<div class='card'><img src='{data_uri(folder / row.overlay)}' "
            f"alt='Grad-CAM of {escape(row.path)}'>{example}<br>"
            f"true <b>{escape(row.true_name)}</b> ({_pct(row.true_score)}), "
            f"<span class='wrong'>predicted <b>{escape(row.pred_name)}</b> "
            f"({_pct(row.score)})</span><br>{_flat_cam_note(row)}<span class='note'>"
            f"{escape(row.path)}; right: a training image of {escape(row.pred_name)}</span>"
            "</div>")
    more = len(shown) - GALLERY_IN_REPORT
    note = (f"<p class='note'>{more} more in gallery/ and misclassified.csv.</p>"
            if more > 0 else "")
    return ("<p class='note'>Left: the test image with the Grad-CAM of the predicted class "
            "(red = what made the model say it). Most confident mistakes first.</p>"
            f"<div class='gallery'>{''.join(cards)}</div>{note}" + _link(MISCLASSIFIED_FILE))


def _flat_cam_note(row) -> str:
    """A line under a card whose map is flat: plain blue is "nothing here", not "everywhere"."""
    if not row.cam_flat:
        return ""
    return (f"<span class='note'>Grad-CAM is flat (plain blue): no region of this image "
            f"raised the score of {escape(row.pred_name)} at this layer.</span><br>")


SWEEP_FIGURES = [(IMPORTANCE_PLOT, "Hyperparameter importance"),
                 (CURVES_PLOT, "The metric per epoch of every trial (ASHA's curves)"),
                 (HISTORY_PLOT, "Optimization history"),
                 (SLICE_PLOT, "The metric against each searched hyperparameter"),
                 (PARALLEL_PLOT, "Parallel coordinates")]


def _sweep(folder: Path, sweep: dict[str, Any]) -> str:
    found = sweep["importance"]
    if found.get("skipped"):
        text = f"<p>Hyperparameter importance: not computed ({escape(found['skipped'])}).</p>"
    else:
        text = (f"<p class='note'>Importance by Optuna's {escape(found['evaluator'])} over the "
                f"{found['complete_trials']} trials that ran all their epochs (top "
                f"{found['target_quantile']:.0%}); the {found['stopped_trials']} that ASHA "
                "stopped or that diverged are left out, as Optuna's evaluators leave out "
                "pruned trials. With few trials it is a hint, not a measurement.</p>")
    return (f"<p>{sweep['trials']} trials; metric {escape(sweep['metric'])} "
            f"({escape(sweep['mode'])}); searched: {escape(', '.join(sweep['searched']))}. "
            "Plots by optuna.visualization from the sweep's study; the same study is live in "
            "<code>carsweep dashboard</code>.</p>" + _values_note(sweep["metric"]) + text
            + _figures(folder, SWEEP_FIGURES))


def _values_note(metric: str) -> str:
    """Why Optuna's best trial can differ from the one analyzed here."""
    return (f"<p class='note'>A trial's value in the study, and so in these plots and the "
            f"dashboard, is its {escape(metric)} at its last epoch; the trials analyzed here "
            f"are ranked by their best {escape(metric)} at any epoch (the trials table's "
            "order), so Optuna's best trial can be another.</p>")


def _config(config: dict[str, Any]) -> str:
    return f"<pre>{escape(json.dumps(config, indent=2))}</pre>"


def _figures(folder: Path, figures: list[tuple[str, str]]) -> str:
    return "".join(f"<h3>{escape(title)}</h3><img class='plot' src='{data_uri(folder / name)}' "
                   f"alt='{escape(title)}'>" for name, title in figures
                   if (folder / name).is_file())


def _table(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>None.</p>"
    return table.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0)


def _section(title: str, body: str) -> str:
    return f"<h2>{escape(title)}</h2>{body}"


def _link(name: str) -> str:
    return f"<p class='note'>Full table: <a href='{name}'>{name}</a></p>"


def _pct(value: float) -> str:
    return f"{value:.1%}"
