"""A trial leaves no GPU memory behind: what it allocated is freed before the next one starts.

Two layers. The sweep runs every trial in its own Ray actor process (reuse_actors=False), and
a process that exits hands all its CUDA memory back. Inside the trial, `gpu_memory_released`
frees what training held as soon as training ends, stopped or failed: an exception's traceback
keeps every frame of the run alive (model, optimizer, the last batch), so its frames are
cleared before it propagates, then garbage is collected and PyTorch's cache emptied.
"""

from __future__ import annotations

import gc
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gpu_memory_released() -> Iterator[None]:
    """Free the block's tensors when it ends, however it ends; the exception still propagates."""
    try:
        yield
    except BaseException as error:
        # The frames below this one are done; their locals (the model...) are not needed to
        # report the error, whose message and traceback lines survive the clearing.
        traceback.clear_frames(error.__traceback__)
        raise
    finally:
        gc.collect()
        _empty_cuda_cache()


def _empty_cuda_cache() -> None:
    torch = sys.modules.get("torch")  # a trial that never imported torch holds no CUDA memory
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
