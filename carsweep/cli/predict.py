"""`carsweep predict --weights best.pt IMAGE_OR_FOLDER... [--top 5] [--json] [--cam OUT]`.

Prints the top-k classes of each image with their probabilities, as a table or as JSON;
`--cam OUT` also saves a Grad-CAM overlay of the top class for each image into OUT.
`--weights best.onnx` runs the ONNX file `export --onnx` wrote in ONNX Runtime (CPU), with
the same output; Grad-CAM needs the .pt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "top-k classes of images with an exported model (table or JSON), optional Grad-CAM"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER",
                        help="image files, or folders searched recursively for images")
    parser.add_argument("--weights", type=Path, required=True,
                        help="a file `carsweep export` wrote: the .pt, or the .onnx (run in "
                        "ONNX Runtime)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--cam", type=Path, metavar="OUT_DIR",
                        help="save a Grad-CAM overlay of the top class per image here")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="where the model runs (auto: cuda when available)")


def run(args: argparse.Namespace) -> int:
    from carsweep.results.onnx_extra import READ_PACKAGES, require_onnx_extra

    onnx = args.weights.suffix.lower() == ".onnx"
    if onnx:  # before torch is imported: a missing runtime answers at once
        require_onnx_extra(f"weights {str(args.weights)!r}", READ_PACKAGES)
    from carsweep.analysis.predict import format_predictions, predict_files, predictions_json
    from carsweep.data.folders import check_output_path
    from carsweep.errors import UserError
    from carsweep.results.export import load_export
    from carsweep.results.onnx_file import load_onnx
    from carsweep.trainable import resolve_device

    if args.top < 1:
        raise UserError(f"--top is {args.top}, but must be >= 1")
    if args.cam is not None:
        check_output_path(args.cam, flag="--cam")
    if onnx:
        if args.device == "cuda":
            raise UserError("--device cuda: an ONNX file runs in ONNX Runtime on the CPU here; "
                            "leave --device out, or give the .pt export")
        exported = load_onnx(args.weights)
    else:
        exported = load_export(args.weights)
        exported.model.to(resolve_device(args.device))
    predictions = predict_files(exported, args.inputs, k=args.top, cam_dir=args.cam)
    print(predictions_json(predictions) if args.json else format_predictions(predictions))
    return 0
