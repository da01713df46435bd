"""Every torchvision backbone carsweep accepts, through `export --onnx --pt2` once, small.

Per model, in a subprocess of its own (a crash or a leak stays there; a time limit): the
model with random weights, its BatchNorm statistics taken from one training-mode pass over
random images (torchvision's init leaves some families' activations vanishing in eval mode,
EfficientNet's at 1e-13, and a proof on equal probabilities proves nothing), saved as a
checkpoint folder at the smallest of SIZES the model takes; then the product's export
(`results.write_exports.export`, what `carsweep export --onnx --pt2` runs) with the known
refusals off, so the exporters themselves answer. Printed and written: per model the
outcome, the export's time, the ONNX file's size and both proofs' max |Δp| and top-1 counts,
or the one line of the refusal. `deploy.REFUSED` and docs/export.md's list come from it.

    .venv/bin/python bench/export_all.py [--only resnet18,swin_t] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, load_average

SIZES = (64, 96, 224)  # inception_v3 takes 75 px and up, maxvit_t 224 only
MODEL_TIMEOUT_S = 1200
CLASSES = ["a", "b", "c", "d"]
CALIBRATION_IMAGES = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names (default: every one)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the subprocess's model
    args = parser.parse_args()
    if args.one:
        print(json.dumps(export_one(args.one)))
        return
    from carsweep.trainable.backbones import model_names

    start_load = load_average()
    names = args.only.split(",") if args.only else list(model_names())
    rows = []
    for name in names:
        row = run_in_subprocess(name)
        rows.append(row)
        print(format_row(row), flush=True)
    import torch  # for the machine line's version

    summary = {"machine": describe(start_load), "torch": torch.__version__, "rows": rows,
               "refused": {row["model"]: row["error"] for row in rows if row["outcome"] != "ok"}}
    print(summary["machine"])
    print(f"{sum(row['outcome'] == 'ok' for row in rows)}/{len(rows)} exported and proved; "
          f"refused: {', '.join(summary['refused']) or 'none'}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")


def run_in_subprocess(name: str) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True,
                              text=True, timeout=MODEL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"model": name, "outcome": "timeout", "error": f"over {MODEL_TIMEOUT_S} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"model": name, "outcome": "crashed", "error": tail[:300],
                "seconds": round(time.perf_counter() - started, 1)}
    return json.loads(lines[-1])


def export_one(name: str) -> dict:
    """One model through the product's export, in this process."""
    import torch

    from carsweep.errors import UserError
    from carsweep.results import deploy
    from carsweep.results.write_exports import export

    deploy.REFUSED.clear()  # the exporters answer here, not the list this bench writes
    size = smallest_size(name)
    with tempfile.TemporaryDirectory(prefix="export-all-") as folder:
        checkpoint = make_checkpoint(name, size, Path(folder) / "checkpoint")
        parameters = sum(t.numel() for t in torch.load(
            checkpoint / "checkpoint.pt", weights_only=True)["model"].values())
        out = Path(folder) / "best.pt"
        started = time.perf_counter()
        row = {"model": name, "size": size, "parameters": parameters}
        try:
            written = export(checkpoint, out, onnx=out.with_suffix(".onnx"),
                             pt2=out.with_suffix(".pt2"))
        except UserError as error:
            return row | {"outcome": "refused", "error": str(error),
                          "seconds": round(time.perf_counter() - started, 1)}
        onnx_bytes = sum(p.stat().st_size for p in Path(folder).glob("best.onnx*"))
        return row | {
            "outcome": "ok", "seconds": round(time.perf_counter() - started, 1),
            "onnx_bytes": onnx_bytes,
            "proofs": {proof.runtime: {"max_delta": proof.max_delta, "decided": proof.decided,
                                       "top1_equal": proof.top1_equal, "images": proof.images}
                       for proof in written.proofs}}


def smallest_size(name: str) -> int:
    from carsweep.errors import UserError
    from carsweep.trainable.backbones import feature_stages

    for size in SIZES:
        try:
            feature_stages(name, size)
            return size
        except UserError:
            continue
    return SIZES[-1]


def make_checkpoint(name: str, size: int, folder: Path) -> Path:
    """A checkpoint folder of `name` with random weights and BatchNorm statistics of one
    training-mode pass over CALIBRATION_IMAGES random images, drawn as the proof's are
    (uniform uint8, another seed) and normalised as the model's input is (momentum 1: the
    statistics are that batch's). Statistics of another distribution (randn) blew
    EfficientNet-B1's logits up to 1e5 on the proof's images, where float rounding alone
    flips the top-1."""
    import torch
    from torch import nn

    from carsweep.config.trial import TrialConfig
    from carsweep.trainable.augment import normalization
    from carsweep.trainable.checkpoint import save_checkpoint
    from carsweep.trainable.gpu_augment import Normalize
    from carsweep.trainable.model import build_model

    torch.manual_seed(0)
    model = build_model(len(CLASSES), model=name)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    images = torch.randint(0, 256, (CALIBRATION_IMAGES, 3, size, size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    model.train()
    with torch.no_grad():
        model(Normalize(*normalization(name))(images))
    config = TrialConfig(model=name, resize=size)
    return save_checkpoint(folder, {"model": model.state_dict(), "epoch": 1}, config, CLASSES)


def format_row(row: dict) -> str:
    head = f"{row['model']:<20} {row.get('size', ''):>4} px  {row['outcome']:<8}"
    if row["outcome"] != "ok":
        return f"{head} {row.get('seconds', '')} s  {row['error']}"
    proofs = "  ".join(f"{runtime}: max|Δp| {p['max_delta']:.1e}, top-1 {p['top1_equal']}/"
                       f"{p['decided']}" for runtime, p in row["proofs"].items())
    return (f"{head} {row['seconds']:6.1f} s  {row['parameters'] / 1e6:7.1f} M params  "
            f"{row['onnx_bytes'] / 1e6:8.1f} MB  {proofs}")


if __name__ == "__main__":
    main()
