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
  trials     4 processes at once, each two epochs of `train()` with `gpu_share` 0.25 and the
             context the real step measured (the memory cap a sweep's trial gets): each
             process's peak reserve and images/s, beside the real step's estimate; the GPU's
             whole use sampled from torch.cuda.mem_get_info while they train, beside the
             estimate times 4; and what a trial pays before its first step (its process
             start, imports, setup to the first epoch, and the first epoch's warm-up: epoch 1
             less epoch 2), beside one epoch
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
import shutil
import sys
import threading
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
    # force: a rerun on the same machine (gpu_run.sh reruns a stage) draws and prepares anew
    source = make_cars_dataset(root / "source", classes=args.classes, per_class=args.per_class,
                               test_per_class=1, progress=False, force=True)
    data = prepare_dataset(source, root / "data", val_fraction=0.25, seed=0, force=True,
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
    """A Reporter that keeps each epoch's metrics and when it reported them."""

    def __init__(self) -> None:
        self.metrics: list[dict] = []
        self.times: list[float] = []

    def report(self, metrics: dict, checkpoint_dir) -> None:
        self.metrics.append(metrics)
        self.times.append(time.perf_counter())


def trial_here(values: dict, dataset: str, share: float, context: int | None,
               submitted: float) -> dict:
    entered_wall, entered = time.time(), time.perf_counter()
    import torch

    from carsweep.config.trial import TrialConfig
    from carsweep.trainable import train

    kept = Kept()
    started = time.perf_counter()
    train(TrialConfig.model_validate(values), Path(dataset), reporter=kept, gpu_share=share,
          gpu_context_bytes=context)
    epochs = [metrics["epoch_time_s"] for metrics in kept.metrics]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {"pid": os.getpid(), "seconds": round(time.perf_counter() - started, 1),
            "images_per_s": round(kept.metrics[-1]["images_per_s"], 1),
            "precision": kept.metrics[-1]["precision"],
            "val_top1": kept.metrics[-1]["val_top1"],
            "peak_bytes": torch.cuda.max_memory_reserved() if cuda else None,
            **fixed_cost(entered_wall - submitted, started - entered,
                         kept.times[0] - started, epochs)}


def fixed_cost(process_start: float, imports: float, to_first_report: float,
               epochs: list[float]) -> dict:
    """What a trial pays before it trains at speed, in seconds: its process's start (the
    spawn, to the trial's first line), its imports, train()'s setup (data, CUDA's context,
    the model; the first checkpoint's save is in it too: train() to the first report, less
    the first epoch), and the first epoch's warm-up (cuDNN's autotuning, the allocator's
    growth: epoch 1 less epoch 2); beside one epoch at speed (epoch 2)."""
    setup = to_first_report - epochs[0]
    warm_up = epochs[0] - epochs[1]
    return {"process_start_s": round(process_start, 2), "imports_s": round(imports, 2),
            "setup_s": round(setup, 2), "warm_up_s": round(warm_up, 2),
            "fixed_s": round(process_start + imports + setup + warm_up, 2),
            "epoch_s": round(epochs[1], 2)}


class DeviceMemoryPeak:
    """The GPU's whole use at its highest while the block runs, sampled from
    torch.cuda.mem_get_info (every process's allocations and CUDA contexts, which the
    allocator's own counters do not see), less what was in use when it began (this
    process's own context among it). None without CUDA."""

    def __init__(self, every_s: float = 0.02) -> None:
        self.every_s, self.peak, self.baseline = every_s, None, None
        self._done = threading.Event()

    def _used(self) -> int:
        import torch

        free, total = torch.cuda.mem_get_info()
        return total - free

    def _sample(self) -> None:
        while not self._done.wait(self.every_s):
            self.peak = max(self.peak, self._used())

    def __enter__(self) -> DeviceMemoryPeak:
        import torch

        if torch.cuda.is_available():
            self.baseline = self.peak = self._used()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.baseline is not None:
            self._done.set()
            self._thread.join()
            self.peak = max(self.peak, self._used())

    @property
    def used_bytes(self) -> int | None:
        return None if self.baseline is None else self.peak - self.baseline


def run_trials(values: dict, dataset: Path, processes: int, share: float,
               context: int | None) -> tuple[list[dict], int | None]:
    """`processes` trials of two epochs side by side, and the GPU's peak use meanwhile."""
    two_epochs = values | {"epochs": 2}
    context_ = multiprocessing.get_context("spawn")
    with DeviceMemoryPeak() as memory:
        spawned = time.time()  # the pool starts its processes: the trials' process start
        with context_.Pool(processes) as pool:
            waiting = [pool.apply_async(trial_here, (two_epochs, str(dataset), share, context,
                                                     spawned))
                       for _ in range(processes)]
            runs = [result.get() for result in waiting]
    return runs, memory.used_bytes


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
    for earlier in (root / "train", root / "cam"):  # a rerun in the same --work starts clean
        shutil.rmtree(earlier, ignore_errors=True)
    (root / "best.pt").unlink(missing_ok=True)
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
    trials, device_peak = run_trials(values, root / "data", args.processes, args.share,
                                     step["context_bytes"])
    needed = step["needed_bytes"]
    record.stage("trials", runs=trials, estimate_needed_bytes=needed,
                 device_peak_bytes=device_peak,
                 estimate_total_bytes=needed * args.processes if needed else None,
                 total_images_per_s=round(sum(t["images_per_s"] for t in trials), 1))
    run = root / "train"
    code, printed = cli("train", "--data", str(root / "data"), "--out", str(run),
                        *overrides(values))
    record.stage("train", exit_code=code, last_line=(printed.strip().splitlines() or [""])[-1])
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
