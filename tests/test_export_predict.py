"""carsweep export and predict: the exported file round-trips the model's predictions, loads
with weights_only, refuses pickles with code; predict's table, JSON, Grad-CAM and bad input."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sweep_runs import linked_copy
from torchvision.models import ResNet18_Weights

from carsweep.analysis.calibration import scaled
from carsweep.cli import main
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.results import load_experiment
from carsweep.results.export import FORMAT, load_export, save_retrained_model
from carsweep.trainable import build_model, load_checkpoint, predict, train
from carsweep.trainable.run_folder import RunFolder

RUN_CONFIG = TrialConfig(optimizer="adam", lr=1e-3, epochs=1, batch_size=16, resize=32,
                         num_workers=0, device="cpu", data_cache="off")


@pytest.fixture(scope="module")
def trained_run(prepared_dataset, tmp_path_factory):
    """A one-epoch `carsweep train` run folder and the model it left in memory (with one
    epoch, checkpoints/best is that model)."""
    folder = tmp_path_factory.mktemp("run") / "run"
    dataset = load_dataset(prepared_dataset)
    with RunFolder(folder, RUN_CONFIG, dataset.classes, out=io.StringIO()) as run:
        result = train(RUN_CONFIG, dataset, reporter=run)
    return folder, result


@pytest.fixture(scope="module")
def run_export(trained_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "run.pt"
    assert main(["export", str(trained_run[0]), "--out", str(out), "--torchscript"]) == 0
    return out


def images_of_test_split(dataset) -> list[Path]:
    return [dataset.image_path(p) for p in dataset.rows("test")["path"]]


def predicted_probabilities(weights: Path, images: list[Path], classes: list[str],
                            capsys) -> np.ndarray:
    """(N, C) probabilities from `carsweep predict --json --top C`, in class order."""
    capsys.readouterr()
    assert main(["predict", "--weights", str(weights), *map(str, images), "--json",
                 "--top", str(len(classes)), "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == list(map(str, images))
    probs = np.zeros((len(rows), len(classes)))
    for i, row in enumerate(rows):
        for entry in row["top"]:
            assert classes[entry["label"]] == entry["class"]
            probs[i, entry["label"]] = entry["probability"]
    return probs


def in_memory_probabilities(model, dataset, config) -> np.ndarray:
    logits, _ = predict(model.eval(), dataset, "test", config)
    return torch.softmax(logits.double(), dim=1).numpy()


@pytest.mark.slow
def test_experiment_export_predicts_as_the_best_checkpoint(finished_experiment,
                                                           prepared_dataset, tmp_path, capsys):
    out = tmp_path / "best.pt"
    assert main(["export", str(finished_experiment), "--out", str(out)]) == 0
    best = load_experiment(finished_experiment).best()
    saved = torch.load(out, weights_only=True)
    assert saved["format"] == FORMAT
    assert saved["architecture"] == "resnet18"
    assert saved["classes"] == best.classes
    assert saved["input_size"] == best.config.resize == 32
    reference = ResNet18_Weights.IMAGENET1K_V1.transforms()
    assert saved["normalization"] == {"mean": list(reference.mean), "std": list(reference.std)}
    assert TrialConfig.model_validate(saved["config"]) == best.config
    assert saved["source"]["trial_id"] == best.trial_id
    assert saved["source"]["value"] == best.value
    assert saved["test_metrics"] is None  # a trial's checkpoint was never tested
    assert set(saved) >= {"model", "version", "source"}

    model = build_model(len(best.classes))
    model.load_state_dict(load_checkpoint(best.checkpoint)["model"])
    dataset = load_dataset(prepared_dataset)
    expected = in_memory_probabilities(model, dataset, best.config)
    got = predicted_probabilities(out, images_of_test_split(dataset), best.classes, capsys)
    assert got.shape == (32, 4)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got.argmax(axis=1) == expected.argmax(axis=1)).all()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_run_folder_export_and_torchscript_predict_as_the_trained_model(
        trained_run, run_export, prepared_dataset, capsys, monkeypatch):
    monkeypatch.setattr("carsweep.analysis.predict.BATCH", 5)  # 32 images in 7 batches
    folder, result = trained_run
    dataset = load_dataset(prepared_dataset)
    expected = in_memory_probabilities(result.model, dataset, RUN_CONFIG)
    images = images_of_test_split(dataset)
    got = predicted_probabilities(run_export, images, dataset.classes, capsys)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    exported = load_export(run_export)
    assert exported.source["kind"] == "run"
    assert exported.source["checkpoint"] == "best"
    assert exported.config == RUN_CONFIG

    # TorchScript: normalisation inside, float RGB 0..1 in; names and size ride along.
    extra = {"classes.json": "", "carsweep.json": ""}
    scripted = torch.jit.load(str(run_export.with_name("run.torchscript.pt")),
                              _extra_files=extra)
    assert json.loads(extra["classes.json"]) == dataset.classes
    assert json.loads(extra["carsweep.json"])["input_size"] == 32
    from carsweep.analysis.predict import model_inputs

    inputs = model_inputs(images, exported.input_size)  # uint8 (N, 3, 32, 32)
    with torch.no_grad():
        scripted_probs = torch.softmax(scripted(inputs.float() / 255).double(), dim=1).numpy()
    np.testing.assert_allclose(scripted_probs, expected, atol=1e-5)


def test_predict_prints_a_table_of_the_top_classes(run_export, prepared_dataset, capsys):
    image = images_of_test_split(load_dataset(prepared_dataset))[0]
    capsys.readouterr()
    assert main(["predict", "--weights", str(run_export), str(image), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image)
    assert len(lines) == 3
    assert lines[1].startswith("  1. ")
    assert lines[2].startswith("  2. ")
    first, second = (float(line.rstrip("%").split()[-1]) for line in lines[1:])
    assert 100 >= first >= second >= 0


def test_predict_cam_writes_one_overlay_per_image(run_export, prepared_dataset, tmp_path,
                                                  capsys, monkeypatch):
    monkeypatch.setattr("carsweep.analysis.predict.BATCH", 1)  # names unique across batches
    dataset = load_dataset(prepared_dataset)
    source = dataset.image_path(dataset.rows("test")["path"].iloc[0])
    folder = tmp_path / "photos"
    (folder / "a").mkdir(parents=True)
    (folder / "b").mkdir()
    shutil.copy(source, folder / "a" / "car.png")  # two images with the same name
    shutil.copy(images_of_test_split(dataset)[-1], folder / "b" / "car.png")
    (folder / "notes.txt").write_text("not an image, skipped in a folder")
    cams = tmp_path / "cams"
    assert main(["predict", "--weights", str(run_export), str(folder), str(source),
                 "--cam", str(cams), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    written = sorted(cams.iterdir())
    assert len(rows) == 3
    assert len(written) == 3
    assert sorted(Path(row["cam"]) for row in rows) == written
    for row in rows:
        original = Image.open(row["path"]).convert("RGB")
        with Image.open(row["cam"]) as cam:
            assert cam.format == "PNG"
            assert cam.size == original.size
            assert np.abs(np.asarray(cam.convert("RGB"), int) - np.asarray(original, int)
                          ).mean() > 5  # the heat map is drawn over it


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.png", "no such file or folder"),
    (lambda tmp: _write(tmp / "notes.jpg", "not an image"), "not an image that can be read"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no image files in this folder"),
])
def test_predict_bad_input_is_one_line_and_exit_2(run_export, prepared_dataset, tmp_path,
                                                  capsys, monkeypatch, make, message):
    monkeypatch.setattr("carsweep.analysis.predict.BATCH", 1)  # the good image's batch runs
    good = images_of_test_split(load_dataset(prepared_dataset))[0]
    path = make(tmp_path)
    capsys.readouterr()
    assert main(["predict", "--weights", str(run_export), str(good), str(path), "--cam",
                 str(tmp_path / "cams")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert message in err
    assert str(path) in err
    assert not (tmp_path / "cams").exists()  # checked before anything is written


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


class _RunsCode:
    """Unpickling this creates a file: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_with_code_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    weights = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": 1, "model": _RunsCode(marker)}, weights)
    with pytest.raises(UserError, match="refused"):
        load_export(weights)
    assert main(["predict", "--weights", str(weights), str(weights)]) == 2
    assert "refused" in capsys.readouterr().err
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the file really runs code when trusted
    assert marker.exists()


