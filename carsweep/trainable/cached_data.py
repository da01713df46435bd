"""The fast data path: batches read from the decoded cache.

`build_loader` (data.py) asks `cached_batches` first. For splits within train+val, a batch is
read from the node-local decoded cache of `config.resize` (carsweep/data/cache.py) as
(B, 3, S, S) uint8, the same tensors that decoding the JPEGs with `eval_transform` gives, with
no JPEG decoding at all. A loader that touches the test split always decodes (the cache never
holds it). `config.data_cache` decides:

    auto  use the cache in `config.cache_dir`, building it first if it is missing (once per
          node: a lock) when the disk has room; else one warning line, and decode JPEGs
    on    the same, but no room (or a folder that cannot be written) is a one-line error
    off   never; decode the JPEGs every epoch

How a batch is read (BENCHMARKS.md, "Data path at Stanford Cars' size", measures each step):
the rows of a batch, sorted, are read with one `pread` per row (`CacheRows`) straight into
the batch's tensor, in pinned memory when it goes to a GPU from this process, so it is copied
once from the page cache and once to the device. With no per-image CPU work (every preset
runs on a GPU; none asked for) there are no worker processes: a read costs less than handing
a 15 MB batch between processes would. With per-image CPU work (a CPU-only trial) the
workers read and augment; they live for the whole run (`persistent_workers`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from carsweep.config.trial import TrialConfig
from carsweep.data.cache import CACHED_SPLITS, CacheDiskError, cached_rows
from carsweep.data.cache_build import build_cache
from carsweep.data.cache_read import CacheRows
from carsweep.data.manifest import PreparedDataset


class CachedBatches(Dataset):
    """Whole batches from a cache file: `dataset[[i, j, ...]]` -> (uint8 (B,3,S,S), labels (B,)).

    Indexed by lists (a BatchSampler feeds it); the rows of a batch are read in file order (a
    batch is a set), into a new tensor per batch: pinned if `pin` (this process copies it to a
    GPU), else memory numpy allocates, which the kernel backs with huge pages where it can (a
    torch.empty of 15 MB is mapped afresh, and faulted in, for every batch).
    """

    def __init__(self, array_path: Path, positions: np.ndarray, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, *,
                 pin: bool = False) -> None:
        self.array_path = Path(array_path)
        self.rows = CacheRows(self.array_path)
        self.positions = np.asarray(positions, dtype=np.int64)  # rows of the cache, ascending
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform
        self.pin = pin

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        order = np.sort(np.asarray(indices, dtype=np.int64))
        images = self._new_batch(len(order))
        self.rows.read(self.positions[order], images.numpy())
        if self.transform is not None:
            images = torch.stack([self.transform(image) for image in images])
        return images, self.labels[order]

    def _new_batch(self, count: int) -> torch.Tensor:
        shape = (count, *self.rows.shape[1:])
        if self.pin:  # from torch's caching host allocator: reused once the copy is done
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        return torch.from_numpy(np.empty(shape, dtype=np.uint8))


def cached_batches(dataset: PreparedDataset, splits: tuple[str, ...], config: TrialConfig, *,
                   train: bool, batch_size: int, device: torch.device | None,
                   transform: Callable | None,
                   persistent: bool) -> tuple[DataLoader, torch.Generator | None] | None:
    """(batches over the decoded cache, their data-order generator), or None when the cache is
    not to be used. `transform` is the per-image CPU part of the augmentation, or None."""
    from carsweep.trainable.data import drop_last_of_one, seed_worker  # data.py imports us

    array_path = _usable_cache(dataset, splits, config)
    if array_path is None:
        return None
    rows = cached_rows(dataset)  # the cache's rows, in its order
    positions = np.flatnonzero(rows["split"].isin(splits).to_numpy())
    # Workers pay off only for per-image work; a read alone is cheaper in this process.
    workers = config.num_workers if transform is not None else 0
    on_gpu = device is not None and device.type == "cuda"
    images = CachedBatches(array_path, positions, rows["label"].to_numpy()[positions],
                           transform, pin=on_gpu and workers == 0)
    generator = torch.Generator().manual_seed(config.seed) if train else None
    order = RandomSampler(images, generator=generator) if train else SequentialSampler(images)
    batches = BatchSampler(order, batch_size, drop_last=drop_last_of_one(train, len(images),
                                                                         batch_size))
    loader = DataLoader(images, sampler=batches, batch_size=None, num_workers=workers,
                        worker_init_fn=seed_worker if workers else None,
                        pin_memory=on_gpu and workers > 0,
                        persistent_workers=workers > 0 and persistent)
    return loader, generator


def _usable_cache(dataset: PreparedDataset, splits: tuple[str, ...],
                  config: TrialConfig) -> Path | None:
    """The cache array to read `splits` from (built now if needed), or None to decode."""
    if config.data_cache == "off" or not set(splits) <= set(CACHED_SPLITS):
        return None
    try:
        return build_cache(dataset, config.resize, bbox_crop=config.bbox_crop,
                           cache_dir=config.cache_dir, workers=max(1, config.num_workers),
                           progress=True)  # a bar on stderr while it builds
    except CacheDiskError as error:
        if config.data_cache == "on":
            raise
        warnings.warn(f"{error.problem}; decoding the JPEGs every epoch instead "
                      "(data_cache: auto)", stacklevel=4)
        return None
