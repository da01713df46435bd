"""`carsweep export EXPERIMENT_OR_RUN --out best.pt [--torchscript] [--onnx] [--pt2]`.

From an experiment: the model `analyze` retrained if there is one, else the best trial's best
checkpoint; from a `carsweep train` run folder: its checkpoints/best. The .pt loads with
`torch.load(..., weights_only=True)`; `carsweep predict --weights` uses it (and the .onnx).
`--onnx` and `--pt2` write deployment files beside it, each proved to give the .pt's answers
before anything is written (docs/export.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from carsweep.cli.arguments import place

HELP = "export the best model of an experiment or a train run: weights, classes, preprocessing"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=place, metavar="EXPERIMENT_OR_RUN",
                        help="experiment folder (results/NAME, or its URI s3://bucket/...), "
                        "`carsweep train` run folder, or a checkpoint folder")
    parser.add_argument("--out", type=Path, default=Path("best.pt"),
                        help="export file to write (default: best.pt)")
    parser.add_argument("--torchscript", action="store_true",
                        help="also write OUT's stem + .torchscript.pt (float RGB 0..1 in, "
                        "logits out; for libtorch / torch.jit.load)")
    parser.add_argument("--onnx", action="store_true",
                        help="also write OUT's stem + .onnx (uint8 RGB NCHW in, logits and "
                        "probs out; needs the onnx extra), proved in ONNX Runtime")
    parser.add_argument("--pt2", action="store_true",
                        help="also write OUT's stem + .pt2, a torch.export ExportedProgram "
                        "(same contract; loads in the same torch version), proved")
    parser.add_argument("--data", type=place, metavar="DATASET",
                        help="prepared dataset whose images prove --onnx/--pt2 (default: the "
                        "experiment's; random pixels where none is known)")


def run(args: argparse.Namespace) -> int:
    from carsweep.results.onnx_extra import require_onnx_extra

    if args.onnx:  # before torch is imported: a missing extra answers at once
        require_onnx_extra("--onnx")
    from carsweep.data.folders import check_output_path
    from carsweep.results.console import metric_text
    from carsweep.results.write_exports import export

    def beside(suffix: str, wanted: bool) -> Path | None:
        return args.out.with_name(f"{args.out.stem}{suffix}") if wanted else None

    extras = {"torchscript": beside(".torchscript.pt", args.torchscript),
              "onnx": beside(".onnx", args.onnx), "pt2": beside(".pt2", args.pt2)}
    for path in (args.out, *filter(None, extras.values())):
        check_output_path(path, flag="--out", folder=False)
    written = export(args.folder, args.out, **extras, data=args.data)
    payload = written.payload
    source = payload["source"]
    calibrated = (f", temperature {payload['temperature']:.3f}"
                  if payload["temperature"] != 1.0 else ", not calibrated")
    crop = ", car crops" if payload["crop"] == "bbox" else ""
    print(f"exported {source['kind']} {payload['architecture']} ({len(payload['classes'])} "
          f"classes, {payload['input_size']} px{crop}{calibrated}) from {source['path']} -> "
          f"{args.out}")
    if "value" in source:
        print(f"trial {source['trial_id']}: {source['metric']} = "
              f"{metric_text(source['metric'], source['value'])} "
              "(validation; run `carsweep analyze` for an honest test score)")
    if payload["test_metrics"]:
        shown = {k: v for k, v in payload["test_metrics"].items() if isinstance(v, float)}
        print("test metrics: " + ", ".join(f"{k} {metric_text(k, v)}" for k, v in shown.items()))
    names = {"torchscript": "TorchScript", "onnx": "ONNX", "pt2": "torch.export .pt2"}
    for kind, path in written.files.items():
        print(f"{names[kind]} -> {path}")
    if written.proofs:
        print(f"proved on {written.proof_images}, in one batch and the first alone again "
              f"({written.proofs[0].images} answers):")
        for proof in written.proofs:
            print(f"  {proof.line()}")
    return 0
