"""The sweep's console: Ray Tune calls CompactReporter (a ProgressReporter) with its own Trial
objects; it draws carsweep's compact table, in place on a terminal, appended elsewhere, and
after a killed driver shows what the trials' folders know that Tune's saved state does not."""

from __future__ import annotations

import pickle
import re

from ray.tune.experiment import Trial

from carsweep.config.sweep import SweepConfig
from carsweep.results.console import WIDTH, metric_text
from carsweep.search.monitor import CompactReporter, reporter_resumed_with
from carsweep.search.tuner import tell_study_the_known_ends

PARAMS = ["optimizer", "lr", "momentum", "weight_decay", "augmentation", "label_smoothing",
          "batch_size", "resize"]
ERASE = re.compile(r"\x1b\[(\d+)F\x1b\[J")


def trial(trial_id: str, status: str, *epochs: float, **config) -> Trial:
    made = Trial("__fake", stub=True, trial_id=trial_id,
                 config={"epochs": 4, "optimizer": "sgd", "lr": 0.0123456, "momentum": 0.9,
                         "weight_decay": 1e-5, "augmentation": "flip+cam-occlusion+color",
                         "label_smoothing": 0.1, "batch_size": 64, "resize": 400, **config})
    for epoch, value in enumerate(epochs, start=1):
        made.update_last_result({"epoch": epoch, "val_top1": value, "training_iteration": epoch})
    made.set_status(status)
    return made


def sweep_trials() -> list[Trial]:
    return [trial("aaaa0001", "TERMINATED", 0.2, 0.5, 0.6, 0.7),
            trial("aaaa0002", "TERMINATED", 0.1, optimizer="adam", momentum=None),
            trial("aaaa0003", "RUNNING", 0.3, 0.4),
            trial("aaaa0004", "ERROR", 0.3),
            trial("aaaa0005", "PENDING")]


def test_the_table_is_compact_in_the_studys_words_and_names_what_it_leaves_out():
    reporter = CompactReporter("val_top1", "max", PARAMS, tty=False)
    reporter.setup(total_samples=8)
    text = reporter.table_text(sweep_trials())
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH
    assert lines[0].split()[:6] == ["trial", "state", "epoch", "best", "val_top1", "optimizer"]
    rows = {line.split()[0]: line.split() for line in lines[1:6]}
    assert rows["aaaa0001"][1:4] == ["COMPLETE", "4/4", "70.00%"]
    assert rows["aaaa0002"][1:4] == ["PRUNED", "1/4", "10.00%"]  # ended by ASHA at epoch 1
    assert rows["aaaa0003"][1:4] == ["RUNNING", "2/4", "40.00%"]
    assert rows["aaaa0004"][1:3] == ["FAIL", "1/4"]
    assert rows["aaaa0005"][1:4] == ["PENDING", "0/4", "-"]
    assert "-" in rows["aaaa0002"]  # momentum, not used by adam
    assert "flip+cam-oc…" in lines[1]  # a long value cut
    assert lines[-2].startswith("(not shown: ")  # what did not fit in 110 characters
    assert "resize" in lines[-2]
    assert lines[-1] == "5 of 8 trials: 1 complete, 1 pruned, 1 fail, 1 running, 1 pending"


def test_a_share_of_images_reads_as_a_percentage_and_any_other_metric_as_a_number():
    """As the trainable's epoch lines and analyze's report show them."""
    assert metric_text("val_top1", 0.9375) == "93.75%"
    assert metric_text("top5", 1.0) == "100.00%"
    assert metric_text("val_loss", 0.5) == "0.5"
    assert metric_text("val_loss", 1.234567) == "1.235"
    assert metric_text("val_top1", float("nan")) == "-"  # no epoch reported yet
    assert metric_text("val_top1", None) == "-"


