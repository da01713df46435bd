"""Record fine-tuning learning curves for the scheduler replay (bench/replay.py): every epoch's
validation top-1 and time, for a grid over the shipped space's dimensions.

No ImageNet weights can be fetched here, so the pretrained start is made first: a small CNN
is trained on one synthetic set (`pretrain`: car drawings whose headlight shape AND colour
name the class, 8 classes), then every grid point fine-tunes a copy of it on another set
where only fine detail decides the class (`main`: the headlight and both wheel hubs share the
class shape, no class colour; `heldout`: the wheel hubs alone, another seed, 6 classes). The
validation splits hold 2,000 (main: 8 x 250) and 2,004 (heldout: 6 x 334) images, so 0.5 pt is
10 images; the training splits 250 (main) and 200 (heldout) per class.

Grid (the shipped Cars space, scaled to what one CPU thread can train):
    optimizer    sgd (momentum 0.9) with lr 1e-3 .. 1e-1, adam with lr 1e-5 .. 3e-3 (4 each,
                 log-spaced: the shipped ranges' ends and two points between)
    batch_size   32, 64            augmentation  none, flip
    resize       24, 32 px (the two input sizes; drawn at 32 and resized)
    seeds        0, 1 (training seeds: initial head, batch order, flips)
cosine schedule to `--epochs`, weight decay 1e-4, one torch thread. Each epoch's time is this
process's CPU time for that epoch's training and evaluation (wall time on a shared machine
measures the neighbours); the replay scales it to GPU-seconds by one constant, which cancels
in every ratio it reports.

    .venv/bin/python bench/record_curves.py --out bench/curves/main.json
    .venv/bin/python bench/record_curves.py --dataset heldout --out bench/curves/heldout.json
    .venv/bin/python bench/record_curves.py --small --out /tmp/curves.json   # seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from machine import describe, load_average
from torch import nn

from carsweep.data.synth import draw_car
from carsweep.data.synth_shapes import SHAPES

DRAWN_PX = 32
DATASETS = {  # name -> how the pictures are drawn and how many
    "pretrain": {"classes": 8, "cues": ("headlight",), "coloured": True, "seed": 100,
                 "train": 250, "val": 25},
    "main": {"classes": 8, "cues": ("headlight", "wheel"), "coloured": False, "seed": 200,
             "train": 250, "val": 250},
    "heldout": {"classes": 6, "cues": ("wheel",), "coloured": False, "seed": 300,
                "train": 200, "val": 334},
}
SMALL = {"train": 12, "val": 12}
GRID = {
    "optimizer_lr": [("sgd", lr) for lr in (1e-3, 4.6e-3, 2.2e-2, 1e-1)]
    + [("adam", lr) for lr in (1e-5, 1e-4, 5.5e-4, 3e-3)],
    "batch_size": [32, 64],
    "augmentation": ["none", "flip"],
    "resize": [24, 32],
    "seed": [0, 1],
}
PRETRAIN = {"epochs": 8, "lr": 2e-3, "batch_size": 64}


def small_cnn(classes: int) -> nn.Sequential:
    """Five conv layers with batch norm, global pooling, a linear head (about 0.1 M weights)."""
    def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True)]
    return nn.Sequential(*block(3, 24, 1), *block(24, 32, 2), *block(32, 48, 1),
                         *block(48, 64, 2), *block(64, 96, 2), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(96, classes))


def draw_split(spec: dict, split: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 3, 32, 32), labels (N,)) of one split, deterministic for the spec."""
    images, labels = [], []
    for label, shape in enumerate(list(SHAPES)[: spec["classes"]]):
        for index in range(count):
            rng = np.random.default_rng([spec["seed"], split, label, index])
            drawn = draw_car(shape, size=DRAWN_PX, cues=spec["cues"],
                             coloured_parts=spec["coloured"], rng=rng)
            images.append(np.asarray(drawn.image.convert("RGB")))
            labels.append(label)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return pixels, torch.tensor(labels)


def as_input(images: torch.Tensor, resize: int) -> torch.Tensor:
    x = images.float().div(255).sub(0.5).div(0.25)  # (B, 3, 32, 32)
    if resize != DRAWN_PX:
        x = F.interpolate(x, size=(resize, resize), mode="bilinear", antialias=True,
                          align_corners=False)
    return x


