"""The .pt2 file: torch.export's ExportedProgram of the deployment graph (results/deploy.py).

Saved after `run_decompositions()` (torch's core ATen operator set, what AOTInductor and
ExecuTorch lower from), captured in eval mode. The metadata rides as the extra file
METADATA_FILE, with the torch version that wrote it: a .pt2 is not promised to load in
another torch version.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.export import ExportedProgram

from carsweep.errors import UserError
from carsweep.results.deploy import DeployInfo, exporter_refusal, read_metadata

METADATA_FILE = "carsweep.json"


def write_pt2(program: ExportedProgram, path: Path, metadata: dict[str, str],
              architecture: str) -> Path:
    """`program`, decomposed to core ATen, saved at `path` with `metadata` as an extra file."""
    with exporter_refusal("torch.export's decompositions", architecture):
        decomposed = program.run_decompositions()
    torch.export.save(decomposed, path, extra_files={METADATA_FILE: json.dumps(metadata)})
    return path


def load_pt2(path: Path) -> tuple[nn.Module, DeployInfo]:
    """The program's module (uint8 images -> logits, probs) and its metadata."""
    path = Path(path)
    what = f"program {str(path)!r}"
    if not path.is_file():
        raise UserError(f"{what}: no such file; give a file `carsweep export --pt2` wrote")
    extra = {METADATA_FILE: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        raise UserError(f"{what}: not a .pt2 this torch {torch.__version__} can load "
                        f"({str(error).strip().splitlines()[0][:200]})") from None
    metadata = json.loads(extra[METADATA_FILE]) if extra[METADATA_FILE] else {}
    return program.module(), read_metadata(metadata, what)
