"""The gallery says when a Grad-CAM is flat: plain blue means "nothing raised this class's score
here", which a user would otherwise read as "the model looked at the whole image"."""

from __future__ import annotations

import pandas as pd
import torch

from carsweep.analysis.gallery import write_gallery
from carsweep.analysis.gradcam import cam_layer
from carsweep.analysis.metrics import predictions_table
from carsweep.analysis.report import GALLERY_IN_REPORT, gallery_section
from carsweep.config.trial import TrialConfig
from carsweep.data.manifest import load_dataset
from carsweep.trainable import predict
from carsweep.trainable.cam_occlusion import flat_maps, top_area_mask
from carsweep.trainable.model import build_model

CONFIG = TrialConfig(resize=32, weights="none", device="cpu", num_workers=0, data_cache="off")
NOTE = "Grad-CAM is flat (plain blue)"


def test_flat_maps_are_the_ones_where_no_cell_stands_out():
    peaked = torch.zeros(4, 4)
    peaked[1, 2] = 0.3
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 0.7), peaked,
                        torch.full((4, 4), 5.0) + 1e-9 * torch.rand(4, 4)])
    assert flat_maps(maps).tolist() == [True, True, False, True]
    assert not top_area_mask(maps[:2], (8, 8), q=0.25).any()  # a flat map occludes nothing
    assert top_area_mask(maps[2:3], (8, 8), q=0.25).sum() == 16


def gallery_of(model: torch.nn.Module, data, folder) -> pd.DataFrame:
    logits, labels = predict(model, data, "test", CONFIG)
    predictions = predictions_table(data.rows("test")["path"].tolist(), labels.numpy(),
                                    logits.softmax(1).numpy(), data.classes)
    return write_gallery(model, CONFIG, data, predictions, folder,
                         cam_layer(CONFIG.model, CONFIG.resize))


def test_a_head_that_ignores_the_image_gives_flat_maps_and_the_report_says_so(
        prepared_dataset, tmp_path):
    data = load_dataset(prepared_dataset)
    torch.manual_seed(0)
    model = build_model(data.num_classes, "none", CONFIG.model)
    looking = gallery_of(model, data, tmp_path / "looking")
    with torch.no_grad():  # every score is its bias: class 1 wins whatever the image shows
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.eye(data.num_classes)[1])
    blind = gallery_of(model, data, tmp_path / "blind")

    assert len(blind) == (data.rows("test")["label"] != 1).sum()
    assert set(blind["pred_name"]) == {data.classes[1]}
    assert blind["cam_flat"].tolist() == [True] * len(blind)
    assert len(looking) > 0
    assert looking["cam_flat"].tolist() == [False] * len(looking)

    shown = gallery_section(tmp_path / "blind", blind)
    assert shown.count(NOTE) == min(len(blind), GALLERY_IN_REPORT)
    assert f"raised the score of {data.classes[1]} at this layer" in shown
    assert NOTE not in gallery_section(tmp_path / "looking", looking)
