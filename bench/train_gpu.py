"""Training speed of ResNet-18 on one GPU: seed-style fp32 loop vs carsweep's, side by side.

The carsweep rows time the product's own epoch: `build_run` (the model, optimizer, scaler a
trial builds) and `train_one_epoch` (the trial's loop, with its device augmentation and
normaliser from `batches_loader`), over batches from the memmap; the images/s is the one the
loop itself reports. The seed rows are a bare torchvision step, the ceiling's baseline. Needs
carsweep.trainable's dependencies (torch, torchvision, kornia, torchcam, pydantic, pandas), not
Ray, Optuna or TensorBoard. On a GPU machine, from the repository root:

    python bench/train_gpu.py --json gpu.json                 # all rows, about 5-8 minutes
    python bench/train_gpu.py --compile --sizes 400           # + torch.compile, compile time
    python bench/train_gpu.py --trace trace.json.gz           # + a profiler trace, 400 px
    python bench/train_gpu.py --smoke                         # tiny, runs on the CPU (a test)

Rows, all on the same synthetic uint8 images in a memory-mapped .npy file (the decoded cache's
format, so no JPEG decoding is timed here: bench/data_path.py measures that):

  model-only   the batch already on the device: forward, backward, optimizer step
  full trial   + the data path: batch gathered from the memmap, then
                 seed-style: pageable blocking copy, normalise on the CPU, fp32, NCHW,
                             loss.item() every step (the seed logged it: a host sync)
                 carsweep:   the trial's epoch: pinned non_blocking copy, per-sample flip +
                             random crop and normalise on the device, the GPU's autocast
                             (bf16 or fp16 + GradScaler), channels_last, a NaN check every
                             20 batches, the lr schedule's step
  sharing      N processes (1, 2, 4) training side by side on the one GPU (carsweep full
               trial), total images/s, at batch 32 and 64
  trace        (--trace) one torch.profiler trace of the product's full-trial steps at the
               last size, warm, as a gzipped Chrome trace (chrome://tracing, Perfetto), and
               its busiest operators in the output

MFU = achieved FLOP/s / the GPU's dense bf16 peak (--peak-tflops; 989 for H100/H200 SXM),
with FLOPs per training image counted by torch.utils.flop_counter on one real step (forward +
backward, 2 FLOPs per multiply-add), so no (px/224)^2 estimate is needed.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet18

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # carsweep from this checkout, installed or not
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ResNet18_Weights' transforms
PEAKS_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
CLASSES = 196
CARS_TRAIN_IMAGES = 8144


def product_config(size: int, batch: int, device: torch.device):
    """The trial the carsweep rows train: ResNet-18, sgd, flip + random crop on the device."""
    from carsweep.config.trial import TrialConfig

    return TrialConfig(model="resnet18", optimizer="sgd", lr=0.01, momentum=0.9,
                       resize=size, batch_size=batch, augmentation="flip+random-crop",
                       augment_on="device", weights="none", device=device.type,
                       num_workers=0)


def make_images(folder: Path, count: int, size: int) -> Path:
    """A .npy of uint8 (count, 3, size, size), the decoded cache's layout, random content."""
    path = folder / f"{size}.u8.npy"
    if not path.exists():
        array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                          shape=(count, 3, size, size))
        rng = np.random.default_rng(0)
        for start in range(0, count, 256):
            stop = min(count, start + 256)
            array[start:stop] = rng.integers(0, 256, (stop - start, 3, size, size), np.uint8)
        array.flush()
    return path


def batches_from_memmap(path: Path, batch: int, pinned: bool):
    """Endless (uint8 images, labels) batches, shuffled, gathered from the memmap as the cached
    loader does (pinned: into page-locked memory, ready for a non_blocking copy)."""
    array = np.load(path, mmap_mode="r")
    rng = np.random.default_rng(0)
    while True:
        order = rng.permutation(len(array))
        for start in range(0, len(array) - batch + 1, batch):
            rows = np.sort(order[start:start + batch])
            images = torch.from_numpy(np.ascontiguousarray(array[rows]))
            labels = torch.from_numpy(rows % CLASSES)
            yield (images.pin_memory(), labels.pin_memory()) if pinned else (images, labels)


