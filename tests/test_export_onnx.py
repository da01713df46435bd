"""export --onnx / --pt2 and predict on an ONNX file: the files give the .pt's answers.

Three families at 64 px (ResNet-18, EfficientNet-B0, RegNetY-400MF), each exported once with
both files; their BatchNorm statistics come from the dataset's training images (a random
init leaves EfficientNet's activations at 1e-13 in eval mode, where every probability is
equal and agreement proves nothing). The ResNet-18 is an experiment's retrained model with a
fitted temperature and `bbox_crop`, so the temperature in the graph, the crop and the
single-model metrics are checked in the files' metadata.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from no_ray import blocking
from torch import nn

from carsweep.analysis.predict import model_inputs
from carsweep.cli import main
from carsweep.config.files import CHECKPOINT_FILE
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.errors import UserError
from carsweep.results.deploy import REFUSED, capture, read_metadata
from carsweep.results.export import load_export, save_retrained_model
from carsweep.results.onnx_file import OPSET, load_onnx
from carsweep.results.pt2_file import load_pt2
from carsweep.results.sameness import PROB_TOLERANCE, agreement, proof_images, prove_same
from carsweep.trainable.data import build_loader
from carsweep.trainable.model import build_model

MODELS = ("resnet18", "efficientnet_b0", "regnet_y_400mf")
SIZE = 64
TEMPERATURE = 1.7
TEST_METRICS = {"top1": 0.5, "top5": 1.0, "mean_per_class_accuracy": 0.5, "test_images": 32,
                "ece": 0.1, "nll": 1.2, "split_scheme": "official",
                "calibration": {"temperature": TEMPERATURE, "fitted_on": "val"},
                "ensemble": {"top1": 0.9}, "tta": {"top1": 0.8}, "seeds": [{"top1": 0.5}]}


def model_with_real_statistics(name: str, dataset, config: TrialConfig) -> nn.Module:
    """`name` with random weights and BatchNorm statistics of the dataset's train images."""
    torch.manual_seed(0)
    model = build_model(len(dataset.classes), model=name)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a cumulative average over the batches below
    loader = build_loader(dataset, "train", config, train=False)
    model.train()
    with torch.no_grad():
        for images, _ in loader:
            model(loader.to_model_input(images))
    return model.eval()


