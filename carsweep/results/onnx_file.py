"""The ONNX file: written by torch.onnx's dynamo exporter, checked by onnx, run by ONNX Runtime.

Why the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, torch's default) and not the
legacy TorchScript one: it converts the very ExportedProgram the .pt2 is saved from, so both
files come from one capture of the model; the legacy exporter would trace it a second time.
It exports faster, and its graph runs no faster in ONNX Runtime (BENCHMARKS.md, "ONNX Runtime
vs PyTorch").

Opset OPSET (18): the one torch's ONNX function library (torchlib) is written at, so no
version conversion runs on the graph, and the lowest of the 18-20 range current TensorRT and
OpenVINO releases import (neither is run here: ONNX Runtime is what proves the file).
`onnx.checker.check_model(..., full_check=True)` (shape inference included) runs on the
written file. Weights over EXTERNAL_DATA_ABOVE go to `<name>.onnx.data` beside it (a
protobuf cannot hold 2 GB; only regnet_y_128gf among torchvision's models).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.export import ExportedProgram

from carsweep.errors import UserError
from carsweep.results.deploy import (
    BATCH_DIM,
    INPUT_NAME,
    OUTPUT_NAMES,
    DeployInfo,
    exporter_refusal,
    read_metadata,
)
from carsweep.results.onnx_extra import READ_PACKAGES, require_onnx_extra

OPSET = 18
EXTERNAL_DATA_ABOVE = 1536 * 1024 * 1024  # torch.onnx's own threshold, well under 2 GB
# ONNX Runtime's graph optimisations, all of them (its default, named here to be stated).
ORT_OPTIMIZATION = "ORT_ENABLE_ALL"


def write_onnx(program: ExportedProgram, path: Path, metadata: dict[str, str],
               architecture: str) -> Path:
    """`program` as an ONNX file at `path` (and `path`.data for large weights), `metadata` in
    its metadata_props, checked by onnx's full checker."""
    import onnx

    with exporter_refusal("torch.onnx", architecture):
        onnx_program = torch.onnx.export(
            program, input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            opset_version=OPSET, dynamic_shapes={INPUT_NAME: {0: BATCH_DIM}}, dynamo=True,
            verbose=False)
    onnx_program.model.metadata_props.update(metadata)
    external = weight_bytes(program) > EXTERNAL_DATA_ABOVE
    onnx_program.save(path, external_data=external)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise UserError(f"the ONNX graph of {architecture} fails onnx's checker "
                        f"({str(error).strip().splitlines()[0][:200]})") from None
    return path


def onnx_files(path: Path) -> list[Path]:
    """The files an ONNX model at `path` is: the model, and its external weights if any."""
    data = path.with_name(f"{path.name}.data")
    return [path, data] if data.is_file() else [path]


def weight_bytes(program: ExportedProgram) -> int:
    return sum(t.numel() * t.element_size() for t in program.state_dict.values())


@dataclass(frozen=True)
class OnnxExport:
    """An ONNX export opened in ONNX Runtime, with what its metadata says."""

    path: Path
    session: object  # onnxruntime.InferenceSession
    info: DeployInfo

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def input_size(self) -> int:
        return self.info.input_size

    def outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, probs), each (N, C) float32, for uint8 (N, 3, S, S) images."""
        feed = {INPUT_NAME: np.ascontiguousarray(images.numpy())}
        logits, probs = self.session.run(list(OUTPUT_NAMES), feed)
        return torch.from_numpy(logits), torch.from_numpy(probs)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.outputs(images)[1]


def load_onnx(path: Path, *, threads: int | None = None) -> OnnxExport:
    """An ONNX file `export --onnx` wrote, in an ONNX Runtime CPU session with `threads`
    intra-op threads (default: as many as torch uses, so `predict` on the .onnx and on the
    .pt compute with the same threads); a missing runtime, a file that is not ONNX (or is
    damaged) and an ONNX file without carsweep's metadata are UserErrors."""
    path = Path(path)
    what = f"weights {str(path)!r}"
    require_onnx_extra(what, READ_PACKAGES)
    if not path.is_file():
        raise UserError(f"{what}: no such file; give a file `carsweep export --onnx` wrote")
    session = ort_session(path, threads=threads or torch.get_num_threads(), what=what)
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return OnnxExport(path, session, read_metadata(metadata, what))


def ort_session(path: Path, *, threads: int | None = None, what: str = "the ONNX file"):
    """An ONNX Runtime CPU session of `path`, every graph optimisation on; `threads` intra-op
    threads (None: ONNX Runtime's choice, one per physical core)."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPTIMIZATION)
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=["CPUExecutionProvider"])
    except (state.InvalidProtobuf, state.InvalidGraph, state.Fail, state.NoSuchFile,
            state.RuntimeException, state.NotImplemented, state.InvalidArgument) as error:
        reason = str(error).split(" : ")[-1].strip().splitlines()[0][:200]
        raise UserError(f"{what}: not a readable ONNX model, damaged or truncated "
                        f"(ONNX Runtime: {reason})") from None
