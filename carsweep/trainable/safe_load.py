"""`torch.load` for files we did not write ourselves: tensors and plain values only."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from carsweep.errors import UserError


def load_tensors_only(path: Path, *, what: str) -> object:
    """torch.load(weights_only=True) on the CPU; a pickle with code or a damaged file is a
    UserError naming `what` and the path."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "allowed global" in str(error) or "Unsupported global" in str(error):
            raise UserError(
                f"{what} {str(path)!r}: refused, it holds objects other than tensors and "
                "numbers (a pickle with code cannot be loaded safely)"
            ) from None
        raise UserError(f"{what} {str(path)!r}: corrupt or truncated file") from None
    # Bytes that are not a torch file at all reach the weights-only unpickler's own lookups.
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            zipfile.BadZipFile):
        raise UserError(f"{what} {str(path)!r}: corrupt or truncated file") from None
