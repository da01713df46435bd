"""ONNX Runtime vs PyTorch eager on this CPU, side by side in one process, and export times.

The model is ResNet-18 (carsweep's default) with 4 classes, random weights and BatchNorm
statistics of random images (bench/export_all.py's `make_checkpoint`), exported by the
product (`results.write_exports.export`) at each size. Both runtimes use the same number of
threads (torch.set_num_threads and ONNX Runtime's intra-op threads, --threads, default every
core); ONNX Runtime runs at its ORT_ENABLE_ALL optimisation level (results/onnx_file.py).

    model alone      uint8 (B, 3, S, S) in, probabilities out: `Export.probabilities` (the
                     .pt's model, normalisation and softmax, no_grad) vs `OnnxExport
                     .probabilities` (ONNX Runtime session.run); B = 1 and 32
    predict          `carsweep predict --weights best.pt|best.onnx --json` on 1 and on 32
                     JPEG files (synthetic car drawings, 480 px), in this process: the file
                     loaded, the images decoded and resized, the model run, JSON printed
    export           `carsweep export` of the checkpoint: the .pt alone, with --onnx, with
                     --pt2 (each with its proof of sameness), and torch.onnx's legacy
                     TorchScript exporter on the same graph for comparison (no proof)

Rounds are interleaved (PyTorch, ONNX Runtime, PyTorch, ...) so a load change on a shared
machine hits both alike; the median of ROUNDS is shown, and the ratio is per round.

    .venv/bin/python bench/onnx_speed.py [--sizes 224,400] [--rounds 5] [--threads N]
        [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from export_all import make_checkpoint
from machine import describe, load_average

from carsweep.cli import main as carsweep
from carsweep.data.synth import make_synthetic_dataset
from carsweep.results.deploy import INPUT_NAME, OUTPUT_NAMES, DeployGraph
from carsweep.results.export import load_export
from carsweep.results.onnx_file import OPSET, ORT_OPTIMIZATION, load_onnx, ort_session
from carsweep.results.write_exports import export

MODEL = "resnet18"
BATCHES = (1, 32)
PYTORCH, ORT = "PyTorch eager", "ONNX Runtime"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="224,400")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start_load = load_average()
    rows = []
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as folder:
        photos = synthetic_photos(Path(folder) / "photos")
        for size in map(int, args.sizes.split(",")):
            rows += bench_size(size, Path(folder) / f"{size}", photos, args.rounds,
                               args.threads)
    machine = describe(start_load)
    print(table(rows))
    print(f"ONNX Runtime at {ORT_OPTIMIZATION}, opset {OPSET}, {args.threads} threads for both "
          f"runtimes; median of {args.rounds} rounds")
    print(machine)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "threads": args.threads,
                                         "ort_optimization": ORT_OPTIMIZATION, "rows": rows},
                                        indent=1) + "\n")


def bench_size(size: int, folder: Path, photos: list[Path], rounds: int,
               threads: int) -> list[dict]:
    checkpoint = make_checkpoint(MODEL, size, folder / "checkpoint")
    out = folder / "best.pt"
    rows = [export_times(checkpoint, out, size)]
    pt, runtime = load_export(out), load_onnx(out.with_suffix(".onnx"), threads=threads)
    legacy = ort_session(out.with_name("legacy.onnx"), threads=threads)
    generator = torch.Generator().manual_seed(0)
    for batch in BATCHES:
        images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8,
                               generator=generator)
        rows.append(side_by_side(
            f"model alone, batch {batch}", size, rounds,
            (PYTORCH, lambda images=images: pt.probabilities(images)),
            (ORT, lambda images=images: runtime.probabilities(images))))
    rows.append(side_by_side(
        f"ONNX Runtime, batch {max(BATCHES)}: legacy exporter's graph vs dynamo's", size,
        rounds, ("legacy graph", lambda: legacy.run(None, {INPUT_NAME: images.numpy()})),
        ("dynamo graph", lambda: runtime.probabilities(images))))
    for count in BATCHES:
        files = [str(p) for p in photos[:count]]
        rows.append(side_by_side(
            f"predict, {count} JPEG{'s' if count > 1 else ''}", size, rounds,
            (PYTORCH, lambda files=files: predict_quietly(out, files)),
            (ORT, lambda files=files: predict_quietly(out.with_suffix(".onnx"), files))))
    return rows


def side_by_side(what: str, size: int, rounds: int, first: tuple[str, object],
                 second: tuple[str, object]) -> dict:
    """Median seconds of two (name, call)s, rounds interleaved after a warm-up call each;
    `ratio` is the median of first / second per round (> 1: the second is faster)."""
    (first_name, first_call), (second_name, second_call) = first, second
    first_call(), second_call()
    times: dict[str, list[float]] = {first_name: [], second_name: []}
    for _ in range(rounds):
        for name, call in (first, second):
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    ratios = [a / b for a, b in zip(times[first_name], times[second_name], strict=True)]
    row = {"what": what, "size": size, "first": first_name, "second": second_name,
           "first_s": statistics.median(times[first_name]),
           "second_s": statistics.median(times[second_name]),
           "ratio": statistics.median(ratios)}
    print(f"{size} px, {what}: {first_name} {row['first_s'] * 1e3:.1f} ms, {second_name} "
          f"{row['second_s'] * 1e3:.1f} ms, ratio {row['ratio']:.2f}", flush=True)
    return row


def predict_quietly(weights: Path, files: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert carsweep(["predict", "--weights", str(weights), *files, "--json",
                         "--device", "cpu"]) == 0


def export_times(checkpoint: Path, out: Path, size: int) -> dict:
    """Seconds of `export` with each file (the .pt written every time), and of the legacy
    exporter on the same deployment graph."""
    seconds = {}
    for kind, extra in (("pt", {}), ("onnx", {"onnx": out.with_suffix(".onnx")}),
                        ("pt2", {"pt2": out.with_suffix(".pt2")})):
        started = time.perf_counter()
        export(checkpoint, out, **extra)
        seconds[kind] = time.perf_counter() - started
    seconds["onnx_legacy_exporter"] = legacy_export_seconds(out, size)
    print(f"{size} px, export: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
          flush=True)
    return {"what": "export", "size": size, **{f"{k}_s": v for k, v in seconds.items()}}


def legacy_export_seconds(out: Path, size: int) -> float:
    graph = DeployGraph(load_export(out)).eval()
    example = torch.zeros(2, 3, size, size, dtype=torch.uint8)
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its deprecation notice
        torch.onnx.export(graph, (example,), str(out.with_name("legacy.onnx")), dynamo=False,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          opset_version=OPSET, dynamic_axes=dynamic)
    return time.perf_counter() - started


def synthetic_photos(folder: Path) -> list[Path]:
    """32 JPEG car drawings of 480 px: the decoding and resizing a photo costs."""
    make_synthetic_dataset(folder, classes=4, per_class=8, test_per_class=1, size=480,
                           image_format="jpg")
    return sorted(folder.rglob("*.jpg"))[:max(BATCHES)]


def table(rows: list[dict]) -> str:
    lines = ["| size | what | first | second | first / second |", "|---|---|---|---|---|"]
    for row in rows:
        if row["what"] != "export":
            lines.append(f"| {row['size']} px | {row['what']} | {row['first']} "
                         f"{row['first_s'] * 1e3:.1f} ms | {row['second']} "
                         f"{row['second_s'] * 1e3:.1f} ms | {row['ratio']:.2f} |")
    lines += ["", "| size | export .pt | .pt + --onnx | .pt + --pt2 | legacy ONNX exporter |",
              "|---|---|---|---|---|"]
    for row in rows:
        if row["what"] == "export":
            lines.append(f"| {row['size']} px | {row['pt_s']:.1f} s | {row['onnx_s']:.1f} s | "
                         f"{row['pt2_s']:.1f} s | {row['onnx_legacy_exporter_s']:.1f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
