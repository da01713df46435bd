"""Where a run computes: the one place that turns a run's `device` setting, and the GPU share
Ray granted it, into a torch.device, and what a node's torch can and cannot run.

Two decisions matter. A run that Ray gave a GPU uses that GPU or fails in one line: it never
falls back to the CPU (ASHA counts epochs, not time, so a trial on a CPU would never be
stopped and the sweep's wall time would explode with no error anywhere). And the device always
carries its index (`cuda:0`): under Ray, CUDA_VISIBLE_DEVICES leaves the process one device,
and torch's per-process calls (the memory cap) refuse a bare `cuda`.

The build-support rules (`arch_supported`, `driver_supported`) are pure, so the pre-flight can
judge a node's facts (`cuda_facts`, gathered there) on the driver, and a table can test them.
"""

from __future__ import annotations

import ctypes
import re
import socket
from dataclasses import dataclass

import torch

from carsweep.errors import UserError

CPU = torch.device("cpu")
GIB = 1024**3
# The oldest Linux driver each CUDA major runs on (minor-version compatibility: a 12.8 build
# runs on any 12.x driver), from NVIDIA's CUDA compatibility guide.
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


def resolve_device(choice: str, gpu_share: float | None = None) -> torch.device:
    """The torch.device a run computes on.

    `gpu_share` is what Ray granted the process: None when no Ray placed it (a standalone
    `train`, `predict`, analyze --local), where `auto` takes a usable GPU and else the CPU;
    0 when Ray granted none, where `auto` is the CPU and `cuda` an error; above 0, where `auto`
    and `cuda` must get the GPU (else a UserError naming the node and the cause) and `cpu`
    stays the CPU on purpose (a cluster of logical GPUs, a CPU rehearsal of a GPU sweep)."""
    if choice == "cpu":
        return CPU
    if gpu_share == 0:
        if choice == "cuda":
            raise UserError("`device` is 'cuda', but this run was given no GPU "
                            "(resources.gpu = 0); set resources.gpu or device: auto")
        return CPU
    problem = cuda_problem()
    if problem is None:
        return torch.device("cuda", torch.cuda.current_device())
    if choice == "auto" and gpu_share is None:
        return CPU
    where = f"torch {torch.__version__} on {socket.gethostname()} cannot use CUDA: {problem}"
    if not gpu_share:
        raise UserError(f"`device` is 'cuda', but {where}; use auto or cpu")
    raise UserError(f"Ray gave this run {gpu_share:g} GPU, but {where}; it would train on the "
                    "CPU, so it stops (check the node's NVIDIA driver and torch build, or set "
                    "device: cpu on purpose)")


def cuda_problem() -> str | None:
    """None if torch can use a CUDA device in this process, else why not, in one line."""
    if torch.version.cuda is None:
        return "it is a CPU-only build of torch"
    try:
        torch.cuda.init()
    except (RuntimeError, AssertionError) as error:
        # torch says "Found no NVIDIA driver on your system. Please check ...": the first
        # sentence is the cause; the rest is advice for a desktop.
        return first_sentence(str(error)) or type(error).__name__
    return None


