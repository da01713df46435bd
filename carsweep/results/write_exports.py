"""`carsweep export`: the .pt, and beside it the files asked for (TorchScript, ONNX, .pt2).

The order keeps "bad input or a failed proof leaves no file behind" true: everything is
built in memory first; the ONNX and .pt2 files are written into a staging folder beside the
.pt, read back from there and proved to give the .pt's answers (results/sameness.py); only
then is the .pt written and each staged file renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from carsweep.config.files import SWEEP_FILE
from carsweep.config.io import disk_full_is_user_error, read_yaml
from carsweep.results.deploy import capture, metadata, refuse_if_known
from carsweep.results.export import (
    Export,
    ModelSource,
    check_out,
    checkpoint_config,
    export_payload,
    find_source,
    from_payload,
    trace,
    write_export,
    write_torchscript,
)
from carsweep.results.onnx_extra import require_onnx_extra
from carsweep.results.onnx_file import load_onnx, onnx_files, write_onnx
from carsweep.results.pt2_file import load_pt2, write_pt2
from carsweep.results.sameness import Agreement, ProofImages, proof_images, prove_same
from carsweep.storage import BucketPath, location


@dataclass
class Written:
    """What `export` wrote: the .pt's payload, the other files, and the proofs of sameness."""

    payload: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)  # kind (torchscript, onnx, pt2) -> path
    proofs: list[Agreement] = field(default_factory=list)
    proof_images: str | None = None  # what the proofs ran on


def export(folder: Path, out: Path, *, torchscript: Path | None = None,
           onnx: Path | None = None, pt2: Path | None = None,
           data: Path | None = None) -> Written:
    """Export what `folder` holds to `out`, and to the other files given; `data` is the
    dataset whose images prove the ONNX and .pt2 files (default: the experiment's)."""
    deployables = onnx is not None or pt2 is not None
    if onnx is not None:
        require_onnx_extra("--onnx")
    check_out(out)
    source = find_source(folder)
    if deployables:
        refuse_if_known(checkpoint_config(source.checkpoint).model)
    payload = export_payload(source)
    exported = from_payload(payload, str(folder))
    traced = trace(exported) if torchscript is not None else None
    written = Written(payload)
    with _staging(Path(out)) as stage:
        staged = {}
        if deployables:
            proof = proof_images(exported, data or recorded_dataset(source),
                                 explicit=data is not None)
            written.proof_images = proof.description
            staged = _write_deployables(exported, payload, stage, proof, onnx=onnx, pt2=pt2,
                                        proofs=written.proofs)
        write_export(payload, out)
        for kind, (files, target) in staged.items():
            for file in reversed(files):  # an ONNX model's external data before the model
                os.replace(file, target.parent / file.name)
            written.files[kind] = target
    if traced is not None:
        write_torchscript(traced, torchscript)
        written.files["torchscript"] = Path(torchscript)
    return written


def _write_deployables(exported: Export, payload: dict[str, Any], stage: Path,
                       proof: ProofImages, *, onnx: Path | None, pt2: Path | None,
                       proofs: list[Agreement]) -> dict[str, tuple[list[Path], Path]]:
    """Capture once, write the ONNX and/or .pt2 file into `stage` under its final name, prove
    each from disk (appended to `proofs`); returns kind -> (staged files, final path)."""
    program = capture(exported)
    meta = metadata(payload)
    staged: dict[str, tuple[list[Path], Path]] = {}
    if onnx is not None:
        path = write_onnx(program, stage / Path(onnx).name, meta, exported.architecture)
        proofs.append(prove_same("ONNX Runtime", exported, load_onnx(path).probabilities, proof))
        staged["onnx"] = (onnx_files(path), Path(onnx))
    if pt2 is not None:
        path = write_pt2(program, stage / Path(pt2).name, meta, exported.architecture)
        module, _ = load_pt2(path)
        proofs.append(prove_same("torch.export .pt2", exported,
                                 lambda images: module(images)[1], proof))
        staged["pt2"] = ([path], Path(pt2))
    return staged


def recorded_dataset(source: ModelSource) -> Path | BucketPath | None:
    """The dataset the exported model was trained and tested on, where its experiment says:
    analyze's metrics.json, else the sweep's sweep.yaml (a run folder records none)."""
    recorded = (source.test_metrics or {}).get("dataset")
    if recorded:
        return location(recorded)
    if source.kind in ("retrained", "trial"):
        sweep = location(source.details["path"]) / SWEEP_FILE
        dataset = (read_yaml(sweep) or {}).get("dataset") if sweep.is_file() else None
        return location(dataset) if dataset else None
    return None


@contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A hidden folder beside `out` for files written before they are proved (on its file
    system, so a rename moves them); removed at the end, whatever happens. Files keep their
    final names in it, so an ONNX model's external data keeps the name the model refers to."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with disk_full_is_user_error(out):
        folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".staging",
                                       dir=out.parent))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