def test_on_a_terminal_the_table_is_redrawn_in_place(capsys):
    reporter = CompactReporter("val_top1", "max", PARAMS, tty=True, every_s=0.0)
    trials = sweep_trials()
    assert reporter.should_report(trials)
    reporter.report(trials, done=False)
    first = capsys.readouterr().out
    assert not ERASE.search(first)
    assert not reporter.should_report(trials)  # nothing changed
    trials[2].update_last_result({"epoch": 3, "val_top1": 0.45, "training_iteration": 3})
    assert reporter.should_report(trials)  # a new epoch: redrawn on a terminal
    reporter.report(trials, done=False)
    second = capsys.readouterr().out
    erase = ERASE.match(second)
    assert erase is not None  # back to the first line of the table, then cleared
    assert int(erase.group(1)) == first.count("\n")
    assert "3/4" in second[erase.end():]
    reporter.say("trial_aaaa0003 diverged at epoch 3: ...")
    said = capsys.readouterr().out
    assert ERASE.match(said)  # the table is erased, the line printed, the table drawn later
    assert said.endswith("diverged at epoch 3: ...\n")


def test_elsewhere_a_table_is_appended_when_a_trial_starts_or_ends(capsys):
    reporter = CompactReporter("val_top1", "max", PARAMS, tty=False, every_s=0.0)
    trials = sweep_trials()
    reporter.report(trials, done=False)
    trials[2].update_last_result({"epoch": 3, "val_top1": 0.45, "training_iteration": 3})
    assert not reporter.should_report(trials)  # epochs alone: no new table in a log file
    trials[2].set_status("TERMINATED")
    assert reporter.should_report(trials)
    reporter.report(trials, done=False)
    out = capsys.readouterr().out
    assert not ERASE.search(out)
    assert out.count("trial  ") == 2  # two tables, one after the other


def test_a_resumed_sweep_shows_a_trial_that_finished_after_tunes_saved_state_as_finished(
        tmp_path):
    """A killed driver's Tune state knew epoch 1 of a 2-epoch trial whose result.json holds
    both: the resume restarts it from its epoch-2 checkpoint, which reports nothing, so Ray's
    record stays at epoch 1 (it read PRUNED 1/2 until the sweep ended). And the rows stay in
    the order the trials were created, where a restored Tune lists its unfinished ones first."""
    experiment = tmp_path / "sweep"
    (experiment / "trial_bbbb0001").mkdir(parents=True)
    (experiment / "trial_bbbb0001" / "result.json").write_text(
        '{"epoch": 1, "val_top1": 0.5}\n{"epoch": 2, "val_top1": 0.75}\n')
    (experiment / "trial_bbbb0002").mkdir()  # stopped at epoch 1 of 2, as Tune knows
    (experiment / "trial_bbbb0002" / "result.json").write_text('{"epoch": 1, "val_top1": 0.4}\n')
    in_tunes_state = [trial("bbbb0001", "RUNNING", 0.5, epochs=2),
                      trial("bbbb0002", "PENDING", 0.4, epochs=2)]
    config = SweepConfig.model_validate({"name": "sweep", "storage_path": str(tmp_path)})
    finished = tell_study_the_known_ends(config, experiment, in_tunes_state)
    assert list(finished) == ["bbbb0001"]

    reporter = CompactReporter("val_top1", "max", PARAMS, tty=False)
    pickled = pickle.dumps(reporter)  # Tune's tuner.pkl
    with reporter_resumed_with(finished):
        resumed = pickle.loads(pickled)  # as Tune's restore unpickles it
    after_restart = [trial("bbbb0002", "TERMINATED", 0.4, epochs=2),  # ASHA stops it now
                     trial("bbbb0001", "TERMINATED", 0.5, epochs=2)]
    for created, restored in zip([2, 1], after_restart, strict=True):
        restored.experiment_tag = f"{created}_lr=0.0123"  # Ray's, from its searcher's count
    rows = [line.split()[:4] for line in resumed.table_text(after_restart).splitlines()[1:3]]
    assert rows == [["bbbb0001", "COMPLETE", "2/2", "75.00%"],  # in the order Ray made them
                    ["bbbb0002", "PRUNED", "1/2", "40.00%"]]
    unknowing = pickle.loads(pickled)  # outside a resume: Ray's record as it is
    assert unknowing.table_text(after_restart).splitlines()[1].split()[:4] == [
        "bbbb0001", "PRUNED", "1/2", "50.00%"]