def write_source(name: str, dataset, folder: Path) -> Path:
    """ResNet-18: an experiment whose `analyze` retrained it (temperature, bbox_crop, test
    metrics with ensemble, TTA and seeds beside the single model's); the others: a bare
    checkpoint folder."""
    config = TrialConfig(model=name, resize=SIZE, num_workers=0, data_cache="off",
                         bbox_crop=name == "resnet18")
    model = model_with_real_statistics(name, dataset, config)
    if name != "resnet18":
        from carsweep.trainable.checkpoint import save_checkpoint

        return save_checkpoint(folder, {"model": model.state_dict(), "epoch": 1}, config,
                               dataset.classes)
    (folder / "sweep.yaml").parent.mkdir(parents=True)
    (folder / "sweep.yaml").write_text("name: retrained\n")
    save_retrained_model(folder / "analysis", model, config, dataset.classes)
    metrics = TEST_METRICS | {"dataset": str(dataset.folder)}
    (folder / "analysis" / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture(scope="module")
def export_of(prepared_dataset, tmp_path_factory):
    """name -> (source folder, best.pt path, printed lines) of that model's export with both
    files, made on first use."""
    made: dict[str, tuple[Path, Path, list[str]]] = {}

    def export(name: str) -> tuple[Path, Path, list[str]]:
        if name not in made:
            folder = tmp_path_factory.mktemp(name)
            source = write_source(name, load_dataset(prepared_dataset), folder / "source")
            out = folder / "best.pt"
            data = [] if name == "resnet18" else ["--data", str(prepared_dataset)]
            made[name] = (source, out, _run_main(["export", str(source), "--out", str(out),
                                                  "--onnx", "--pt2", *data]))
        return made[name]

    return export


@functools.cache
def loaded_pt2(path: Path):
    """A .pt2 loaded once for the tests that read it (a load takes 1-2 s)."""
    return load_pt2(path)


def _run_main(argv: list[str]) -> list[str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(argv) == 0
    return buffer.getvalue().splitlines()


@pytest.mark.parametrize("name", MODELS)
def test_the_files_give_the_pts_answers_for_a_batch_of_1_and_of_7(export_of, name,
                                                                    prepared_dataset):
    _, out, printed = export_of(name)
    onnx_path, pt2_path = out.with_suffix(".onnx"), out.with_suffix(".pt2")
    assert f"ONNX -> {onnx_path}" in printed
    assert f"torch.export .pt2 -> {pt2_path}" in printed
    assert any(line.startswith("proved on 16 test images of") for line in printed)
    assert sum("max |Δp|" in line for line in printed) == 2

    dataset = load_dataset(prepared_dataset)
    paths = [dataset.image_path(p) for p in dataset.rows("test")["path"]][::4][:8]
    reference = load_export(out)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    program, _ = loaded_pt2(pt2_path)
    for batch in (paths[:1], paths[1:8]):
        images = model_inputs(batch, SIZE)  # uint8 (B, 3, 64, 64)
        expected = reference.probabilities(images)
        logits, probs = session.run(["logits", "probs"], {"images": images.numpy()})
        with torch.no_grad():
            pt2_logits, pt2_probs = program(images)
        for runtime, got in (("onnx", torch.from_numpy(probs)), ("pt2", pt2_probs)):
            found = agreement(runtime, expected, got)
            assert found.same, found.line()
            assert found.images == len(batch)
        # probs is the softmax of logits over the temperature, in both files
        for got_logits, got_probs in ((torch.from_numpy(logits), probs), (pt2_logits, pt2_probs)):
            np.testing.assert_allclose(
                torch.softmax(got_logits / reference.temperature, dim=1).numpy(), got_probs,
                atol=1e-6)
    # Not a proof on equal probabilities: most test images have a clear top-1.
    images = model_inputs(paths, SIZE)
    margins = reference.probabilities(images).topk(2, dim=1).values.diff(dim=1).abs()
    assert (margins > 2 * PROB_TOLERANCE).float().mean() >= 0.75, (name, margins)


@pytest.mark.parametrize("name", MODELS)
def test_the_onnx_graph_keeps_the_input_contract(export_of, name):
    _, out, _ = export_of(name)
    path = out.with_suffix(".onnx")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [OPSET]
    (given,) = model.graph.input
    assert given.name == "images"
    assert given.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = given.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, SIZE, SIZE]
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    assert not any(node.op_type == "Resize" for node in model.graph.node)  # resize is outside


@pytest.mark.parametrize("name", MODELS)
def test_metadata_travels_inside_both_files(export_of, name, prepared_dataset):
    source, out, printed = export_of(name)
    saved = torch.load(out, weights_only=True)
    checkpoint = (source / "analysis" / "model" if name == "resnet18" else source)
    sha256 = hashlib.sha256((checkpoint / CHECKPOINT_FILE).read_bytes()).hexdigest()
    assert saved["source"]["checkpoint_sha256"] == sha256
    session = ort.InferenceSession(str(out.with_suffix(".onnx")),
                                   providers=["CPUExecutionProvider"])
    from_onnx = read_metadata(dict(session.get_modelmeta().custom_metadata_map), "onnx")
    _, from_pt2 = loaded_pt2(out.with_suffix(".pt2"))
    assert from_onnx.metadata == from_pt2.metadata
    info = from_onnx
    assert info.architecture == name
    assert info.classes == saved["classes"] == load_dataset(prepared_dataset).classes
    assert info.input_size == SIZE
    assert info.source_sha256 == sha256
    assert info.versions == {"carsweep": saved["carsweep_version"], "torch": torch.__version__,
                             "torchvision": __import__("torchvision").__version__}
    if name == "resnet18":  # the experiment: temperature, car crops, single-model metrics
        assert info.temperature == saved["temperature"] == TEMPERATURE
        assert info.crop == saved["crop"] == "bbox"
        assert "car crops" in info.metadata["crop_meaning"]
        assert any("cropped to their boxes" in line for line in printed)  # the proof's images
        assert info.test_metrics == {key: TEST_METRICS[key] for key in (
            "top1", "top5", "mean_per_class_accuracy", "test_images", "ece", "nll",
            "split_scheme")}
    else:
        assert (info.temperature, info.crop, info.test_metrics) == (1.0, "none", None)
        assert "whole image" in info.metadata["crop_meaning"]


def a_test_image(prepared_dataset: Path) -> str:
    dataset = load_dataset(prepared_dataset)
    return str(dataset.image_path(dataset.rows("test")["path"].iloc[0]))


def predicted(weights: Path, images: list[str], *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["predict", "--weights", str(weights), *images, *extra])
    return code, out.getvalue(), err.getvalue()


def test_predict_on_the_onnx_file_prints_what_the_pt_prints(export_of, prepared_dataset):
    _, out, _ = export_of("resnet18")
    dataset = load_dataset(prepared_dataset)
    images = [str(dataset.image_path(p)) for p in dataset.rows("test")["path"]]
    tables = [predicted(weights, images, "--top", "3")
              for weights in (out, out.with_suffix(".onnx"))]
    assert [(code, err) for code, _, err in tables] == [(0, ""), (0, "")]
    pt_lines, onnx_lines = (printed.splitlines() for _, printed, _ in tables)
    assert len(pt_lines) == len(onnx_lines) == 32 * 4  # the image, then its top 3
    for pt_line, onnx_line in zip(pt_lines, onnx_lines, strict=True):
        if not pt_line.endswith("%"):
            assert pt_line == onnx_line  # the image's path
            continue
        # the same class at the same rank; the percentage at most its last digit apart (the
        # runtimes round float32 differently: ~1e-6 in probability for this model)
        assert pt_line.rsplit(maxsplit=1)[0] == onnx_line.rsplit(maxsplit=1)[0]
        assert float(pt_line.split()[-1][:-1]) == pytest.approx(
            float(onnx_line.split()[-1][:-1]), abs=0.011)
    as_json = {weights: json.loads(predicted(weights, images, "--json", "--top", "4")[1])
               for weights in (out, out.with_suffix(".onnx"))}
    from_pt, from_onnx = as_json[out], as_json[out.with_suffix(".onnx")]
    assert [row["path"] for row in from_pt] == [row["path"] for row in from_onnx] == images
    for pt_row, onnx_row in zip(from_pt, from_onnx, strict=True):
        assert [e["class"] for e in pt_row["top"]] == [e["class"] for e in onnx_row["top"]]
        np.testing.assert_allclose([e["probability"] for e in onnx_row["top"]],
                                   [e["probability"] for e in pt_row["top"]],
                                   atol=PROB_TOLERANCE)


def test_cam_on_an_onnx_file_is_one_line_pointing_at_the_pt(export_of, prepared_dataset,
                                                            tmp_path):
    _, out, _ = export_of("resnet18")
    image = a_test_image(prepared_dataset)
    code, printed, err = predicted(out.with_suffix(".onnx"), [image], "--cam",
                                   str(tmp_path / "cams"))
    assert (code, printed, err.count("\n")) == (2, "", 1)
    assert "--cam needs the PyTorch model" in err
    assert f"--weights {out}" in err
    assert not (tmp_path / "cams").exists()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda data: data[: len(data) // 2], "not a readable ONNX model, damaged or truncated"),
    (lambda data: b"garbage" * 64, "not a readable ONNX model, damaged or truncated"),
], ids=["truncated", "not onnx"])
def test_a_damaged_onnx_file_is_one_line(export_of, prepared_dataset, tmp_path, damage,
                                         message):
    _, out, _ = export_of("resnet18")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(damage(out.with_suffix(".onnx").read_bytes()))
    image = a_test_image(prepared_dataset)
    code, printed, err = predicted(broken, [image])
    assert (code, printed, err.count("\n")) == (2, "", 1)
    assert message in err
    assert str(broken) in err


