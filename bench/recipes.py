"""Recipes against the baseline where fine detail decides the class: held-out top-1 and cost.

Data: the synthetic two-cue generator made harder: 8 classes told apart by the SHAPE of the
headlight and of the wheel hubs only (`coloured_parts=False`: no class colour to see from
afar), 64 px; each seed draws a new dataset and seeds the training. Each recipe is trained
the way `analyze` retrains (analysis/retrain.py `train_and_test`: train+val, then the test
split once): ResNet-18 from scratch, adam, lr 1e-3, cosine, batch 16.

    flip            the baseline
    flip, TTA       the same model, tested on each image and its mirror image (mean softmax)
    flip+mixup      torchvision's MixUp, mixup_alpha 0.2, every batch
    flip+cutmix     torchvision's CutMix, cutmix_alpha 1.0, every batch
    flip+snapmix    SnapMix, snapmix_alpha 5.0, every batch (one extra no-grad forward each)

Per recipe: test top-1 per seed, mean ± sd over the seeds, and the paired difference to the
baseline (same seed, same data). Its cost is measured apart, side by side: the real epoch loop
(`train_one_epoch`, ResNet-18 at the same size, batch 32) on fixed in-memory batches (no
decoding: the model work only) without a mix and with each, in interleaved rounds, timed in
this process's CPU time with one torch thread (images per CPU-second: other processes on a
shared machine slow it down but do not add to it); the median over rounds, and "vs flip" the
median of each round's ratio (bench/cam_occlusion.py's loop and method). A ratio of the
training runs' wall-clock rates would mean little: they run minutes apart under changing load.

    .venv/bin/python bench/recipes.py [--seeds 3] [--epochs 12] [--classes 8] [--per-class 32]
        [--json OUT]
    .venv/bin/python bench/recipes.py --smoke     # seconds: 2 seeds, 2 classes, 1 epoch, 32 px
    .venv/bin/python bench/recipes.py --cost-only [--cost-rounds 5]   # the cost table alone
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from cam_occlusion import in_memory_loader, one_epoch
from machine import describe, load_average

from carsweep.analysis.retrain import train_and_test
from carsweep.config.trial import TrialConfig
from carsweep.data.prepare import prepare_dataset
from carsweep.data.synth import make_synthetic_dataset
from carsweep.trainable import build_model
from carsweep.trainable.mixing import batch_mix_for

BASELINE, TTA = "flip", "flip, TTA"
TRAINED = ("flip", "flip+mixup", "flip+cutmix", "flip+snapmix")
RECIPES = (BASELINE, TTA, *TRAINED[1:])
FULL = {"classes": 8, "per_class": 32, "test_per_class": 12, "size": 64, "epochs": 12}
SMOKE = {"classes": 2, "per_class": 6, "test_per_class": 2, "size": 32, "epochs": 1}


def fine_detail_dataset(folder: Path, seed: int, shape: dict):
    source = make_synthetic_dataset(folder / "source", classes=shape["classes"],
                                    per_class=shape["per_class"],
                                    test_per_class=shape["test_per_class"], size=shape["size"],
                                    seed=seed, cues=("headlight", "wheel"), coloured_parts=False)
    return prepare_dataset(source, folder / "data", val_fraction=0.1, seed=seed,
                           warn=lambda line: None)


def one_seed(seed: int, shape: dict) -> tuple[dict[str, dict[str, float]], int]:
    """({recipe: {"top1": ..., "images_per_s": ...}}, test images) for one seed."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="carsweep-recipes-") as tmp:
        dataset = fine_detail_dataset(Path(tmp), seed, shape)
        for augmentation in TRAINED:
            config = TrialConfig(augmentation=augmentation, epochs=shape["epochs"],
                                 batch_size=16, resize=shape["size"], optimizer="adam",
                                 lr=0.001, num_workers=0, device="cpu", data_cache="off",
                                 seed=seed)
            tested = train_and_test(config, dataset, lambda line: None,
                                    tta=augmentation == BASELINE)
            speed = statistics.mean(epoch["images_per_s"] for epoch in tested.history)
            results[augmentation] = {"top1": _top1(tested.probs, tested.labels),
                                     "images_per_s": speed}
            if tested.tta_probs is not None:
                results[TTA] = {"top1": _top1(tested.tta_probs, tested.labels),
                                "images_per_s": speed}
        test_images = len(dataset.rows("test"))
    return results, test_images


