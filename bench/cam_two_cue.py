"""Does cam-occlusion make a model lean on more than one cue? Two-cue synthetic data, N seeds.

The measurement of tests/test_cam_occlusion.py (two-cue data: the class is decided by the
headlight shape and the wheel shape at once; ResNet-18 from scratch, adam 1e-3, 5 epochs,
64 px, cam-occlusion p=0.5 q=0.1 erase from epoch 2), repeated over seeds: each seed draws a
new dataset (4 classes x 48 train, 12 test) and seeds the training. Test top-1 on clean
images and with one part erased at test time; per seed, then mean ± standard deviation.

    .venv/bin/python bench/cam_two_cue.py [--seeds 3] [--epochs 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from machine import describe, load_average

from carsweep.config.trial import TrialConfig
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth import make_synthetic_dataset
from carsweep.trainable import train
from carsweep.trainable.cam_occlusion import occluded_accuracies

SIZE = 64
AUGMENTATIONS = ("flip", "flip+cam-occlusion")


class Quiet:
    def report(self, metrics, checkpoint_dir) -> None:
        pass


def two_cue_dataset(folder: Path, seed: int):
    source = make_synthetic_dataset(folder / "source", classes=4, per_class=48,
                                    test_per_class=12, size=SIZE, seed=seed,
                                    cues=("headlight", "wheel"))
    return prepare_dataset(source, folder / "data", val_fraction=0.1, seed=seed,
                           warn=lambda line: None)


def one_seed(seed: int, epochs: int) -> dict[str, dict[str, float]]:
    """{augmentation: {"clean": top-1, "headlight hidden": ..., "wheel hidden": ...}}"""
    results = {}
    with tempfile.TemporaryDirectory(prefix="carsweep-two-cue-") as tmp:
        dataset = two_cue_dataset(Path(tmp), seed)
        for augmentation in AUGMENTATIONS:
            config = TrialConfig(augmentation=augmentation, epochs=epochs, batch_size=16,
                                 resize=SIZE, optimizer="adam", lr=0.001, num_workers=0,
                                 device="cpu", data_cache="off", seed=seed,
                                 cam_occlusion_p=0.5, cam_occlusion_q=0.1,
                                 cam_occlusion_start_epoch=2)
            trained = train(config, dataset, reporter=Quiet(), eval_split=None)
            results[augmentation] = occluded_accuracies(trained.model, dataset, config)
        test_images = len(dataset.rows("test"))
    return results, test_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    start, start_load = time.perf_counter(), load_average()
    runs = []
    for seed in range(args.seeds):
        results, test_images = one_seed(seed, args.epochs)
        runs.append(results)
        for augmentation, accuracies in results.items():
            print(f"seed {seed} {augmentation:<20}"
                  + "  ".join(f"{k} {v:.3f}" for k, v in accuracies.items()), flush=True)
    print(f"\n{describe(start_load)}\n{args.seeds} seeds, {test_images} test images each, "
          f"{args.epochs} epochs, torch threads {torch.get_num_threads()}, "
          f"{time.perf_counter() - start:.0f} s\n")
    columns = list(runs[0][AUGMENTATIONS[0]])
    print("| augmentation | " + " | ".join(f"test top-1, {c}" for c in columns) + " |")
    print("|---|" + "---|" * len(columns))
    for augmentation in AUGMENTATIONS:
        cells = []
        for column in columns:
            values = [run[augmentation][column] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {augmentation} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
