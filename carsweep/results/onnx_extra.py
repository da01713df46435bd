"""The `onnx` extra (`pip install 'carsweep[onnx]'`): checked before anything else runs.

Light on purpose (no torch import), so `export --onnx` and `predict --weights X.onnx` without
the extra answer in one line at once.
"""

from __future__ import annotations

import importlib

from carsweep.errors import UserError

EXTRA = "onnx"
# Writing needs all three (torch.onnx's exporter is written in onnxscript); reading, the runtime.
WRITE_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
READ_PACKAGES = ("onnxruntime",)


def require_onnx_extra(what: str, packages: tuple[str, ...] = WRITE_PACKAGES) -> None:
    """A UserError naming the extra where one of `packages` cannot be imported; `what` is the
    flag or file that needs them."""
    missing = []
    for package in packages:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}, which this Python lacks: install "
                        f"carsweep's {EXTRA} extra, pip install 'carsweep[{EXTRA}]'")