def mixing_cost(size: int, rounds: int, batches: int) -> dict[str, dict[str, float]]:
    """{recipe: {"images_per_s": median images per CPU-second, "vs_flip": median per-round
    ratio}} for each trained recipe's epoch loop on the same in-memory batches, interleaved
    rounds."""
    config = TrialConfig(epochs=1, resize=size, batch_size=32, device="cpu", lr=0.01)
    torch.manual_seed(0)
    model = build_model(FULL["classes"], "none")
    loader = in_memory_loader(batches, config.batch_size, size)
    device = torch.device("cpu")
    mixes = {recipe: batch_mix_for(config.model_copy(update={"augmentation": recipe}),
                                   FULL["classes"]) for recipe in TRAINED}
    one_epoch(model, loader, config, device, None)  # warm-up: allocators, kernels
    rates: dict[str, list[float]] = {recipe: [] for recipe in TRAINED}
    for _ in range(rounds):
        for recipe, mix in mixes.items():
            # Per second of this process's CPU time (one torch thread): what the recipe costs,
            # which other processes on a shared machine slow down but do not add to.
            cpu_start = time.process_time()
            one_epoch(model, loader, config, device, None, batch_mix=mix)
            rates[recipe].append(loader.num_images / (time.process_time() - cpu_start))
    baseline = rates[BASELINE]
    return {recipe: {"images_per_s": statistics.median(values),
                     "vs_flip": statistics.median(v / b for v, b in zip(values, baseline,
                                                                        strict=True))}
            for recipe, values in rates.items()}


def _top1(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == labels).mean())


def _mean_sd(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def summary(runs: list[dict[str, dict[str, float]]], cost: dict[str, dict[str, float]]
            ) -> list[dict]:
    """One row per recipe: top-1 per seed and mean ± sd, paired difference to the baseline,
    the cost measured side by side (TTA: the baseline's training; its test pass is doubled)."""
    rows = []
    for recipe in RECIPES:
        top1 = [run[recipe]["top1"] for run in runs]
        diff = [run[recipe]["top1"] - run[BASELINE]["top1"] for run in runs]
        measured = cost[BASELINE if recipe == TTA else recipe]
        rows.append({"recipe": recipe, "top1": top1, "top1_mean_sd": _mean_sd(top1),
                     "diff": diff, "diff_mean_sd": _mean_sd(diff),
                     "images_per_s": measured["images_per_s"], "speed_ratio": measured["vs_flip"]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=FULL["epochs"])
    parser.add_argument("--classes", type=int, default=FULL["classes"], help="2..8")
    parser.add_argument("--per-class", type=int, default=FULL["per_class"],
                        help="training images per class (a tenth of them go to val, which "
                        "trains too)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: the machine's cores are shared)")
    parser.add_argument("--cost-rounds", type=int, default=5,
                        help="interleaved rounds of the cost measurement")
    parser.add_argument("--cost-only", action="store_true", help="only the cost measurement")
    parser.add_argument("--smoke", action="store_true", help="seconds: tiny data, 1 epoch")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    shape = dict(SMOKE) if args.smoke else FULL | {"epochs": args.epochs, "classes": args.classes,
                                                   "per_class": args.per_class}
    seeds = 2 if args.smoke else args.seeds
    torch.set_num_threads(args.threads)
    start, start_load = time.perf_counter(), load_average()
    runs, test_images = [], 0
    for seed in range(0 if args.cost_only else seeds):
        results, test_images = one_seed(seed, shape)
        runs.append(results)
        print(f"seed {seed}: " + "  ".join(f"{recipe} {result['top1']:.3f}"
                                           for recipe, result in results.items()), flush=True)
    cost = mixing_cost(shape["size"], rounds=1 if args.smoke else args.cost_rounds,
                       batches=1 if args.smoke else 6)
    if args.cost_only:
        print(f"{describe(start_load)}\nResNet-18, {shape['size']} px, batch 32, in memory\n")
        for recipe, measured in cost.items():
            print(f"| {recipe} | {measured['images_per_s']:.1f} | {measured['vs_flip']:.2f} |")
        return
    rows = summary(runs, cost)
    machine = describe(start_load)
    print(f"\n{machine}\n{seeds} seeds; {shape['classes']} classes, {test_images} test images "
          f"each, {shape['size']} px, {shape['epochs']} epochs; "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| recipe | test top-1 per seed | mean ± sd | vs flip, paired | train images per "
          "CPU-s | vs flip |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        per_seed = " / ".join(f"{value:.3f}" for value in row["top1"])
        cost = ("1.00 (test: 2 forwards)" if row["recipe"] == TTA
                else f"{row['speed_ratio']:.2f}")
        print(f"| {row['recipe']} | {per_seed} | {row['top1_mean_sd']} | "
              f"{row['diff_mean_sd']} | {row['images_per_s']:.1f} | {cost} |")
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "seeds": seeds, "shape": shape,
                                         "test_images": test_images, "runs": runs,
                                         "cost": cost, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
