"""The gallery of misclassified test images: where the model looked, and what it thought it saw.

For each mistake: the test image with the Grad-CAM of the *predicted* class over it (what in
the picture made the model say that class), the true and predicted class names, the score,
and one training image of the predicted class beside it (the "Bentley seen as a Beetle"
view). A map with no cell above the rest (`cam_flat`: no region raised the predicted class's
score at that layer; it draws as plain blue) is marked so, not left to look like a picture
of the whole image. Overlays are shown with the image's own aspect ratio, not the model's
square input.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import numpy as np
import pandas as pd
from PIL import Image
from torch import nn

from carsweep.analysis.gradcam import class_maps, overlay
from carsweep.analysis.retrain import say
from carsweep.config.trial import TrialConfig
from carsweep.data.images import open_dataset_image
from carsweep.data.manifest import BOX_COLUMNS, PreparedDataset
from carsweep.trainable.augment import normalization
from carsweep.trainable.cam_occlusion import flat_maps
from carsweep.trainable.data import load_inputs
from carsweep.trainable.gpu_augment import Normalize

GALLERY_DIR = "gallery"
THUMBNAIL = 224  # longest side of the pictures in the gallery
CHUNK = 64  # images per Grad-CAM call: bounds memory on 196-class, 224 px inputs


def misclassified(predictions: pd.DataFrame) -> pd.DataFrame:
    """The wrong predictions, most confident first (the most instructive mistakes)."""
    wrong = predictions[predictions["label"] != predictions["pred"]]
    return wrong.sort_values(["score", "path"], ascending=[False, True]).reset_index(drop=True)


def training_examples(dataset: PreparedDataset, labels: list[int]) -> dict[int, str]:
    """One training image per class asked for: the first of the class in manifest order."""
    train = dataset.rows("train")
    first = train.drop_duplicates(subset="label").set_index("label")["path"]
    return {label: str(first[label]) for label in set(labels) if label in first.index}


def write_gallery(model: nn.Module, config: TrialConfig, dataset: PreparedDataset,
                  predictions: pd.DataFrame, folder: Path, layer: str,
                  out: TextIO | None = None) -> pd.DataFrame:
    """Overlays and examples under folder/gallery/; returns the gallery table (relative paths)."""
    wrong = misclassified(predictions)
    (folder / GALLERY_DIR).mkdir(parents=True, exist_ok=True)
    examples = training_examples(dataset, wrong["pred"].astype(int).tolist())
    chosen = dataset.manifest[dataset.manifest["path"].isin(examples.values())]
    local = dict(zip(chosen["path"], dataset.image_files(chosen), strict=True))
    example_files = {label: _save_thumbnail(open_dataset_image(local[path]),
                                            folder, f"example_class{label}.png")
                     for label, path in examples.items()}
    manifest = dataset.manifest.set_index("path")
    rows = []
    for start in range(0, len(wrong), CHUNK):
        say(f"[analyze] Grad-CAM ({layer}) of misclassified images {start + 1}-"
            f"{min(start + CHUNK, len(wrong))}/{len(wrong)}", out)
        chunk = wrong.iloc[start:start + CHUNK]
        shown = manifest.loc[chunk["path"]].reset_index()
        boxes = shown[BOX_COLUMNS].to_numpy(dtype=float)
        images = load_inputs(dataset.image_files(shown), config, boxes)
        cams = class_maps(model, images, chunk["pred"].astype(int).tolist(), layer=layer,
                          normalize=Normalize(*normalization(config.model)))
        flat = flat_maps(cams).tolist()
        for offset, (row, image, cam) in enumerate(zip(chunk.itertuples(index=False), images,
                                                       cams, strict=True)):
            index = start + offset
            width, height = _shown_size(manifest.loc[row.path], config.bbox_crop)
            picture = overlay(image, cam).resize(_fit(width, height), Image.BILINEAR)
            rows.append({
                "rank": index + 1, "path": row.path, "true_name": row.true_name,
                "pred_name": row.pred_name, "score": float(row.score),
                "true_score": float(getattr(row, f"p_{int(row.label)}")),
                "overlay": _save(picture, folder, f"{index + 1:05d}_cam.png"),
                "cam_flat": flat[offset],
                "example": example_files.get(int(row.pred), ""),
            })
    columns = ["rank", "path", "true_name", "pred_name", "score", "true_score", "overlay",
               "cam_flat", "example"]
    return pd.DataFrame(rows, columns=columns)


def _shown_size(row: pd.Series, bbox_crop: bool) -> tuple[int, int]:
    """The size of what the model saw before its square resize: the box under bbox_crop."""
    box = row[BOX_COLUMNS].to_numpy(dtype=float)
    if bbox_crop and not np.isnan(box).any() and box[2] - box[0] >= 2 and box[3] - box[1] >= 2:
        return int(box[2] - box[0]), int(box[3] - box[1])
    return int(row["width"]), int(row["height"])


def _fit(width: int, height: int) -> tuple[int, int]:
    scale = THUMBNAIL / max(width, height, 1)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _save_thumbnail(image: Image.Image, folder: Path, name: str) -> str:
    return _save(image.resize(_fit(*image.size), Image.BILINEAR), folder, name)


def _save(image: Image.Image, folder: Path, name: str) -> str:
    relative = f"{GALLERY_DIR}/{name}"
    image.save(folder / relative)
    return relative