def test_an_onnx_file_without_carsweeps_metadata_is_refused(export_of, prepared_dataset,
                                                            tmp_path):
    _, out, _ = export_of("resnet18")
    model = onnx.load(str(out.with_suffix(".onnx")))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    code, _, err = predicted(foreign, [a_test_image(prepared_dataset)])
    assert code == 2
    assert "not a carsweep export (no metadata format 'carsweep-deploy')" in err


WITHOUT_ONNX = blocking("onnx", "onnxruntime", "onnxscript") + """
from carsweep.cli import main
print(main(["export", sys.argv[1], "--out", sys.argv[2], "--onnx"]))
print(main(["predict", "--weights", sys.argv[3], sys.argv[4]]))
"""


def test_without_the_onnx_extra_export_and_predict_say_so_in_one_line(export_of,
                                                                      prepared_dataset,
                                                                      tmp_path):
    source, out, _ = export_of("resnet18")
    image = a_test_image(prepared_dataset)
    target = tmp_path / "best.pt"
    done = subprocess.run([sys.executable, "-c", WITHOUT_ONNX, str(source), str(target),
                           str(out.with_suffix(".onnx")), image],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "2"], done.stderr[-2000:]
    export_line, predict_line = done.stderr.splitlines()
    assert export_line == (
        "carsweep export: error: --onnx needs onnx, onnxruntime, onnxscript, which this "
        "Python lacks: install carsweep's onnx extra, pip install 'carsweep[onnx]'")
    assert predict_line.startswith(f"carsweep predict: error: weights '{out.with_suffix('.onnx')}"
                                   "' needs onnxruntime, which this Python lacks")
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_backbone_no_exporter_takes_is_refused_in_one_line_naming_it(export_of,
                                                                        tmp_path, monkeypatch):
    source, _, _ = export_of("regnet_y_400mf")
    refused = dict(REFUSED) or {"regnet_y_400mf": "a test's stand-in reason"}
    name, reason = next(iter(refused.items()))
    monkeypatch.setitem(REFUSED, name, reason)
    config = TrialConfig(model=name, resize=224 if name == "maxvit_t" else SIZE)
    (source.parent / "refused").mkdir()
    (source.parent / "refused" / "trial.yaml").write_text(config.model_dump_json())
    (source.parent / "refused" / CHECKPOINT_FILE).write_bytes(b"never read")
    out = tmp_path / "best.pt"
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        assert main(["export", str(source.parent / "refused"), "--out", str(out), "--pt2"]) == 2
    assert buffer.getvalue() == (f"carsweep export: error: {name} cannot be exported for "
                                 f"deployment: {reason}; export the .pt alone\n")
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_gives_other_answers_is_an_error_with_the_figures(export_of,
                                                                      prepared_dataset):
    """EfficientNet-B0's ONNX file offered as ResNet-18's (same classes, same input): the
    proof that export runs on every file it writes refuses it."""
    _, resnet, _ = export_of("resnet18")
    _, other, _ = export_of("efficientnet_b0")
    reference = load_export(resnet)
    proof = proof_images(reference, prepared_dataset, explicit=True)
    wrong = load_onnx(other.with_suffix(".onnx"))
    with pytest.raises(UserError) as refused:
        prove_same("ONNX Runtime", reference, wrong.probabilities, proof)
    message = str(refused.value)
    assert message.startswith("resnet18: ONNX Runtime vs PyTorch: max |Δp| ")
    assert "(tolerance 1e-03)" in message
    assert message.endswith("the file gives other answers than the .pt, so it is not written")
    assert "16 test images of" in message
    assert "cropped to their boxes" in message
    right = prove_same("ONNX Runtime", reference, load_onnx(resnet.with_suffix(".onnx"))
                       .probabilities, proof)
    assert right.same
    assert right.images == 17


