"""A careless user's inputs, every subcommand: each is one line on stderr naming the problem,
exit code 2, no traceback, and the folder it ran in byte for byte as it was (nothing written,
nothing half-made, nothing of the user's changed).

One table, grown whenever a case is found (docs/bad-input.md lists the classes). The cases
run the real CLI (`carsweep.cli.main`) in this process, in a folder of their own holding
copies of the parts they name: a small synthetic source, its prepared dataset, a one-epoch
run and its export. Ctrl-C at several moments is tests/test_interrupts.py's table.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_sources import write_imagefolder
from sweep_runs import linked_copy

import carsweep.cli.status
from carsweep.cli import COMMANDS, main

RUN = ["--set", "epochs=1", "--set", "resize=32", "--set", "model=mobilenet_v3_small",
       "--set", "weights=none", "--set", "device=cpu", "--set", "num_workers=0"]


@pytest.fixture(scope="module")
def base(tmp_path_factory, synthetic_source) -> Path:
    """src (a copy of the session's synthetic source), data (prepared from it), run (one
    epoch of a small backbone) and best.pt (its export): what the cases copy from."""
    root = tmp_path_factory.mktemp("fuzz-base")
    shutil.copytree(synthetic_source, root / "src")
    for argv in (["prepare", "src", "--out", "data", "--val-fraction", "0.25"],
                 ["train", "--data", "data", "--out", "run", *RUN],
                 ["export", "run", "--out", "best.pt"]):
        assert main([argv[0], *(str(root / a) if a in ("src", "data", "run", "best.pt")
                                else a for a in argv[1:])]) == 0
    return root


def in_case_folder(base: Path, folder: Path, parts: tuple[str, ...]) -> None:
    """Copies of the named parts of `base` in `folder`; the dataset's images point at the copy
    of src when there is one."""
    for part in parts:
        source = base / part
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, folder / part)
    info = folder / "data" / "dataset.json"
    if info.is_file() and "src" in parts:
        info.write_text(info.read_text().replace(str(base / "src"), str(folder / "src")))


def digest(folder: Path) -> dict[str, str]:
    """Every file's sha1 and every folder, by path: what "nothing changed" compares."""
    return {str(path.relative_to(folder)): ("folder" if path.is_dir() else
                                            hashlib.sha1(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*"))}


def first_image(folder: Path) -> Path:
    return sorted((folder / "src" / "train").rglob("*.png"))[0]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def edit_json(path: Path, change) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def other_classes(folder: Path) -> None:
    shutil.copytree(folder / "data", folder / "data2")
    edit_json(folder / "data2" / "classes.json", lambda names: [n.upper() for n in names])


def label_out_of_range(folder: Path) -> None:
    manifest = folder / "data" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    fields = lines[3].split(",")
    fields[1] = "9"
    lines[3] = ",".join(fields)
    manifest.write_text("\n".join(lines) + "\n")


def one_class_source(folder: Path) -> None:
    """one/: an ImageFolder source (train/, test/) of the first class of src alone."""
    for split in ("train", "test"):
        first = sorted(p for p in (folder / "src" / split).iterdir() if p.is_dir())[0]
        shutil.copytree(first, folder / "one" / split / first.name)


NOTHING = None
SETUPS = {
    "blocker": lambda f: (f / "blocker").write_text("a file where a folder is wanted"),
    "truncated image": lambda f: truncate(first_image(f)),
    "deleted image": lambda f: first_image(f).unlink(),
    "classes not a list": lambda f: (f / "data" / "classes.json").write_text('{"a": 1}'),
    "classes empty": lambda f: (f / "data" / "classes.json").write_text("[]"),
    "manifest columns": lambda f: (f / "data" / "manifest.csv").write_text("path,label\nx,0\n"),
    "manifest empty": lambda f: (f / "data" / "manifest.csv").write_text(""),
    "manifest no rows": lambda f: (f / "data" / "manifest.csv").write_text(
        (f / "data" / "manifest.csv").read_text().splitlines()[0] + "\n"),
    "manifest binary": lambda f: (f / "data" / "manifest.csv").write_bytes(b"\xff\xfe\x00\x81"),
    "label out of range": label_out_of_range,
    "dataset.json cut": lambda f: (f / "data" / "dataset.json").write_text('{"root": "/x'),
    "dataset.json no root": lambda f: edit_json(f / "data" / "dataset.json",
                                                lambda info: {**info, "root": None}),
    "other classes": other_classes,
    "one class": one_class_source,
    "bad yaml": lambda f: (f / "t.yaml").write_text("lr: [0.1\n"),
    "latin-1 yaml": lambda f: (f / "t.yaml").write_bytes("model: r\xe9snet\n".encode("latin-1")),
}

# (id, parts copied, setup, argv, what the one line must say)
CASES = [
    # the command line itself
    ("no command", (), NOTHING, [], "arguments are required: COMMAND"),
    ("unknown command", (), NOTHING, ["trian"], "invalid choice: 'trian'"),
    # synth
    ("synth under a file", (), "blocker", ["synth", "blocker/out"], "blocker is a file, not a"),
    ("synth into the current folder", (), NOTHING, ["synth", ".", "--force"],
     "is the folder you are in"),
    ("synth negative seed", (), NOTHING, ["synth", "s", "--seed", "-1"],
     "argument --seed: -1 is out of range"),
    ("synth seed not a number", (), NOTHING, ["synth", "s", "--seed", "x"],
     "argument --seed: 'x' is not a whole number"),
    ("synth huge size", (), NOTHING, ["synth", "s", "--size", "100000"],
     "size is 100000 px, but must be 16..2048"),
    ("synth zero classes", (), NOTHING, ["synth", "s", "--classes", "0"], "classes is 0"),
    ("synth negative test images", (), NOTHING, ["synth", "s", "--test-per-class", "-1"],
     "test_per_class is -1, but must be >= 0"),
    ("synth cars zero workers", (), NOTHING, ["synth", "s", "--preset", "cars", "--workers", "0"],
     "argument --workers: 0 is out of range"),
    ("synth cars option of demo", (), NOTHING, ["synth", "s", "--preset", "cars", "--size", "64"],
     "--size does not apply to --preset cars"),
    # prepare
    ("prepare under a file", ("src",), "blocker", ["prepare", "src", "--out", "blocker/d"],
     "blocker is a file, not a folder"),
    ("prepare into the current folder", ("src",), NOTHING, ["prepare", "src", "--out", "."],
     "holds the source"),
    ("prepare negative seed", ("src",), NOTHING, ["prepare", "src", "--out", "d", "--seed", "-1"],
     "argument --seed: -1 is out of range"),
    ("prepare negative workers", ("src",), NOTHING,
     ["prepare", "src", "--out", "d", "--workers", "-2"], "argument --workers: -2 is out of"),
    ("prepare a file as source", (), "blocker", ["prepare", "blocker", "--out", "d"],
     "no such source folder"),
    ("prepare one class", ("src",), "one class", ["prepare", "one", "--out", "d"],
     "one: 1 class ('"),
    ("prepare over a dataset", ("src", "data"), NOTHING, ["prepare", "src", "--out", "data"],
     "folder is not empty; pass --force"),
    # train: where it writes
    ("train under a file", ("data",), "blocker", ["train", "--data", "data", "--out", "blocker/r"],
     "blocker is a file, not a folder"),
    ("train over a run", ("data", "run"), NOTHING, ["train", "--data", "data", "--out", "run"],
     "already holds a run"),
    ("train without --data", (), NOTHING, ["train"], "arguments are required: --data"),
    ("train unknown flag", (), NOTHING, ["train", "--data", "d", "--epochs", "3"],
     "unrecognized arguments: --epochs 3"),
    ("train bad --set", ("data",), NOTHING, ["train", "--data", "data", "--set", "lr"],
     "--set 'lr': expected KEY=VALUE"),
    ("train --set not a number", ("data",), NOTHING,
     ["train", "--data", "data", "--set", "lr=abc"], "`lr` = 'abc' is invalid"),
    ("train config not YAML", ("data",), "bad yaml", ["train", "--data", "data", "--config",
                                                      "t.yaml"], "not valid YAML at line"),
    ("train config not UTF-8", ("data",), "latin-1 yaml", ["train", "--data", "data",
                                                           "--config", "t.yaml"], "not UTF-8"),
    # train: a dataset damaged or changed after prepare
    *[(f"train on {setup}", ("src", "data"), setup, ["train", "--data", "data", "--out", "r",
                                                     *RUN], said)
      for setup, said in [
          ("classes not a list", "classes.json: expected a list of class names"),
          ("classes empty", "classes.json: expected a list of class names"),
          ("manifest columns", "manifest.csv: missing column(s) ['class_name'"),
          ("manifest empty", "manifest.csv: No columns to parse from file"),
          ("manifest no rows", "manifest.csv: no images listed"),
          ("manifest binary", "manifest.csv:"),
          ("label out of range", "manifest.csv: line 4 has label '9', not a class index 0..3"),
          ("dataset.json cut", "dataset.json: Unterminated string"),
          ("dataset.json no root", "dataset.json: expected a mapping with the images' root"),
      ]],
    *[(f"train on a {setup} without the cache", ("src", "data"), setup,
       ["train", "--data", "data", "--out", "r", *RUN, "--set", "data_cache=off"], said)
      for setup, said in [("truncated image", "cannot decode the image (image file is trunc"),
                          ("deleted image", "the image is missing")]],
    # train --resume: refused before anything of the run changes
    ("resume another model", ("data", "run"), NOTHING,
     ["train", "--data", "data", "--out", "run", "--resume", "--set", "model=resnet34"],
     "model ('mobilenet_v3_small' -> 'resnet34')"),
    ("resume other classes", ("data", "run"), "other classes",
     ["train", "--data", "data2", "--out", "run", "--resume"],
     "but --data has 4 classes ('ROUND'"),
    ("resume with a config", ("data", "run"), NOTHING,
     ["train", "--data", "data", "--out", "run", "--resume", "--config", "x.yaml"],
     "give --out RUN and no --config"),
    ("resume nothing", ("data",), NOTHING, ["train", "--data", "data", "--out", "r", "--resume"],
     "r: no run to resume (no trial.yaml)"),
    # export
    ("export under a file", ("run",), "blocker", ["export", "run", "--out", "blocker/b.pt"],
     "blocker is a file, not a folder"),
    ("export onto a folder", ("run", "data"), NOTHING, ["export", "run", "--out", "data"],
     "--out data is a folder; give a file's path"),
    ("export not a run", ("data",), NOTHING, ["export", "data", "--out", "b.pt"],
     "data: not an experiment (sweep.yaml), a run folder"),
    # predict
    ("predict cam under a file", ("src", "best.pt"), "blocker",
     ["predict", "src/test", "--weights", "best.pt", "--cam", "blocker/cams"],
     "--cam blocker/cams:"),
    ("predict zero top", ("src", "best.pt"), NOTHING,
     ["predict", "src/test", "--weights", "best.pt", "--top", "0"], "--top is 0"),
    ("predict missing weights", ("src",), NOTHING, ["predict", "src", "--weights", "none.pt"],
     "weights 'none.pt': no such file"),
    # sweep and resume: refused before Ray starts
    ("sweep negative seed", (), NOTHING, ["sweep", "c.yaml", "--seed", "-1"],
     "argument --seed: -1 is out of range"),
    ("sweep zero samples", (), NOTHING, ["sweep", "c.yaml", "--num-samples", "0"],
     "argument --num-samples: 0 is out of range"),
    ("resume zero cpus", (), NOTHING, ["resume", "x", "--num-cpus", "0"],
     "argument --num-cpus: 0 is out of range"),
    ("resume not an experiment", ("data",), NOTHING, ["resume", "data"],
     "data: not a carsweep experiment (no sweep.yaml)"),
    ("sweep missing config", (), NOTHING, ["sweep", "nothere.yaml"],
     "nothere.yaml: no such config file"),
    ("analyze zero epochs", (), NOTHING, ["analyze", "x", "--epochs", "0"],
     "argument --epochs: 0 is out of range: give a whole number >= 1"),
    ("settings unknown argument", (), NOTHING, ["settings", "nope"],
     "unrecognized arguments: nope"),
    ("status not an experiment", ("data",), NOTHING, ["status", "data"],
     "not an experiment folder"),
    # dashboard
    ("dashboard port out of range", (), NOTHING, ["dashboard", "x", "--port", "70000"],
     "argument --port: 70000 is out of range"),
    ("dashboard equal ports", (), NOTHING,
     ["dashboard", "x", "--port", "8080", "--tensorboard-port", "8080"],
     "--port and --tensorboard-port are both 8080"),
    ("dashboard no experiment", (), NOTHING, ["dashboard", "x"], "x: no such experiment folder"),
    ("dashboard negative port", (), NOTHING, ["dashboard", "x", "--tensorboard-port", "-1"],
     "argument --tensorboard-port: -1 is out of range"),
]


@pytest.mark.parametrize(("parts", "setup", "argv", "said"),
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(base, tmp_path, monkeypatch, capsys,
                                                          parts, setup, argv, said):
    in_case_folder(base, tmp_path, parts)
    if setup is not NOTHING:
        SETUPS[setup](tmp_path)
    monkeypatch.chdir(tmp_path)
    before = digest(tmp_path)
    code = run_cli(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    assert err.startswith(f"{said_by(argv)}: error: "), err
    assert said in err, err
    assert digest(tmp_path) == before


def said_by(argv: list[str]) -> str:
    """Who says the error: the command, or carsweep itself when there is no valid one."""
    return f"carsweep {argv[0]}" if argv and argv[0] in COMMANDS else "carsweep"


def run_cli(argv: list[str]) -> int:
    """The CLI's exit code: main's return, or argparse's SystemExit."""
    try:
        return main(argv)
    except SystemExit as exited:
        return exited.code


# Outputs on a read-only mount: the case folder is bind-mounted read-only over itself in a
# private mount namespace (root: the tests' user may otherwise write anywhere), and the CLI
# runs there in a subprocess.
READ_ONLY_CASES = [
    ("synth", ("src",), ["synth", "ro/new"], "ro is on a read-only file system"),
    ("prepare", ("src",), ["prepare", "src", "--out", "ro/data"], "is on a read-only file"),
    ("train", ("data", "src"), ["train", "--data", "data", "--out", "ro/run", *RUN],
     "ro is on a read-only file system"),
    ("export", ("run",), ["export", "run", "--out", "ro/best.pt"], "is on a read-only file"),
]


@pytest.mark.parametrize(("parts", "argv", "said"),
                         [pytest.param(*case[1:], id=case[0]) for case in READ_ONLY_CASES])
def test_an_output_on_a_read_only_mount_is_one_line(base, tmp_path, parts, argv, said):
    in_case_folder(base, tmp_path, parts)
    (tmp_path / "ro").mkdir()
    before = digest(tmp_path)
    done = cli_under_read_only(tmp_path, tmp_path / "ro", argv)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert said in done.stderr
    assert digest(tmp_path) == before


def test_analyze_of_an_experiment_on_a_read_only_mount_stops_before_retraining(
        finished_experiment, tmp_path):
    copy = linked_copy(finished_experiment, tmp_path / "experiment")
    done = cli_under_read_only(tmp_path, copy, ["analyze", str(copy), "--local"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.endswith(f"the analysis folder {copy}/analysis: {copy} is on a "
                                "read-only file system; write somewhere else\n"), done.stderr
    assert "[analyze] retrain" not in done.stdout  # refused before any work
    assert not (copy / "analysis").exists()


def cli_under_read_only(cwd: Path, read_only: Path, argv: list[str]):
    script = (f"mount --bind {read_only} {read_only} && mount -o remount,bind,ro {read_only} "
              f"&& exec {sys.executable} -m carsweep \"$@\"")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                           "sh", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


# Permissions. Root may write anywhere, so these run the CLI without root's override of
# permission bits (setpriv drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from its bounding
# set): a folder of mode 0555 is then not writable, and one of 0000 not listable, as for any
# other user. (train and export check their outputs with the same check_output_path as
# synth and prepare: their read-only cases above show they call it.)
NO_OVERRIDE = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
PERMISSION_CASES = [
    ("synth", ("src",), "locked", ["synth", "locked/new"],
     "locked is not writable by you (permission denied); write somewhere else"),
    ("prepare", ("src",), "locked", ["prepare", "src", "--out", "locked/data"],
     "locked is not writable by you (permission denied)"),
    ("prepare, a split folder not listable", ("src",), "src/train",
     ["prepare", "src", "--out", "data"],
     "src/train/round/00001.png: Permission denied; you may not write or read there"),
    ("prepare, a class folder not listable", ("folders",), "folders/dog",
     ["prepare", "folders", "--out", "data"],
     "folders/dog: cannot list the folder (Permission denied); fix its permissions"),
]


@pytest.mark.parametrize(("parts", "locked", "argv", "said"),
                         [pytest.param(*case[1:], id=case[0]) for case in PERMISSION_CASES])
def test_a_folder_without_permission_is_one_line(base, tmp_path, parts, locked, argv, said):
    in_case_folder(base, tmp_path, tuple(part for part in parts if part != "folders"))
    if "folders" in parts:
        write_imagefolder(tmp_path / "folders", per_class=4)
    (tmp_path / "locked").mkdir()
    mode = 0o555 if locked == "locked" else 0o000
    (tmp_path / locked).chmod(mode)
    before = digest(tmp_path)
    try:
        done = subprocess.run([*NO_OVERRIDE, sys.executable, "-m", "carsweep", *argv],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
    finally:
        (tmp_path / locked).chmod(0o755)  # so that pytest may remove it
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert said in done.stderr
    assert digest(tmp_path) == before


# The last line of defence: an error of the machine that no check foresaw is one line, while
# a bug keeps its traceback. Told apart by kind: MemoryError, and an OSError whose errno is a
# refusal of the machine (carsweep.errors.ENVIRONMENT_ERRNOS: a full disk, a read-only file
# system, permissions, a path through a file...); every other exception is re-raised.
@pytest.mark.parametrize(("raised", "said"), [
    (OSError(errno.ENOSPC, "No space left on device", "/data/run/x.pt"),
     "/data/run/x.pt: No space left on device; free some space on that disk or write somewhere "
     "else"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"),
     "/ro/x: Read-only file system; that file system is mounted read-only; write somewhere else"),
    (PermissionError(errno.EACCES, "Permission denied", "/a", None, "/b"),
     "/a -> /b: Permission denied; you may not write or read there"),
    (MemoryError(), "ran out of memory; ask for less (fewer workers, smaller images or batches)"),
])
def test_an_error_of_the_machine_is_one_line_naming_the_command(monkeypatch, capsys, raised,
                                                                said):
    monkeypatch.setattr(carsweep.cli.status, "run", _raises(raised))
    assert main(["status", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"carsweep status: error: {said}"), err
    assert err.count("\n") == 1


@pytest.mark.parametrize("raised", [
    KeyError("column"), TypeError("bad operand"), FileNotFoundError(errno.ENOENT, "gone", "/x"),
    OSError(errno.EINVAL, "Invalid argument"),
])
def test_a_bug_still_shows_its_traceback(monkeypatch, raised):
    monkeypatch.setattr(carsweep.cli.status, "run", _raises(raised))
    with pytest.raises(type(raised)):
        main(["status", "x"])


def _raises(error: BaseException):
    def run(args):
        raise error
    return run
