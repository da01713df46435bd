"""The data path of a training run: manifest rows -> batches of uint8 images and labels.

This is the replaceable piece between a prepared dataset and the epoch loop. The loop only
asks for `build_loader(dataset, splits, config, train=...)` and uses what it returns:

    for images, labels in loader:             # images uint8 (B, 3, S, S) on the CPU
        x = loader.to_model_input(images.to(device))   # float (B, 3, S, S), normalised

Batches come from the decoded cache where there is one (cached_data.py), else from decoding
the JPEGs with PIL each epoch. Either way `augment.plan_augmentation` decides where the
augmentation runs: its per-image part in the loader's workers, its device part per sample in
`to_model_input`, then the one normaliser (gpu_augment.Normalize).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from carsweep.config.trial import TrialConfig
from carsweep.data.cache_build import crop_to_box  # the cache crops exactly the same way
from carsweep.data.images import open_dataset_image, open_rgb
from carsweep.data.manifest import BOX_COLUMNS, PreparedDataset
from carsweep.errors import UserError
from carsweep.trainable.augment import (
    COMBINE,
    AugmentPlan,
    build_augmentation,
    build_device_augmentation,
    eval_transform,
    normalization,
    plan_augmentation,
)
from carsweep.trainable.gpu_augment import DeviceAugment, Normalize


class ManifestImages(Dataset):
    """Images of some manifest rows, decoded with PIL, optionally cropped to their box."""

    def __init__(self, dataset: PreparedDataset, rows: pd.DataFrame, transform: Callable,
                 *, bbox_crop: bool) -> None:
        self.paths = list(map(str, dataset.image_files(rows)))
        self.labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
        boxes = rows[BOX_COLUMNS].to_numpy(dtype=float) if bbox_crop else None
        self.boxes = boxes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = open_dataset_image(self.paths[index])  # alpha on white, as the cache does
        if self.boxes is not None:
            image = crop_to_box(image, self.boxes[index])
        return self.transform(image), int(self.labels[index])


def load_inputs(paths: list[Path], config: TrialConfig,
                boxes: np.ndarray | None = None) -> torch.Tensor:
    """uint8 (B, 3, S, S): image files as the model saw them at evaluation (square resize):
    what Grad-CAM, `predict` and an export's proof of sameness feed it.

    With `config.bbox_crop`, pass the images' (B, 4) boxes: they are cropped as in training.
    """
    transform = eval_transform(config)
    batch = []
    for index, path in enumerate(paths):
        image = open_rgb(path)  # alpha on white, exactly as the trainable decodes
        if config.bbox_crop and boxes is not None:
            image = crop_to_box(image, np.asarray(boxes[index], dtype=float))
        batch.append(transform(image))
    return torch.stack(batch)


@dataclass
class Loader:
    """Batches of (uint8 images, labels) for one pass, and how to turn images into model input.

    `generator` decides the shuffle order and the workers' seeds; it lives across epochs and its
    state is saved in checkpoints, so a resumed run sees the same order as an uninterrupted one.
    """

    batches: DataLoader
    num_images: int
    normalize: Normalize
    generator: torch.Generator | None = None
    channels_last: bool = False
    augment: DeviceAugment | None = None  # the plan's device part, per sample

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)

    def to_model_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, S, S) on the device -> augmented (training), normalised float,
        channels_last on GPU."""
        x = self.normalize(images if self.augment is None else self.augment(images))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def build_loader(dataset: PreparedDataset, splits: str | tuple[str, ...], config: TrialConfig,
                 *, train: bool, batch_size: int | None = None,
                 device: torch.device | None = None) -> Loader:
    """The loader of `splits`: augmented and shuffled if `train`, else in manifest order."""
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    rows = dataset.rows(*splits)
    if rows.empty:
        raise UserError(
            f"{dataset.folder}: split {'+'.join(splits)} has no images; "
            f"splits present: {sorted(dataset.manifest['split'].unique())}"
        )
    _warn_if_no_boxes(dataset, rows, config)
    batch_size = batch_size or config.batch_size
    plan, per_image = augmentation_split(config, device, train=train)
    # Fast path (cached_data.py): the decoded cache, if there is one.
    from carsweep.trainable.cached_data import cached_batches

    cached = cached_batches(dataset, splits, config, train=train, batch_size=batch_size,
                            device=device, transform=per_image,
                            persistent=persistent_workers(config))
    batches, generator = cached or _decoded_batches(dataset, rows, config, train, batch_size,
                                                    device, per_image)
    return _loader(batches, len(rows), generator, config, plan.device, device)