def train_epoch(model, optimizer, scheduler, data, *, batch_size: int, resize: int,
                flip: bool, generator: torch.Generator) -> float:
    images, labels = data
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        x = as_input(images[batch], resize)
        if flip:  # per-sample horizontal flip
            mirrored = torch.rand(len(batch), generator=generator) < 0.5
            x[mirrored] = x[mirrored].flip(-1)
        loss = F.cross_entropy(model(x), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    scheduler.step()
    return total / len(labels)


@torch.no_grad()
def evaluate(model, data, resize: int) -> tuple[float, float]:
    """(top-1, mean loss) on the validation split."""
    images, labels = data
    model.eval()
    logits = torch.cat([model(as_input(images[s:s + 500], resize))
                        for s in range(0, len(labels), 500)])
    return (float((logits.argmax(1) == labels).float().mean()),
            float(F.cross_entropy(logits, labels)))


def pretrain(spec: dict, sizes: dict, epochs: int) -> tuple[dict, float]:
    """The backbone's state dict after training on the pretrain set, and its CPU seconds."""
    torch.manual_seed(0)
    data = draw_split(spec, 0, sizes["train"])
    model = small_cnn(spec["classes"])
    optimizer = torch.optim.Adam(model.parameters(), lr=PRETRAIN["lr"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    started = time.process_time()
    for _ in range(epochs):
        train_epoch(model, optimizer, scheduler, data, batch_size=PRETRAIN["batch_size"],
                    resize=DRAWN_PX, flip=True, generator=torch.Generator().manual_seed(0))
    held = draw_split(spec, 1, sizes["val"])
    print(f"pretrained: val top-1 {evaluate(model, held, DRAWN_PX)[0]:.3f}", flush=True)
    head = f"{len(model) - 1}."  # the last module, the Linear head
    backbone = {k: v for k, v in model.state_dict().items() if not k.startswith(head)}
    return backbone, time.process_time() - started


def fine_tune(point: dict, backbone: dict, classes: int, train, val, epochs: int) -> list[dict]:
    """One grid point trained to the end: a row per epoch."""
    torch.manual_seed(point["seed"])
    model = small_cnn(classes)
    model.load_state_dict(backbone, strict=False)  # every layer but the new head
    if point["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=point["lr"], momentum=0.9,
                                    weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=point["lr"], weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    generator = torch.Generator().manual_seed(point["seed"])
    rows = []
    for epoch in range(1, epochs + 1):
        started = time.process_time()
        loss = train_epoch(model, optimizer, scheduler, train, batch_size=point["batch_size"],
                           resize=point["resize"], flip=point["augmentation"] == "flip",
                           generator=generator)
        top1, val_loss = evaluate(model, val, point["resize"])
        if not math.isfinite(loss):
            top1 = 0.0
        rows.append({"epoch": epoch, "val_top1": round(top1, 5), "val_loss": round(val_loss, 5),
                     "train_loss": round(loss, 5),
                     "epoch_time_s": round(time.process_time() - started, 4)})
    return rows


def grid_points() -> list[dict]:
    """Every point, the first seed of every configuration first and the optimizer and lr
    innermost, so a recording cut short still covers the learning rates evenly."""
    return [{"optimizer": opt, "lr": lr, "batch_size": bs, "augmentation": aug, "resize": px,
             "seed": seed}
            for seed, px, aug, bs, (opt, lr) in itertools.product(
                GRID["seed"], GRID["resize"], GRID["augmentation"], GRID["batch_size"],
                GRID["optimizer_lr"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=["main", "heldout"], default="main")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=len(GRID["seed"]),
                        help="training seeds per grid point (the first N of 0, 1)")
    parser.add_argument("--small", action="store_true", help="12 images per class, 2 points")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start_load, started = load_average(), time.time()
    sizes = SMALL if args.small else DATASETS[args.dataset]
    pre_sizes = SMALL if args.small else DATASETS["pretrain"]
    backbone, pretrain_s = pretrain(DATASETS["pretrain"], pre_sizes,
                                    1 if args.small else PRETRAIN["epochs"])
    spec = DATASETS[args.dataset]
    train = draw_split(spec, 0, sizes["train"])
    val = draw_split(spec, 1, sizes["val"])
    points = [p for p in grid_points() if p["seed"] < args.seeds]
    points = points[:2] if args.small else points
    runs = _recorded(args.out, args)  # a recording cut short goes on where it stopped
    done = [run["config"] for run in runs]
    for number, point in enumerate(points, 1):
        if point in done:
            continue
        curve = fine_tune(point, backbone, spec["classes"], train, val, args.epochs)
        runs.append({"config": point, "curve": curve})
        print(f"{number}/{len(points)} {point} -> {curve[-1]['val_top1']:.3f} "
              f"({sum(r['epoch_time_s'] for r in curve):.0f} s)", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        _write(args.out, args, spec, sizes, pretrain_s, runs, started, start_load)


def _recorded(out: Path, args) -> list[dict]:
    """The runs already in `out`, if it is a recording of the same dataset and epochs."""
    if not out.is_file() or args.small:
        return []
    record = json.loads(out.read_text())
    same = record["command"].startswith(f"bench/record_curves.py --dataset {args.dataset} "
                                        f"--epochs {args.epochs}")
    return record["runs"] if same else []


def _write(out: Path, args, spec: dict, sizes: dict, pretrain_s: float, runs: list,
           started: float, start_load: float) -> None:
    """The recording so far (rewritten after every run, so a cut-short recording keeps what
    it has)."""
    record = {
        "how": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": f"bench/record_curves.py --dataset {args.dataset} --epochs {args.epochs} "
        f"--seeds {args.seeds}"
        + (" --small" if args.small else ""),
        "dataset": {**spec, "cues": list(spec["cues"]), **sizes, "drawn_px": DRAWN_PX},
        "model": "small_cnn (5 conv + BN, 0.1 M weights), pretrained on the `pretrain` set",
        "epochs": args.epochs,
        "cost": {"pretrain_cpu_s": round(pretrain_s, 1),
                 "fine_tune_cpu_s": round(sum(e["epoch_time_s"] for r in runs
                                              for e in r["curve"]), 1),
                 "wall_s": round(time.time() - started, 1), "machine": describe(start_load)},
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