def test_files_that_are_not_exports_are_refused(trained_run, tmp_path):
    checkpoint = trained_run[0] / "checkpoints" / "best" / "checkpoint.pt"
    with pytest.raises(UserError, match="not a carsweep export"):
        load_export(checkpoint)  # tensors only, but not an export
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_export(garbage)
    with pytest.raises(UserError, match="no such file"):
        load_export(tmp_path / "missing.pt")


@pytest.mark.parametrize("make", [lambda tmp: tmp / "nope", lambda tmp: tmp])
def test_export_of_a_folder_that_holds_no_model_is_one_line(tmp_path, capsys, make):
    out = tmp_path / "best.pt"
    assert main(["export", str(make(tmp_path)), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert str(make(tmp_path)) in err
    assert not out.exists()


@pytest.mark.slow
def test_experiment_export_prefers_the_model_analyze_retrained(finished_experiment,
                                                               trained_run, tmp_path, capsys):
    copy = linked_copy(finished_experiment, tmp_path / "experiment")
    folder, result = trained_run
    save_retrained_model(copy / "analysis", result.model, RUN_CONFIG, result.classes)
    unfitted = {"bins": 15, "temperature": 1.0, "fitted_on": "not fitted: trial a's checkpoint "
                "predicts all 24 val images right, so ..."}  # as analyze writes it
    metrics = {"top1": 0.5, "top5": 1.0, "test_images": 32, "split_scheme": "official",
               "calibration": unfitted}
    (copy / "analysis" / "metrics.json").write_text(json.dumps(metrics))
    out = tmp_path / "best.pt"
    capsys.readouterr()
    assert main(["export", str(copy), "--out", str(out)]) == 0
    assert ", not calibrated) from " in capsys.readouterr().out.splitlines()[0]
    exported = load_export(out)
    assert exported.source["kind"] == "retrained"
    assert exported.test_metrics == metrics
    assert exported.temperature == 1.0
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(exported.model.state_dict()[name], tensor), name


@pytest.mark.slow
def test_analyze_then_export_predicts_what_analyze_saved(finished_analysis, prepared_dataset,
                                                        tmp_path, capsys):
    """sweep -> analyze -> export -> predict: the exported retrained model gives the test
    probabilities analyze saved in predictions.csv with the temperature analyze fitted, and
    its top-1 in metrics.json."""
    copy = finished_analysis.parent  # the linked copy of the finished sweep analyze wrote to
    out = tmp_path / "retrained.pt"
    assert main(["export", str(copy), "--out", str(out)]) == 0
    saved = pd.read_csv(copy / "analysis" / "predictions.csv")
    test_metrics = json.loads((copy / "analysis" / "metrics.json").read_text())
    exported = load_export(out)
    assert exported.source["kind"] == "retrained"
    assert exported.test_metrics == test_metrics
    dataset = load_dataset(prepared_dataset)
    images = [dataset.image_path(p) for p in saved["path"]]
    got = predicted_probabilities(out, images, dataset.classes, capsys)
    assert exported.temperature == test_metrics["calibration"]["temperature"] != 1.0
    expected = scaled(saved[[f"p_{i}" for i in range(len(dataset.classes))]].to_numpy(),
                      exported.temperature)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    top1 = float((got.argmax(axis=1) == saved["label"].to_numpy()).mean())
    assert top1 == pytest.approx(test_metrics["top1"])