def flops_per_image(size: int, device: torch.device) -> float:
    """FLOPs of one training step (forward + backward) of ResNet-18 per image at `size` px."""
    model = resnet18(num_classes=CLASSES).to(device)
    x = torch.randn(2, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return counter.get_total_flops() / 2


def seed_step(device: torch.device, use_compile: bool):
    """The bare step (model step function taking (uint8 images, labels) on the host)."""
    model = resnet18(num_classes=CLASSES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    forward = torch.compile(model) if use_compile else model
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        x = ((images.float() / 255 - mean) / std).to(device)  # CPU normalise, blocking copy
        loss = criterion(forward(x), labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # the seed printed the running loss: one host sync per step

    return step


def product_epoch(device: torch.device, size: int, batch: int, use_compile: bool):
    """The trial's epoch: `epoch(batches, count) -> images/s` over `count` batches."""
    from carsweep.trainable.data import batches_loader
    from carsweep.trainable.loop import pick_precision, train_one_epoch
    from carsweep.trainable.run import build_run

    config = product_config(size, batch, device)
    precision = pick_precision(config.precision, device)
    run = build_run(config, CLASSES, None, device, precision, steps_per_epoch=10**6)
    if use_compile:
        run.model = torch.compile(run.model)

    def epoch(batches, count: int) -> float:
        loader = batches_loader(list(itertools.islice(batches, count)), count * batch, config,
                                train=True, device=device)
        return train_one_epoch(run.model, loader, run.criterion, run.optimizer, run.scheduler,
                               run.scaler, device, precision=run.precision)["images_per_s"]

    return epoch


def timed(step, batches, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(seconds of the first step (compile included), images/s over `steps` after warm-up) of
    a bare step."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    step(*next(batches))
    sync()
    first = time.perf_counter() - started
    for _ in range(warmup):
        step(*next(batches))
    sync()
    started = time.perf_counter()
    seen = 0
    for _ in range(steps):
        images, labels = next(batches)
        step(images, labels)
        seen += len(labels)
    sync()
    return first, seen / (time.perf_counter() - started)


def on_device(path: Path, batch: int, device: torch.device):
    """The same batch again and again, already on the device: the model-only rate."""
    images, labels = next(batches_from_memmap(path, batch, pinned=False))
    images, labels = images.to(device), labels.to(device)
    while True:
        yield images, labels


def measure(args, style: str, mode: str, size: int, path: Path, device: torch.device,
            use_compile: bool = False) -> dict:
    carsweep = style == "carsweep"
    pinned = carsweep and device.type == "cuda"
    batches = (on_device(path, args.batch, device) if mode == "model-only"
               else batches_from_memmap(path, args.batch, pinned))
    if carsweep:
        epoch = product_epoch(device, size, args.batch, use_compile)
        started = time.perf_counter()
        epoch(batches, 1)
        first = time.perf_counter() - started
        epoch(batches, args.warmup)
        rate = epoch(batches, args.steps)
    else:
        first, rate = timed(seed_step(device, use_compile), batches, args.steps, args.warmup,
                            device)
    return {"style": style, "mode": mode, "size": size, "batch": args.batch,
            "compile": use_compile, "first_step_s": round(first, 2), "images_per_s": round(rate, 1)}


TRACE_STEPS = 5


def trace(args, size: int, path: Path, device: torch.device, out: Path) -> dict:
    """A profiler trace of TRACE_STEPS of the product's full-trial steps, after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    batches = batches_from_memmap(path, args.batch, pinned=device.type == "cuda")
    epoch = product_epoch(device, size, args.batch, use_compile=False)
    epoch(batches, args.warmup)
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        epoch(batches, TRACE_STEPS)
    with tempfile.TemporaryDirectory(prefix="carsweep-trace-") as tmp:
        raw = Path(tmp) / "trace.json"
        profiler.export_chrome_trace(str(raw))
        with raw.open("rb") as source, gzip.open(out, "wb") as packed:
            shutil.copyfileobj(source, packed)
    busiest = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=busiest, row_limit=15))
    return {"size": size, "batch": args.batch, "steps": TRACE_STEPS, "path": str(out),
            "bytes": out.stat().st_size}


def sharing(args, size: int, path: Path, processes: int, batch: int) -> float:
    """Total images/s of `processes` carsweep trials started together on the one GPU."""
    with tempfile.TemporaryDirectory(prefix="carsweep-share-") as barrier:
        command = [sys.executable, __file__, "--worker", str(path), "--worker-barrier", barrier,
                   "--worker-count", str(processes), "--batch", str(batch), "--sizes", str(size),
                   "--seconds", str(args.seconds), "--device", args.device]
        children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
                    for _ in range(processes)]
        outputs = [child.communicate()[0] for child in children]
    if any(child.returncode for child in children):
        raise RuntimeError(f"a sharing worker failed: {[c.returncode for c in children]}")
    return sum(json.loads(out.strip().splitlines()[-1])["images_per_s"] for out in outputs)


def worker(args) -> None:
    """One trial of the sharing row: warm up, wait for the others, train for `seconds`."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    size = args.sizes[0]
    epoch = product_epoch(device, size, args.batch, False)
    batches = batches_from_memmap(Path(args.worker), args.batch, device.type == "cuda")
    epoch(batches, 3)  # warm-up: cuDNN autotune, allocator
    barrier = Path(args.worker_barrier)
    (barrier / f"ready-{os.getpid()}").touch()
    while len(list(barrier.glob("ready-*"))) < args.worker_count:
        time.sleep(0.01)
    started, rates = time.perf_counter(), []
    while time.perf_counter() - started < args.seconds:
        rates.append(epoch(batches, 10))  # epochs of 10 batches, each synced at its end
    print(json.dumps({"images_per_s": sum(rates) / len(rates)}))


def peak_tflops(args, device: torch.device) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAKS_TFLOPS.items() if key in name), None)


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    peak = peak_tflops(args, device)
    rows, shares = [], []
    with tempfile.TemporaryDirectory(prefix="carsweep-train-bench-") as tmp:
        for size in args.sizes:
            path = make_images(Path(tmp), args.images, size)
            flops = flops_per_image(size, device)
            for style in ("seed", "carsweep"):
                for mode in ("model-only", "full trial"):
                    rows.append(measure(args, style, mode, size, path, device))
            if args.compile:
                rows.append(measure(args, "carsweep", "full trial", size, path, device,
                                    use_compile=True))
            for row in rows:
                if row["size"] == size:
                    row["gflops_per_image"] = round(flops / 1e9, 3)
                    row["tflops"] = row["images_per_s"] * flops / 1e12
                    row["mfu"] = round(row["tflops"] / peak, 4) if peak else None
        share_size = args.sizes[-1]
        path = make_images(Path(tmp), args.images, share_size)
        traced = trace(args, share_size, path, device, args.trace) if args.trace else None
        for batch in args.share_batches:
            for processes in args.share_processes:
                shares.append({"size": share_size, "batch": batch, "processes": processes,
                               "total_images_per_s": round(sharing(args, share_size, path,
                                                                  processes, batch), 1)})
    from carsweep.trainable.loop import train_one_epoch

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": name, "peak_tflops": peak, "torch": torch.__version__,
            "carsweep_step": f"{train_one_epoch.__module__}.{train_one_epoch.__qualname__}",
            "rows": rows, "sharing": shares, "ratios": ratios(rows), "trace": traced}


def ratios(rows: list[dict]) -> list[dict]:
    """carsweep / seed (full trial), full trial / model-only (carsweep), compile payback."""
    out = []
    for size in sorted({row["size"] for row in rows}):
        pick = {(r["style"], r["mode"], r["compile"]): r for r in rows if r["size"] == size}
        seed, fast = pick[("seed", "full trial", False)], pick[("carsweep", "full trial", False)]
        model = pick[("carsweep", "model-only", False)]
        entry = {"size": size,
                 "carsweep_over_seed": round(fast["images_per_s"] / seed["images_per_s"], 2),
                 "full_over_model_only": round(fast["images_per_s"] / model["images_per_s"], 3)}
        compiled = pick.get(("carsweep", "full trial", True))
        if compiled:
            compile_s = compiled["first_step_s"] - fast["first_step_s"]
            saved_per_epoch = (CARS_TRAIN_IMAGES / fast["images_per_s"]
                               - CARS_TRAIN_IMAGES / compiled["images_per_s"])
            entry["compile_s"] = round(compile_s, 1)
            entry["compile_speedup"] = round(compiled["images_per_s"] / fast["images_per_s"], 3)
            entry["compile_pays_after_epochs"] = (round(compile_s / saved_per_epoch, 1)
                                                  if saved_per_epoch > 0 else None)
        out.append(entry)
    return out


def print_report(result: dict) -> None:
    print(f"ResNet-18 training on {result['device']} (peak {result['peak_tflops']} TFLOPS "
          f"bf16 dense), torch {result['torch']}")
    print(f"{'size':>5} {'style':<9} {'mode':<11} {'compile':<7} {'batch':>5} "
          f"{'images/s':>10} {'TFLOPS':>8} {'MFU':>7} {'1st step s':>10}")
    for r in result["rows"]:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        print(f"{r['size']:>5} {r['style']:<9} {r['mode']:<11} {str(r['compile']):<7} "
              f"{r['batch']:>5} {r['images_per_s']:>10.1f} {r['tflops']:>8.2f} {mfu:>7} "
              f"{r['first_step_s']:>10.2f}")
    for entry in result["ratios"]:
        print(f"{entry['size']:>5} px: carsweep/seed {entry['carsweep_over_seed']:.2f}x, "
              f"full trial / model-only {100 * entry['full_over_model_only']:.1f}%"
              + (f", compile {entry['compile_s']} s for {entry['compile_speedup']}x, pays "
                 f"after {entry['compile_pays_after_epochs']} Stanford Cars epochs"
                 if "compile_s" in entry else ""))
    for share in result["sharing"]:
        print(f"sharing {share['processes']} trial(s) at {share['size']} px, batch "
              f"{share['batch']}: {share['total_images_per_s']:.1f} images/s in total")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 256, 400])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=2048, help="images in the memmap file")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row")
    parser.add_argument("--share-processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--share-batches", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--seconds", type=float, default=20.0, help="per sharing run")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and steps (CPU)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--trace", type=Path, help="write a profiler trace here (.json.gz)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-barrier", help=argparse.SUPPRESS)
    parser.add_argument("--worker-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # a check that it runs, not a measurement: stay light
        args.sizes, args.batch, args.images, args.steps, args.warmup = [32], 4, 16, 2, 1
        args.share_processes, args.share_batches, args.seconds = [2], [4], 1.0  # 2 at once
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker:
        worker(args)
        return 0
    result = run(args)
    print_report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
