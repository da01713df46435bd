"""The product's own code on one GPU: the shipped Cars trial, four trials sharing the GPU, then
train, export and predict with Grad-CAM. No Ray: what runs is carsweep.trainable and the CLI,
as a trial and a user run them.

    python bench/gpu_smoke.py --json gpu-smoke.json        # on a GPU machine: a few minutes
    python bench/gpu_smoke.py --smoke --json smoke.json    # the plumbing on a CPU (a test)

Stages, each adding to the JSON as it ends (written anew after every stage, so a run cut
short still leaves what it measured):

  data       a Cars-shaped set (`carsweep synth --preset cars`' drawing, 196 classes, a few
             images per class), prepared, and its decoded cache built at the trial's size
  real step  the pre-flight's real step of the trial (trainable/real_step.py) in a fresh
             process at the trial's GPU share: its peak, CUDA context and what it needs
  trials     4 processes at once, each one epoch of `train()` with `gpu_share` 0.25 and the
             context the real step measured (the memory cap a sweep's trial gets): each
             process's peak reserve and images/s, beside the real step's estimate
  train      `carsweep train` of the same trial (a standalone run folder)
  export     `carsweep export` of that run
  predict    `carsweep predict --cam` on one test image per class (top-5 and Grad-CAM)

The trial is configs/stanford-cars.yaml's first point (ResNet-18, sgd, 400 px, batch 32) with
one device augmentation and one mixing preset (flip+snapmix: snapmix's CAM forward is the
heaviest mix), `precision: auto` (bf16 where the GPU has it), `weights: none` (ImageNet's
cannot be fetched on a machine without internet). --smoke shrinks it to a CPU: 6 classes,
64 px, 2 processes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from machine import describe, load_average  # noqa: E402

CARS = ROOT / "configs" / "stanford-cars.yaml"
AUGMENTATION = "flip+snapmix"


def trial_values(args: argparse.Namespace, cache_dir: Path) -> dict:
    """The shipped Cars sweep's first point, as its trial config, sized for this run."""
    import yaml

    sweep = yaml.safe_load(CARS.read_text())
    fixed = {k: v for k, v in sweep["space"].items() if not isinstance(v, dict | list)}
    first = sweep["searcher"]["points_to_evaluate"][0]
    values = fixed | first | {"augmentation": AUGMENTATION, "mix_prob": 1.0, "epochs": 1,
                              "weights": "none", "cache_dir": str(cache_dir),
                              "num_workers": 0}
    if args.smoke:
        values |= {"resize": 64, "batch_size": 8, "device": "cpu"}
    return values


class Record:
    """The JSON of this run, written anew after every stage."""

    def __init__(self, path: Path, header: dict) -> None:
        self.path, self.data = path, {**header, "stages": {}}
        self.write()

    def stage(self, name: str, **values) -> None:
        self.data["stages"][name] = values
        self.write()
        print(f"[{name}] {json.dumps(values)[:300]}", flush=True)

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=2))
        temporary.replace(self.path)


def make_data(root: Path, args: argparse.Namespace, values: dict) -> dict:
    from carsweep.data.cache_build import build_cache
    from carsweep.data.prepare import prepare_dataset
    from carsweep.data.synth_cars import make_cars_dataset

    started = time.perf_counter()
    source = make_cars_dataset(root / "source", classes=args.classes, per_class=args.per_class,
                               test_per_class=1, progress=False)
    data = prepare_dataset(source, root / "data", val_fraction=0.25, seed=0,
                           warn=lambda line: None)
    build_cache(data, values["resize"], cache_dir=values["cache_dir"], progress=False)
    return {"classes": data.num_classes, "images": len(data.manifest),
            "train": len(data.rows("train")), "resize": values["resize"],
            "seconds": round(time.perf_counter() - started, 1)}