def test_predict_cuda_on_an_onnx_file_and_a_missing_proof_dataset_are_one_line(
        export_of, prepared_dataset, tmp_path):
    source, out, _ = export_of("resnet18")
    code, _, err = predicted(out.with_suffix(".onnx"), [a_test_image(prepared_dataset)],
                             "--device", "cuda")
    assert (code, err.count("\n")) == (2, 1)
    assert "--device cuda: an ONNX file runs in ONNX Runtime on the CPU here" in err
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        assert main(["export", str(source), "--out", str(tmp_path / "best.pt"), "--pt2",
                     "--data", str(tmp_path / "nope")]) == 2
    assert buffer.getvalue().count("\n") == 1
    assert f"{tmp_path / 'nope'}: no such dataset folder" in buffer.getvalue()
    assert list(tmp_path.iterdir()) == []


class _BranchesOnPixels(nn.Module):
    """A model torch.export cannot capture: its control flow depends on the input's values."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits if x.mean() > 0 else -logits


def test_an_exporters_failure_is_one_line_naming_the_backbone(export_of):
    _, out, _ = export_of("resnet18")
    reference = load_export(out)
    branching = replace(reference, model=_BranchesOnPixels(reference.model))
    with pytest.raises(UserError) as refused:
        capture(branching)
    message = str(refused.value)
    assert message.startswith("torch.export cannot take resnet18 (")
    assert message.endswith("); export the .pt alone")
    assert "\n" not in message


def test_without_a_dataset_the_proof_runs_on_seeded_random_images_and_says_so(export_of,
                                                                             tmp_path):
    _, out, _ = export_of("resnet18")
    exported = load_export(out)
    unknown = proof_images(exported, None)
    gone = proof_images(exported, tmp_path / "moved-away")
    assert unknown.description == ("16 random images (seed 0): no dataset is recorded for it; "
                                   "give --data DATASET to prove on real images")
    assert gone.description == (f"16 random images (seed 0): the dataset "
                                f"{tmp_path / 'moved-away'} is not there")
    assert unknown.images.dtype == torch.uint8
    assert unknown.images.shape == (16, 3, SIZE, SIZE)
    assert torch.equal(unknown.images, gone.images)  # seeded: the same pixels every time
