"""`carsweep sweep --check`: every check reports in one line, launches nothing, writes nothing.

The fast tests check the ASHA arithmetic against Ray's own bracket and the pieces of the GPU
check. The Ray tests share one two-node loopback cluster (ray.cluster_utils.Cluster), so the
node probes really run once per node and a failing node is named.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from ray.tune.schedulers.async_hyperband import _Bracket

from carsweep.cli import main
from carsweep.config.sweep import SweepConfig
from carsweep.config.trial import TrialConfig
from carsweep.search.preflight import Report, check_before_launch
from carsweep.search.preflight.capacity import trials_per_gpu
from carsweep.search.preflight.config_checks import check_scheduler, check_schedules
from carsweep.search.preflight.dry_step import dry_trial
from carsweep.search.preflight.gpus import worst_trials

SPACE = {
    "optimizer": {"choice": ["sgd", "adam"]},
    "lr": {"loguniform": [1.0e-4, 0.1]},
    "epochs": 3,
    "batch_size": {"choice": [16, 64, 32]},
    "resize": {"choice": [256, 400]},
    "augmentation": "flip",
    "weights": "none",
    "num_workers": 0,
    "device": "cpu",
}
CHECKED_SWEEP = {
    "num_samples": 4,
    "resources": {"cpu": 1, "gpu": 0},
    "asha": {"grace_period": 1, "reduction_factor": 2},
    "space": {**SPACE, "batch_size": 16, "resize": 32},
}


def sweep(**changes) -> SweepConfig:
    return SweepConfig.model_validate({"space": SPACE, **changes})


@pytest.mark.parametrize(
    ("samples", "grace", "rf", "max_t", "expected"),
    [
        (27, 1, 3, 27, [(1, 27), (3, 9), (9, 3), (27, 1)]),
        (8, 1, 2, 4, [(1, 8), (2, 4), (4, 2)]),
        (64, 3, 3, 30, [(3, 64), (9, 64 / 3), (27, 64 / 9), (30, 64 / 27)]),
        (5, 2, 4, 2, [(2, 5)]),  # grace == max_t: no rung where a trial can stop
    ],
)
def test_asha_rungs_and_trials_reaching_each(samples, grace, rf, max_t, expected):
    config = sweep(num_samples=samples,
                   asha={"grace_period": grace, "reduction_factor": rf, "max_t": max_t})
    rungs = config.asha_rungs()
    assert [epoch for epoch, _ in rungs] == [epoch for epoch, _ in expected]
    assert [trials for _, trials in rungs] == pytest.approx([t for _, t in expected])
    # The rungs below max_t are the milestones Ray's ASHA bracket stops trials at.
    ray_milestones = sorted(m for m, _ in _Bracket(grace, max_t, rf, 0)._rungs if m < max_t)
    assert [epoch for epoch, _ in rungs[:-1]] == ray_milestones


def test_asha_report_says_when_no_trial_can_stop():
    report = Report()
    check_scheduler(sweep(asha={"grace_period": 3, "reduction_factor": 2}), report)
    assert report.ok
    assert "0 rung(s) where trials can stop (no rung below max_t" in report.text()


def test_asha_checks_fail_in_one_line_naming_the_value():
    report = Report()
    too_late = sweep().model_copy(update={"asha": sweep().asha.model_copy(
        update={"grace_period": 5})})
    check_scheduler(too_late, report)
    no_reduction = sweep().model_copy(update={"asha": sweep().asha.model_copy(
        update={"reduction_factor": 1.0})})
    check_scheduler(no_reduction, report)
    assert report.failures == [
        "scheduler: `asha.grace_period` is 5, but must be <= max_t (3)",
        "scheduler: `asha.reduction_factor` is 1, but must be > 1",
    ]


WORST = ("model", "batch_size", "resize", "optimizer", "augmentation")


def shapes(trials: list[dict]) -> list[tuple]:
    return [tuple(trial.get(key) for key in WORST) for trial in trials]


def test_the_real_step_runs_the_memory_worst_trial_per_model_and_augmentation():
    assert shapes(worst_trials(sweep())) == [("resnet18", 64, 400, "adam", "flip")]
    assert shapes(worst_trials(sweep(space={"lr": 0.1}))) == [
        ("resnet18", 32, 256, "sgd", "flip")]  # the defaults
    models = sweep(space={**SPACE, "model": {"choice": ["resnet50", "efficientnet_b0"]},
                          "augmentation": {"choice": ["flip", "flip+snapmix"]}})
    assert shapes(worst_trials(models)) == [
        ("resnet50", 64, 400, "adam", "flip"), ("resnet50", 64, 400, "adam", "flip+snapmix"),
        ("efficientnet_b0", 64, 400, "adam", "flip"),
        ("efficientnet_b0", 64, 400, "adam", "flip+snapmix")]
    for trial in worst_trials(models):  # each a valid trial, with no download and no cache
        config = TrialConfig.model_validate(trial)
        assert (config.weights, config.data_cache, config.num_workers) == ("none", "off", 0)
    assert [trials_per_gpu(g) for g in (0.25, 0.3, 0.5, 1, 2)] == [4, 3, 2, 1, 1]


def test_dry_trial_is_tiny_and_on_the_cpu():
    trial = dry_trial(sweep(space={**SPACE, "warmup_epochs": 2, "epochs": 30,
                                   "weights": "imagenet"}))
    assert (trial.epochs, trial.warmup_epochs, trial.batch_size, trial.resize) == (1, 0, 4, 32)
    assert (trial.device, trial.weights, trial.num_workers) == ("cpu", "none", 0)
    assert (trial.optimizer, trial.lr) == ("sgd", 1.0e-4)  # first choice, low end


BRANCHED_LR = [{"loguniform": [1.0e-3, 0.1], "when": {"optimizer": ["sgd"]}},
               {"loguniform": [1.0e-5, 3.0e-3], "when": {"optimizer": ["adam"]}}]


def test_dry_and_largest_trial_of_a_branched_space():
    branched = sweep(space={**SPACE, "optimizer": {"choice": ["adam", "sgd"]}, "lr": BRANCHED_LR,
                            "batch_size": [{"fixed": 128, "when": {"optimizer": ["sgd"]}},
                                           {"choice": [16, 32], "when": {"optimizer": ["adam"]}}]})
    trial = dry_trial(branched)
    assert (trial.optimizer, trial.lr) == ("adam", 1.0e-5)  # the branch adam selects
    (worst,) = worst_trials(branched)
    assert (worst["batch_size"], worst["resize"], worst["optimizer"]) == (128, 400, "adam")
    assert worst["lr"] == 1.0e-5  # the branch of the optimizer it runs


def test_checks_of_every_value_see_every_branch():
    from carsweep.errors import UserError
    from carsweep.search.preflight.config_checks import check_augmentations, check_cuda_has_gpus

    def per_optimizer(field, sgd, adam):
        return sweep(space={**SPACE, field: [{"fixed": sgd, "when": {"optimizer": ["sgd"]}},
                                             {"fixed": adam, "when": {"optimizer": ["adam"]}}]})

    with pytest.raises(UserError, match="unknown preset 'warp'"):
        check_augmentations(per_optimizer("augmentation", "flip", "flip+warp"))
    with pytest.raises(UserError, match="`space.device` can be 'cuda'"):
        check_cuda_has_gpus(per_optimizer("device", "cpu", "cuda"))


ASHA_3 = {"grace_period": 3, "reduction_factor": 3}  # rungs 3, 9, 27 below max_t 30


def schedule_warnings(space: dict, **changes) -> list[str]:
    report = Report()
    check_schedules(sweep(space={"epochs": 30, **space}, **{"asha": ASHA_3, **changes}), report)
    assert report.ok
    assert report.lines == [f"  warn  {w}" for w in report.warnings]
    return report.warnings


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"epochs": {"choice": [15, 30]}},
         "schedules: `epochs` is searched (15, 30) with a cosine schedule: at every rung a "
         "shorter schedule has decayed further, so ASHA keeps short runs; fix epochs at max_t "
         "(30) and let ASHA stop trials"),
        ({"warmup_epochs": {"int": [0, 3]}},
         "schedules: `warmup_epochs` can be 3, so some trials are still warming up at the first "
         "rung (epoch 3); keep warmup_epochs below asha.grace_period (3) or raise the grace "
         "period"),
        ({"freeze_backbone_epochs": {"choice": [0, 4]}},
         "schedules: `freeze_backbone_epochs` can be 4, so some trials are training only the "
         "head at the first rung (epoch 3)"),
        ({"lr_schedule": {"choice": ["cosine", "constant"]}},
         "schedules: `lr_schedule` is searched (cosine, constant): at a rung the shapes have "
         "decayed by different amounts"),
        ({"lr_schedule": "step", "step_size": {"choice": [3, 4]}},
         # decays after epochs 3, 6 or 4, 8: alike at rungs 3 and 9, not at 27
         "schedules: with lr_schedule step, trials reach the rung at epoch 27 after 6 or 8 "
         "decays (step_size 3, 4, warmup_epochs 0); fix step_size and warmup_epochs so every "
         "trial has decayed as often"),
        ({"lr_schedule": "step", "step_size": 4, "warmup_epochs": {"int": [0, 2]}},
         "schedules: with lr_schedule step, trials reach the rung at epoch 9 after 1 or 2 "
         "decays (step_size 4, warmup_epochs 0, 1, 2)"),
    ],
)
def test_schedules_asha_cannot_compare_are_warned_in_one_line(space, expected):
    (warning,) = schedule_warnings(space)
    assert warning.startswith(expected)


@pytest.mark.parametrize(
    ("space", "changes"),
    [
        ({"epochs": 30, "warmup_epochs": {"int": [0, 2]}, "freeze_backbone_epochs": 2}, {}),
        ({"epochs": {"choice": [15, 30]}, "lr_schedule": "constant"}, {}),  # nothing decays
        ({"lr_schedule": "step", "step_size": 10, "warmup_epochs": {"int": [0, 2]}}, {}),
        ({"epochs": {"choice": [15, 30]}, "warmup_epochs": 5}, {"scheduler": "fifo"}),
        ({"epochs": {"choice": [15, 30]}}, {"asha": {"grace_period": 30}}),  # no rung to stop at
    ],
)
def test_schedules_every_trial_reaches_alike_are_not_warned(space, changes):
    assert schedule_warnings(space, **changes) == []


def test_schedules_the_median_rule_cannot_compare_are_warned_from_its_grace_on():
    median = {"scheduler": "median"}  # grace 7 of max_t 30: it compares at epochs 7..29
    (short,) = schedule_warnings({"epochs": {"choice": [15, 30]}}, **median)
    assert short == ("schedules: `epochs` is searched (15, 30) with a cosine schedule: at every "
                     "compared epoch a shorter schedule has decayed further, so the median rule "
                     "keeps short runs; fix epochs at max_t (30) and let the median rule stop "
                     "trials")
    (warm,) = schedule_warnings({"warmup_epochs": {"int": [0, 7]}}, **median)
    assert warm == ("schedules: `warmup_epochs` can be 7, so some trials are still warming up "
                    "at the first compared epoch (epoch 7); keep warmup_epochs below "
                    "median.grace_period (7) or raise the grace period")
    (step,) = schedule_warnings({"lr_schedule": "step", "step_size": {"choice": [3, 4]}},
                                **median)
    assert step.startswith("schedules: with lr_schedule step, trials reach the compared epoch "
                           "at epoch 7 after 1 or 2 decays")  # decays after 3, 6 or after 4
    assert schedule_warnings({"warmup_epochs": {"int": [0, 6]}}, **median) == []


def test_cars_config_gives_asha_comparable_schedules():
    from carsweep.config.sweep import load_sweep

    cars = load_sweep("configs/stanford-cars.yaml")
    report = Report()
    check_schedules(cars, report)
    assert report.warnings == []
    assert cars.space["epochs"].values == [cars.max_t] == [30]
    assert max(cars.space["warmup_epochs"].values) < cars.asha.grace_period
    sgd, adaptive = cars.space["lr"].branches
    assert (sgd.values, sgd.when) == ([1.0e-3, 0.1], {"optimizer": ["sgd"]})
    assert (adaptive.values, adaptive.when) == (
        [1.0e-5, 3.0e-3], {"optimizer": ["adam", "adamw", "rmsprop"]})


# Through the CLI, on a two-node loopback Ray cluster (conftest.py's two_node_ray) ----------

def check(tmp_path, dataset, *extra, **changes) -> list[str]:
    path = tmp_path / "checked.yaml"
    path.write_text(yaml.safe_dump({**CHECKED_SWEEP, **changes}))
    return ["sweep", str(path), "--data", str(dataset), "--check", *extra]


@pytest.mark.slow
def test_passing_check_prints_the_rungs_and_launches_nothing(
        two_node_ray, prepared_dataset, tmp_path, capsys):
    storage, caches = tmp_path / "results", tmp_path / "caches"
    assert main(check(tmp_path, prepared_dataset, "--storage", str(storage),
                      "--set", f"space.cache_dir={caches}")) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "epoch  trials expected to reach it" in out
    assert "    1  4.0 of 4\n" in out
    assert "    2  2.0 of 4\n" in out
    assert "    3  1.0 of 4  (max_t)" in out
    assert "dry step: 1 epoch on 12 images reported val_top1 = " in out
    assert "the same (manifest digest) on all 2 node(s)" in out
    # One line per node that can run a trial and per size; the check builds nothing.
    cache_lines = [line for line in out.splitlines() if " cache " in line]
    nodes = sorted(f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}" for n in _alive_nodes())
    for line, node in zip(cache_lines, nodes, strict=True):
        assert re.fullmatch(rf"  ok    cache 32px on node {node}: missing, built before trials "
                            rf"start \(96 images, 295\.0 kB; [\d.]+ [kMG]B free in "
                            rf"{re.escape(str(caches))}\)", line), line
    # Each node runs one 1-CPU trial; no GPU, so no GPU check.
    assert "  ok    slots: 2 nodes like 127.0.0.1/" in out
    assert ": 1 trial at once (1 CPU each)\n" in out
    assert "  ok    concurrency: 2 trials at once (2 slots on the cluster" in out
    assert " gpu" not in out
    assert "pre-flight: all checks passed" in out
    assert not storage.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "checked.yaml"]


@pytest.mark.slow
def test_schedule_warnings_are_printed_and_the_launch_goes_on(
        two_node_ray, prepared_dataset, tmp_path, capsys):
    space = {**CHECKED_SWEEP["space"], "warmup_epochs": {"int": [0, 1]}}  # grace period 1
    assert main(check(tmp_path, prepared_dataset, "--storage", str(tmp_path / "results"),
                      space=space)) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "  warn  schedules: `warmup_epochs` can be 1, so some trials are still warming up " \
           "at the first rung (epoch 1)" in out
    assert "pre-flight: all checks passed (1 warning(s) above)" in out
    config = SweepConfig.model_validate({**CHECKED_SWEEP, "space": space,
                                         "dataset": str(prepared_dataset),
                                         "storage_path": str(tmp_path / "results")})
    check_before_launch(config)  # what a real launch runs: no error, one line on stderr
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: schedules: `warmup_epochs` can be 1, so some trials")


@pytest.mark.slow
def test_storage_not_writable_names_every_node(two_node_ray, prepared_dataset, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    storage = blocker / "results"
    assert main(check(tmp_path, prepared_dataset, "--storage", str(storage))) == 2
    lines = capsys.readouterr().err.splitlines()
    nodes = sorted(f"{n['NodeManagerAddress']}/{n['NodeID'][:8]}" for n in _alive_nodes())
    assert len(lines) == len(nodes) == 2  # one line per failing node
    assert all(node.startswith("127.0.0.1/") for node in nodes)  # loopback only
    for line, node in zip(sorted(lines), nodes, strict=True):
        assert line.startswith(f"carsweep sweep --check: node: node {node}: ")
        assert f"storage path {storage} is not writable ({blocker} is not a folder)" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.slow
def test_dataset_without_val_images_fails_the_dry_step_naming_the_split(
        two_node_ray, prepared_dataset, tmp_path, capsys):
    # The sweep's metric (val_top1) needs val images: the dry step finds their absence.
    no_val = dataset_without_val(prepared_dataset, tmp_path / "no-val")
    storage = tmp_path / "results"
    assert main(check(tmp_path, no_val, "--storage", str(storage))) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("carsweep sweep --check: dry step: ")
    assert line.endswith(f"{no_val}: split val has no images; splits present: ['train']")
    assert not storage.exists()


@pytest.mark.slow
def test_a_path_no_node_can_read_is_reported_per_node(two_node_ray, tmp_path):
    from carsweep.search.preflight.nodes import probe_every_node

    missing = tmp_path / "not-mounted" / "data"
    reports = probe_every_node(str(tmp_path / "results"), str(missing))
    assert sorted(r.node.split("/")[1] for r in reports) == sorted(
        n["NodeID"][:8] for n in _alive_nodes())
    for report in reports:
        (problem,) = report.problems
        assert problem.startswith(f"dataset {missing} is not readable (No such file")


@pytest.mark.slow
def test_images_changed_after_prepare_are_named_before_launch_where_trials_decode_them(
        two_node_ray, prepared_dataset, tmp_path):
    """A train image cut short and a val image deleted after prepare: a node probe that hashes
    names them in one line (every trial would fail on them otherwise); the default probe,
    for trials that read a prebuilt cache (whose build decodes every image), does not hash."""
    from carsweep.search.preflight.nodes import probe_every_node

    data = dataset_with_own_images(prepared_dataset, tmp_path)
    manifest = pd.read_csv(data / "manifest.csv", keep_default_na=False)
    root = Path(json.loads((data / "dataset.json").read_text())["root"])
    cut = root / manifest[manifest["split"] == "train"]["path"].iloc[-1]
    gone = root / manifest[manifest["split"] == "val"]["path"].iloc[-1]
    cut.write_bytes(cut.read_bytes()[:100])
    gone.unlink()
    first = min((cut, gone), key=lambda path: list(manifest["path"]).index(
        str(path.relative_to(root))))
    said = "has other bytes" if first == cut else "is missing"
    for report in probe_every_node(str(tmp_path / "results"), str(data), check_images=True):
        assert report.problems == (
            f"dataset {data}: 2 train+val image(s) changed since `carsweep prepare` read them "
            f"({first} {said}); trials decode them: restore them, or prepare the dataset "
            "again",)
    assert all(not report.problems
               for report in probe_every_node(str(tmp_path / "results"), str(data)))


@pytest.mark.parametrize(("space", "decode"), [
    ({"resize": 32}, False),
    ({"resize": {"choice": [32, 64]}}, False),
    ({"resize": {"int": [32, 64]}}, True),
    ({"resize": 32, "data_cache": "off"}, True),
    ({"resize": 32, "data_cache": {"choice": ["on", "off"]}}, True),
])
def test_the_probe_hashes_the_images_only_where_some_trial_decodes_them(space, decode):
    from carsweep.search.preflight.nodes import trials_decode_images

    assert trials_decode_images(sweep(space={**SPACE, **space})) is decode


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (["--set", "asha.grace_period=5"], "`asha.grace_period` is 5, but must be <= max_t (3"),
        (["--set", "asha.reduction_factor=1"], "`asha.reduction_factor` = 1 is invalid"),
        (["--set", "space.batch_size=0"], "`space.batch_size` = 0 is invalid"),
        (["--set", "resources.gpu=0.5"], "`resources.gpu` is 0.5 per trial, but this machine"),
        (["--data", "no/such/dataset"], "no/such/dataset"),
    ],
)
def test_failing_config_checks_exit_2_in_one_line(prepared_dataset, tmp_path, capsys, change,
                                                  expected):
    storage = tmp_path / "results"
    code = main(check(tmp_path, prepared_dataset, "--storage", str(storage), *change))
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert err.count("\n") == 1
    assert not storage.exists()


def _alive_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def dataset_with_own_images(source, tmp_path):
    """A copy of a prepared dataset and of its images, the copy's root pointing at them."""
    info = json.loads((source / "dataset.json").read_text())
    images = shutil.copytree(info["root"], tmp_path / "images")
    data = shutil.copytree(source, tmp_path / "data")
    (data / "dataset.json").write_text(json.dumps({**info, "root": str(images)}))
    return data


def dataset_without_val(source, folder):
    """A copy of a prepared dataset's index whose val images were all put in train."""
    folder.mkdir()
    manifest = pd.read_csv(source / "manifest.csv", keep_default_na=False)
    manifest["split"] = manifest["split"].replace({"val": "train"})
    manifest.to_csv(folder / "manifest.csv", index=False)
    (folder / "classes.json").write_text((source / "classes.json").read_text())
    info = json.loads((source / "dataset.json").read_text())
    root = info["root"] if os.path.isabs(info["root"]) else str(source / info["root"])
    (folder / "dataset.json").write_text(json.dumps({**info, "root": root}))
    return folder