def first_sentence(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.split(". ")[0].rstrip(".")


def cap_gpu_memory(device: torch.device, share: float | None,
                   context_bytes: int | None = None) -> float | None:
    """Cap this process's CUDA allocator to its `share` of the GPU less `context_bytes` (the
    CUDA context and kernels, which live outside the allocator), so trials sharing a GPU
    cannot starve each other: the one that overreaches gets an out-of-memory error of its own.
    Returns the fraction of the GPU's memory given to the allocator, None when uncapped."""
    if device.type != "cuda" or share is None or not 0 < share < 1:
        return None
    fraction = float(share)
    if context_bytes:
        total = torch.cuda.get_device_properties(device).total_memory
        fraction -= context_bytes / total
        if fraction <= 0:
            raise UserError(f"a {share:g} share of {torch.cuda.get_device_name(device)} "
                            f"({total / GIB:.1f} GiB) leaves nothing beside the CUDA context "
                            f"({context_bytes / GIB:.2f} GiB); raise resources.gpu")
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def run_device(choice: str, gpu_share: float | None,
               context_bytes: int | None = None) -> torch.device:
    """What a run does first: resolve its device, and cap its memory to its share of a GPU."""
    device = resolve_device(choice, gpu_share)
    cap_gpu_memory(device, gpu_share, context_bytes)
    return device


# What a node's torch can run ------------------------------------------------------------------

def arch_supported(capability: tuple[int, int], arch_flags: list[str]) -> bool:
    """Whether a build compiled for `arch_flags` (torch._C._cuda_getArchFlags(): `sm_86`,
    `sm_90a`, `compute_120`) has kernels for a GPU of `capability` (8, 9).

    A cubin `sm_XY` runs on GPUs of the same major X and a minor >= Y (an L4 at 8.9 runs
    sm_86's); an arch-specific one (`sm_90a`) on exactly X.Y; PTX (`compute_XY`) is compiled
    by the driver for any GPU of capability >= X.Y."""
    for flag in arch_flags:
        found = re.fullmatch(r"(sm|compute)_(\d+)(\d)(a|f)?", flag.strip())
        if found is None:
            continue
        kind, major, minor, suffix = found.group(1), int(found.group(2)), int(found.group(3)), \
            found.group(4)
        if kind == "compute" and capability >= (major, minor):
            return True
        if kind == "sm" and suffix == "a" and capability == (major, minor):
            return True
        if kind == "sm" and suffix != "a" and capability[0] == major and capability[1] >= minor:
            return True
    return False


def driver_supported(driver_cuda: tuple[int, int], build_cuda: tuple[int, int]) -> bool:
    """Whether a driver that supports CUDA `driver_cuda` runs a build for CUDA `build_cuda`:
    any driver of the build's major or newer (minor-version compatibility)."""
    return driver_cuda[0] >= build_cuda[0]


@dataclass(frozen=True)
class CudaFacts:
    """What one process on a node found: torch's build, the driver, the GPU it was given."""

    host: str
    torch_version: str
    build_cuda: str | None  # torch.version.cuda, e.g. "13.0"; None for a CPU-only build
    arch_flags: tuple[str, ...]
    driver_cuda: tuple[int, int] | None  # the newest CUDA the driver supports; None: none
    problem: str | None  # why torch cannot use CUDA, or None
    gpu_name: str | None = None
    capability: tuple[int, int] | None = None


def cuda_facts() -> CudaFacts:
    """The facts of this process (run where the GPU is: a probe with the trial's share)."""
    flags = tuple(torch._C._cuda_getArchFlags().split()) if torch.version.cuda else ()
    problem = cuda_problem()
    name = capability = None
    if problem is None:
        try:
            index = torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
            capability = tuple(torch.cuda.get_device_capability(index))
        except RuntimeError as error:  # a CUDA error past init: a cause, not a traceback
            problem = first_sentence(str(error)) or type(error).__name__
    return CudaFacts(host=socket.gethostname(), torch_version=torch.__version__,
                     build_cuda=torch.version.cuda, arch_flags=flags,
                     driver_cuda=driver_cuda_version(), problem=problem, gpu_name=name,
                     capability=capability)


def cuda_facts_problems(facts: CudaFacts) -> list[str]:
    """One line per reason trials could not train on this node's GPU (empty: it can)."""
    build = f"torch {facts.torch_version}"
    if facts.build_cuda is None:
        return [f"{build} is a CPU-only build, so trials would train on the CPU; install a "
                "CUDA build of torch there (docs/cluster.md, GPU support)"]
    needed = _version(facts.build_cuda)
    if facts.driver_cuda is not None and not driver_supported(facts.driver_cuda, needed):
        have = ".".join(map(str, facts.driver_cuda))
        return [f"its NVIDIA driver supports CUDA {have}, but {build} is built for CUDA "
                f"{facts.build_cuda} and needs a driver >= {MIN_DRIVER.get(needed[0], '?')}"]
    if facts.problem is not None:
        return [f"Ray offers GPUs there, but {build} cannot use CUDA: {facts.problem}; trials "
                "would train on the CPU (check its NVIDIA driver, or set device: cpu on "
                "purpose)"]
    if facts.capability is not None and not arch_supported(facts.capability, facts.arch_flags):
        sm = "sm_{}{}".format(*facts.capability)
        return [f"its GPU {facts.gpu_name} ({sm}) is not supported by {build}, whose kernels "
                f"are for {' '.join(facts.arch_flags)} (docs/cluster.md, GPU support)"]
    return []


def driver_cuda_version() -> tuple[int, int] | None:
    """The newest CUDA version the installed NVIDIA driver supports (cuDriverGetVersion),
    or None where there is no driver library."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if cuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value // 1000, (version.value % 1000) // 10


def _version(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor or 0)
