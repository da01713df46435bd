"""Reading a decoded cache (carsweep/data/cache.py says what one is).

The array is a plain .npy file, so `np.load(mmap_mode="r")` maps it read-only: every trial on
a node maps the same file and the kernel's page cache holds one copy for all of them; a cache
larger than RAM is paged in from disk on demand. Training reads its rows with `CacheRows`,
which copies them out of that page cache with pread instead of mapping (its docstring says why).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from carsweep.data.cache import CacheError


def map_array(path: Path) -> np.memmap:
    """Map a uint8 .npy file read-only (the whole array, for checks and tests; training reads
    rows with `CacheRows`)."""
    return np.load(path, mmap_mode="r")


class CacheRows:
    """Rows of a cache array read with `pread` into a buffer the caller owns.

    Why not a gather from a memory map: at Stanford Cars' size (480 kB rows at 400 px) every
    process that maps the file pays a page fault per 4 kB page it touches the first time (a
    fresh trial, a fresh worker), and the gather writes into a newly allocated array that
    faults again; `pread` copies from the page cache without mapping anything, straight into
    the batch's own memory (pinned, when the batch goes to a GPU). Before reading, the kernel
    is told which rows follow (POSIX_FADV_WILLNEED), so a cache that is not in RAM is read
    from the disk with the whole batch in flight instead of one row at a time (BENCHMARKS.md,
    "Data path at Stanford Cars' size"). The file is opened lazily in each process (a pickled
    reader reopens it), so DataLoader workers each hold their own descriptor.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        mapped = map_array(self.path)  # header only: no page of the data is touched
        if mapped.dtype != np.uint8 or mapped.ndim != 4 or not mapped.flags.c_contiguous:
            raise CacheError(f"{self.path}: not a cache array (uint8, N x 3 x H x W)")
        self.shape, self.offset = tuple(mapped.shape), int(mapped.offset)
        self.row_bytes = math.prod(self.shape[1:])
        del mapped
        self._descriptor: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_descriptor": None, "_pid": None}

    def read(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Rows `rows` (ascending) into `out`, uint8 (len(rows), 3, H, W) C-contiguous."""
        if out.shape != (len(rows), *self.shape[1:]) or not out.flags.c_contiguous:
            raise ValueError(f"out is {out.shape}, need ({len(rows)}, {self.shape[1:]}) "
                             "C-contiguous")
        descriptor = self._open()
        target = memoryview(out.reshape(-1).view(np.uint8))
        runs = _consecutive_runs(np.asarray(rows, dtype=np.int64))
        for _, count, first in runs:
            os.posix_fadvise(descriptor, self.offset + int(first) * self.row_bytes,
                             count * self.row_bytes, os.POSIX_FADV_WILLNEED)
        for start, count, first in runs:
            begin = start * self.row_bytes
            _pread_exactly(descriptor, target[begin:begin + count * self.row_bytes],
                           self.offset + int(first) * self.row_bytes, self.path)
        return out

    def _open(self) -> int:
        if self._descriptor is None or self._pid != os.getpid():
            self._descriptor = os.open(self.path, os.O_RDONLY)
            self._pid = os.getpid()
        return self._descriptor

    def __del__(self) -> None:
        if self._descriptor is not None and self._pid == os.getpid():
            os.close(self._descriptor)


def _consecutive_runs(rows: np.ndarray) -> list[tuple[int, int, int]]:
    """(position in the batch, length, first row) of each run of consecutive rows."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    starts = np.concatenate([[0], breaks])
    lengths = np.diff(np.concatenate([starts, [len(rows)]]))
    return [(int(s), int(n), int(rows[s])) for s, n in zip(starts, lengths, strict=True)]


def _pread_exactly(descriptor: int, target: memoryview, offset: int, path: Path) -> None:
    while len(target):
        done = os.preadv(descriptor, [target], offset)
        if done == 0:
            raise CacheError(f"{path}: shorter than its header says; delete it to rebuild")
        target, offset = target[done:], offset + done