def random_image_loader(config: TrialConfig, num_classes: int, *, train: bool, batches: int,
                        device: torch.device, seed: int = 0) -> Loader:
    """`batches` batches of random uint8 images at the config's size and random labels, with
    the config's augmentation split as `build_loader` splits it: what the pre-flight's real
    step trains on, before any node has a decoded cache."""
    plan, per_image = augmentation_split(config, device, train=train)
    generator = torch.Generator().manual_seed(seed)
    shape = (config.batch_size, 3, config.resize, config.resize)
    made = []
    for _ in range(batches):
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
        if per_image is not None:
            images = torch.stack([per_image(image) for image in images])
        labels = torch.randint(0, num_classes, (config.batch_size,), generator=generator)
        if device.type == "cuda":  # pinned, as the cached loader hands them over
            images, labels = images.pin_memory(), labels.pin_memory()
        made.append((images, labels))
    return _loader(made, batches * config.batch_size, None, config, plan.device, device)


def batches_loader(batches, num_images: int, config: TrialConfig, *, train: bool,
                   device: torch.device) -> Loader:
    """A Loader over `batches` of (uint8 images, labels) made elsewhere (a benchmark's memmap),
    with the config's device augmentation and normalisation as `build_loader` gives them."""
    plan, _ = augmentation_split(config, device, train=train)
    if plan.cpu:
        raise ValueError(f"{config.augmentation} has per-image parts on the CPU ({plan.cpu}); "
                         "batches made elsewhere get only the device part")
    return _loader(batches, num_images, None, config, plan.device, device)


def augmentation_split(config: TrialConfig, device: torch.device | None, *, train: bool
                       ) -> tuple[AugmentPlan, Callable | None]:
    """(where each part of the config's augmentation runs, the per-image CPU transform or
    None): every loader splits it this one way."""
    plan = plan_augmentation(config.augmentation, device or torch.device("cpu"), train=train,
                             where=config.augment_on)
    per_image = (build_augmentation(COMBINE.join(plan.cpu), config.resize) if plan.cpu
                 else None)
    return plan, per_image


def _loader(batches, num_images: int, generator: torch.Generator | None, config: TrialConfig,
            device_presets: tuple[str, ...], device: torch.device | None) -> Loader:
    normalize = Normalize(*normalization(config.model)).to(device or torch.device("cpu"))
    return Loader(batches=batches, num_images=num_images, normalize=normalize,
                  generator=generator, channels_last=device is not None and device.type == "cuda",
                  augment=build_device_augmentation(device_presets, config.resize))


def _decoded_batches(dataset: PreparedDataset, rows: pd.DataFrame, config: TrialConfig,
                     train: bool, batch_size: int, device: torch.device | None,
                     per_image: Callable | None) -> tuple[DataLoader, torch.Generator | None]:
    transform = eval_transform(config)
    if per_image is not None:
        transform = v2.Compose([transform, per_image])
    images = ManifestImages(dataset, rows, transform, bbox_crop=config.bbox_crop)
    generator = torch.Generator().manual_seed(config.seed) if train else None
    batches = DataLoader(
        images,
        batch_size=batch_size,
        shuffle=train,
        generator=generator,
        drop_last=drop_last_of_one(train, len(images), batch_size),
        num_workers=config.num_workers,
        worker_init_fn=seed_worker if config.num_workers else None,
        pin_memory=device is not None and device.type == "cuda",
        persistent_workers=persistent_workers(config),
    )
    return batches, generator


def drop_last_of_one(train: bool, count: int, batch_size: int) -> bool:
    """A last batch of one image breaks BatchNorm in training mode: drop only that case."""
    return train and count > 1 and count % batch_size == 1


def persistent_workers(config: TrialConfig) -> bool:
    """Workers live for the whole run, not forked again every epoch; except for a
    `deterministic` run, whose workers are seeded anew each epoch from the saved data-order
    generator, so a resumed run draws exactly what an uninterrupted one does."""
    return config.num_workers > 0 and not config.deterministic


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a worker from torch's per-worker seed (set by the DataLoader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _warn_if_no_boxes(dataset: PreparedDataset, rows: pd.DataFrame, config: TrialConfig) -> None:
    if config.bbox_crop and rows[BOX_COLUMNS].isna().any(axis=1).all():
        warnings.warn(
            f"bbox_crop is on but {dataset.folder} has no boxes; training on whole images",
            stacklevel=3,
        )
