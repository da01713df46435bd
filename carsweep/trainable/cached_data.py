"""The fast data path: batches read from the decoded cache, augmentation split CPU / device.

`build_loader` (data.py) asks `fast_loader` first. For splits within train+val, a batch is one
gather from the read-only memory map of the node-local decoded cache of `config.resize`
(carsweep/data/cache.py), (B, 3, S, S) uint8, the same tensors that decoding the JPEGs with
`eval_transform` gives, with no JPEG decoding at all. A loader that touches the test split
always decodes (the cache never holds it). `config.data_cache` decides:

    auto  use the cache in `config.cache_dir`, building it first if it is missing (once per
          node: a lock) when the disk has room; else one warning line, and decode JPEGs
    on    the same, but no room (or a folder that cannot be written) is a one-line error
    off   never; decode the JPEGs every epoch

`split_augmentation` decides where the preset runs (`config.augment_on`, gpu_augment.py): the
batched per-sample twins run on the device inside `to_model_input`; the rest stays in the CPU
workers. Both the cached and the decoding path use it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from carsweep.config.trial import TrialConfig
from carsweep.data.cache import CACHED_SPLITS, CacheDiskError, build_cache, cached_rows, map_array
from carsweep.data.manifest import PreparedDataset
from carsweep.trainable.augment import (
    build_augmentation,
    normalization,
    per_image_augmentation,
)
from carsweep.trainable.gpu_augment import DeviceAugment, Normalize, plan_augmentation


class CachedBatches(Dataset):
    """Whole batches from a cache file: `dataset[[i, j, ...]]` -> (uint8 (B,3,S,S), labels (B,)).

    Indexed by lists (a BatchSampler feeds it), so a batch is one gather from the memory map.
    The map is opened lazily in each process: pickling a memmap to a worker would copy it.
    """

    def __init__(self, array_path: Path, positions: np.ndarray, labels: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.array_path = Path(array_path)
        self.positions = np.asarray(positions, dtype=np.int64)  # rows of the cache, in order
        self.labels = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
        self.transform = transform
        self._array: np.memmap | None = None

    def __len__(self) -> int:
        return len(self.positions)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_array": None}

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._array is None:
            self._array = map_array(self.array_path)
        # Reading rows in file order helps when the cache is paged in from disk; a batch is a set.
        order = np.sort(np.asarray(indices, dtype=np.int64))
        images = torch.from_numpy(np.ascontiguousarray(self._array[self.positions[order]]))
        if self.transform is not None:
            images = torch.stack([self.transform(image) for image in images])
        return images, self.labels[order]


def split_augmentation(config: TrialConfig, device: torch.device | None, train: bool
                       ) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
    """(the preset part for CPU workers, "none" if nothing, and the loader's `normalize`: the
    device part per sample, then normalisation). Evaluation gets ("none", normalisation).

    Normalisation is gpu_augment.Normalize (constants kept on the device, one new tensor per
    batch) on every path, so cached and decoded batches become the same model input."""
    normalize = Normalize(*normalization())
    if not train:
        return "none", normalize
    # Model-dependent presets (cam-occlusion) run in the epoch loop, not here.
    plan = plan_augmentation(per_image_augmentation(config.augmentation),
                             device or torch.device("cpu"),
                             where=config.augment_on)
    if not plan.device:
        return plan.cpu or "none", normalize
    augment = DeviceAugment(plan.device, config.resize, seed=config.seed)
    return plan.cpu or "none", lambda images: normalize(augment(images))


def fast_loader(dataset: PreparedDataset, splits: tuple[str, ...], config: TrialConfig, *,
                train: bool, batch_size: int, device: torch.device | None,
                cpu_augmentation: str, normalize: Callable):
    """A `Loader` over the decoded cache, or None when the cache is not to be used."""
    from carsweep.trainable.data import (  # data.py imports this module
        Loader,
        _seed_worker,
        persistent_workers,
    )

    array_path = _usable_cache(dataset, splits, config)
    if array_path is None:
        return None
    rows = cached_rows(dataset)  # the cache's rows, in its order
    positions = np.flatnonzero(rows["split"].isin(splits).to_numpy())
    transform = (build_augmentation(cpu_augmentation, config.resize)
                 if cpu_augmentation != "none" else None)
    images = CachedBatches(array_path, positions, rows["label"].to_numpy()[positions],
                           transform)
    generator = torch.Generator().manual_seed(config.seed) if train else None
    order = RandomSampler(images, generator=generator) if train else SequentialSampler(images)
    count = len(images)
    # As on the decoding path: drop a last batch of one image only (it breaks BatchNorm).
    batches = BatchSampler(order, batch_size, drop_last=train and count > 1
                           and count % batch_size == 1)
    # A gather from the page cache is a memcpy; workers pay off only for CPU augmentation.
    workers = config.num_workers if transform is not None else 0
    on_gpu = device is not None and device.type == "cuda"
    loader = DataLoader(images, sampler=batches, batch_size=None, num_workers=workers,
                        worker_init_fn=_seed_worker if workers else None, pin_memory=on_gpu,
                        persistent_workers=workers > 0 and persistent_workers(config))
    return Loader(batches=loader, num_images=count, generator=generator,
                  channels_last=on_gpu, normalize=normalize)


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