def in_process(function, *args) -> dict:
    """`function(*args)` in a fresh spawned process (its own CUDA context and memory cap)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def real_step_here(values: dict, classes: int, share: float) -> dict:
    from carsweep.config.trial import TrialConfig
    from carsweep.trainable.real_step import real_step

    measured = real_step(TrialConfig.model_validate(values), classes, share)
    return {"device": measured.device, "gpu": measured.gpu_name,
            "precision": measured.precision, "seconds": round(measured.seconds, 2),
            "total_bytes": measured.total_bytes, "peak_bytes": measured.peak_bytes,
            "context_bytes": measured.outside_bytes, "needed_bytes": measured.needed_bytes,
            "cap_bytes": measured.cap_bytes}


class Kept:
    """A Reporter that keeps each epoch's metrics."""

    def __init__(self) -> None:
        self.metrics: list[dict] = []

    def report(self, metrics: dict, checkpoint_dir) -> None:
        self.metrics.append(metrics)


def trial_here(values: dict, dataset: str, share: float, context: int | None) -> dict:
    import torch

    from carsweep.config.trial import TrialConfig
    from carsweep.trainable import train

    kept = Kept()
    started = time.perf_counter()
    train(TrialConfig.model_validate(values), Path(dataset), reporter=kept, gpu_share=share,
          gpu_context_bytes=context)
    last = kept.metrics[-1]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"pid": os.getpid(), "seconds": round(time.perf_counter() - started, 1),
            "images_per_s": round(last["images_per_s"], 1), "precision": last["precision"],
            "val_top1": last["val_top1"],
            "peak_bytes": torch.cuda.max_memory_reserved() if cuda else None}


def run_trials(values: dict, dataset: Path, processes: int, share: float,
               context: int | None) -> list[dict]:
    context_ = multiprocessing.get_context("spawn")
    with context_.Pool(processes) as pool:
        waiting = [pool.apply_async(trial_here, (values, str(dataset), share, context))
                   for _ in range(processes)]
        return [result.get() for result in waiting]


def cli(*argv: str) -> tuple[int, str]:
    """carsweep's CLI in this process: (exit code, what it printed)."""
    from carsweep.cli import main

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(list(argv))
    return code, printed.getvalue()


def overrides(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("gpu-smoke.json"))
    parser.add_argument("--work", type=Path, default=None, help="folder for data and runs")
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU")
    parser.add_argument("--classes", type=int, default=196)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--share", type=float, default=0.25)
    args = parser.parse_args()
    if args.smoke:
        args.classes, args.per_class, args.processes = 6, 4, 2
    import tempfile

    import torch

    root = args.work or Path(tempfile.mkdtemp(prefix="carsweep-gpu-smoke-"))
    values = trial_values(args, root / "cache")
    start_load = load_average()
    from carsweep.config.trial import TrialConfig

    resolved = TrialConfig.model_validate(values).model_dump(mode="json")  # what trains
    record = Record(args.json, {"machine": describe(start_load), "trial": resolved,
                                "processes": args.processes, "share": args.share,
                                "cuda": torch.cuda.is_available()})
    record.stage("data", **make_data(root, args, values))
    classes = record.data["stages"]["data"]["classes"]
    step = in_process(real_step_here, values, classes, args.share)
    record.stage("real step", **step)
    trials = run_trials(values, root / "data", args.processes, args.share,
                        step["context_bytes"])
    record.stage("trials", runs=trials, estimate_needed_bytes=step["needed_bytes"],
                 total_images_per_s=round(sum(t["images_per_s"] for t in trials), 1))
    run = root / "train"
    code, printed = cli("train", "--data", str(root / "data"), "--out", str(run),
                        *overrides(values))
    record.stage("train", exit_code=code, last_line=printed.strip().splitlines()[-1])
    best = root / "best.pt"
    code, printed = cli("export", str(run), "--out", str(best))
    record.stage("export", exit_code=code, bytes=best.stat().st_size if best.exists() else 0)
    images = sorted(next(iter(sorted(folder.iterdir()))) for folder
                    in (root / "source" / "test").iterdir())[:8]
    code, printed = cli("predict", "--weights", str(best), "--json", "--cam",
                        str(root / "cam"), *map(str, images))
    record.stage("predict", exit_code=code, images=len(images),
                 predictions=json.loads(printed) if code == 0 else printed[-2000:],
                 cams=sorted(p.name for p in (root / "cam").glob("*")))
    record.data["machine"] = describe(start_load, device=step["gpu"] or "cpu")
    record.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
