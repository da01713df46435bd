"""Where a run computes (trainable/device.py): a granted GPU is used or the run fails in one
line; the device carries its index, so the memory cap passes torch's own checks; the build-
support rules over a table of GPUs.

This machine has no GPU, and its torch is a CUDA build (2.14.1+cu130) with no driver. The
`fake_cuda` fixture fakes only the CUDA driver's own calls (init, the device count and index,
the allocator's fraction); torch's Python code around them, `_get_device_index` and the
fraction's checks included, runs as it does on a GPU node.
"""

from __future__ import annotations

import re

import pytest
import torch
from trainable_data import make_tiny_dataset

from carsweep.config.trial import TrialConfig
from carsweep.errors import UserError
from carsweep.trainable import device as device_module
from carsweep.trainable import train
from carsweep.trainable.device import (
    CudaFacts,
    arch_supported,
    cap_gpu_memory,
    cuda_facts,
    cuda_facts_problems,
    driver_supported,
    resolve_device,
)

PINNED_ARCHS = torch._C._cuda_getArchFlags().split()  # sm_75 ... sm_120 for 2.14.1+cu130


@pytest.fixture
def fake_cuda(monkeypatch) -> list[tuple[float, int]]:
    """A process that sees one CUDA device (index 0), as a Ray GPU worker does; returns the
    (fraction, device index) pairs the allocator was given."""
    fractions: list[tuple[float, int]] = []
    monkeypatch.setattr(torch.cuda, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch.cuda.memory, "_lazy_init", lambda: None)
    monkeypatch.setattr(torch._C, "_cuda_getDevice", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", lambda: 1)
    monkeypatch.setattr(torch._C, "_cuda_setMemoryFraction",
                        lambda fraction, index: fractions.append((fraction, index)))
    return fractions


# Resolving the device -------------------------------------------------------------------------

def test_a_granted_gpu_resolves_with_its_index_and_the_cap_passes_torch_checks(fake_cuda):
    device = resolve_device("auto", 0.25)
    assert device == torch.device("cuda", 0)
    cap_gpu_memory(device, 0.25)
    assert fake_cuda == [(0.25, 0)]


def test_torch_refuses_the_bare_cuda_device_the_cap_used_to_get(fake_cuda):
    # What every shared-GPU trial hit before the device carried its index.
    with pytest.raises(ValueError, match="Expected a torch.device with a specified index"):
        cap_gpu_memory(torch.device("cuda"), 0.25)
    assert fake_cuda == []


@pytest.mark.parametrize("share", [None, 1, 2])
def test_a_whole_gpu_or_no_ray_is_not_capped(fake_cuda, share):
    cap_gpu_memory(resolve_device("cuda", share), share)
    assert fake_cuda == []


def test_train_resolves_and_caps_before_it_touches_the_gpu(fake_cuda, tmp_path, monkeypatch):
    """The trial's own path: train() resolves cuda:0 and caps it at the trial's share less the
    CUDA context the pre-flight measured; the first real CUDA call after that (here: none can
    run) is what stops it."""
    reached = []
    monkeypatch.setattr("carsweep.trainable.run.pick_precision",
                        lambda choice, device: reached.append(device) or "fp32")
    data = make_tiny_dataset(tmp_path / "data")
    config = TrialConfig(epochs=1, batch_size=4, resize=32, num_workers=0, data_cache="off",
                         weights="none", device="auto")
    total = 40 * 1024**3
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": total})())
    with pytest.raises(RuntimeError):
        train(config, data, reporter=None, gpu_share=0.5, gpu_context_bytes=total // 10)
    assert reached == [torch.device("cuda", 0)]
    assert fake_cuda == [(pytest.approx(0.4), 0)]  # its share, less the measured context


def test_no_ray_and_no_cuda_means_the_cpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu", 0.5) == torch.device("cpu")  # a logical GPU, cpu on purpose
    assert resolve_device("auto", 0) == torch.device("cpu")  # Ray granted no GPU


def test_a_granted_gpu_that_torch_cannot_use_is_one_line_never_the_cpu():
    with pytest.raises(UserError) as raised:
        resolve_device("auto", 0.5)
    message = str(raised.value)
    assert "\n" not in message
    assert re.fullmatch(
        r"Ray gave this run 0\.5 GPU, but torch \S+ on \S+ cannot use CUDA: [^;]+; it would "
        r"train on the CPU, so it stops \(check the node's NVIDIA driver and torch build, or "
        r"set device: cpu on purpose\)", message)
    assert "Found no NVIDIA driver on your system" in message  # torch's own cause, here


def test_cuda_with_no_gpu_granted_is_refused():
    with pytest.raises(UserError, match=r"`device` is 'cuda', but this run was given no GPU"):
        resolve_device("cuda", 0)


def test_a_cpu_only_torch_is_named(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(UserError, match="cannot use CUDA: it is a CPU-only build of torch"):
        resolve_device("auto", 1)


# What a build supports ------------------------------------------------------------------------

CU126 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


@pytest.mark.parametrize(("gpu", "capability", "pinned", "cu126"), [
    ("P100", (6, 0), False, True),
    ("V100", (7, 0), False, True),
    ("T4", (7, 5), True, True),
    ("A100", (8, 0), True, True),
    ("A10", (8, 6), True, True),
    ("L4", (8, 9), True, True),      # sm_86's cubins: same major, a lower minor
    ("H100", (9, 0), True, True),
    ("B200", (10, 0), True, False),
    ("B300", (10, 3), True, False),  # sm_100's cubins
    ("RTX 5090", (12, 0), True, False),
])
def test_which_gpus_a_build_runs_on(gpu, capability, pinned, cu126):
    assert PINNED_ARCHS == ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert arch_supported(capability, PINNED_ARCHS) is pinned
    assert arch_supported(capability, CU126) is cu126


def test_ptx_runs_on_newer_gpus_and_arch_specific_cubins_only_on_their_own():
    assert arch_supported((10, 0), ["sm_90", "compute_90"])
    assert not arch_supported((8, 6), ["compute_90"])
    assert arch_supported((9, 0), ["sm_90a"])
    assert not arch_supported((10, 0), ["sm_90a"])
    assert not arch_supported((9, 0), ["sm_100", "sm_120"])  # a lower major never runs


@pytest.mark.parametrize(("driver", "build", "runs"), [
    ((12, 2), (13, 0), False), ((13, 0), (13, 0), True), ((12, 0), (12, 8), True),
    ((13, 1), (12, 6), True), ((11, 8), (12, 6), False),
])
def test_which_drivers_a_build_runs_on(driver, build, runs):
    assert driver_supported(driver, build) is runs


def facts(**changed) -> CudaFacts:
    base = {"host": "gpu-3", "torch_version": "2.14.1+cu130", "build_cuda": "13.0",
            "arch_flags": tuple(PINNED_ARCHS), "driver_cuda": (13, 0), "problem": None,
            "gpu_name": "NVIDIA H100 80GB HBM3", "capability": (9, 0)}
    return CudaFacts(**(base | changed))


def test_a_working_node_has_no_problem():
    assert cuda_facts_problems(facts()) == []


@pytest.mark.parametrize(("changed", "line"), [
    ({"gpu_name": "Tesla V100-SXM2-16GB", "capability": (7, 0)},
     "its GPU Tesla V100-SXM2-16GB (sm_70) is not supported by torch 2.14.1+cu130, whose "
     "kernels are for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120 (docs/cluster.md, GPU support)"),
    ({"driver_cuda": (12, 2), "problem": "The NVIDIA driver on your system is too old "
      "(found version 12020)", "gpu_name": None, "capability": None},
     "its NVIDIA driver supports CUDA 12.2, but torch 2.14.1+cu130 is built for CUDA 13.0 "
     "and needs a driver >= 580.65.06"),
    ({"driver_cuda": None, "problem": "Found no NVIDIA driver on your system",
      "gpu_name": None, "capability": None},
     "Ray offers GPUs there, but torch 2.14.1+cu130 cannot use CUDA: Found no NVIDIA driver "
     "on your system; trials would train on the CPU (check its NVIDIA driver, or set device: "
     "cpu on purpose)"),
    ({"build_cuda": None, "arch_flags": (), "torch_version": "2.14.1+cpu"},
     "torch 2.14.1+cpu is a CPU-only build, so trials would train on the CPU; install a CUDA "
     "build of torch there (docs/cluster.md, GPU support)"),
])
def test_each_problem_is_one_line_naming_its_cause(changed, line):
    assert cuda_facts_problems(facts(**changed)) == [line]


def test_this_machines_facts_say_why_cuda_is_not_usable():
    here = cuda_facts()
    assert here.build_cuda == torch.version.cuda
    assert here.gpu_name is None
    assert here.capability is None
    assert here.problem == "Found no NVIDIA driver on your system"
    (line,) = cuda_facts_problems(here)
    assert "cannot use CUDA: Found no NVIDIA driver on your system" in line


def test_the_facts_of_a_faked_gpu_come_from_torch(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: f"GPU {index}")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (8, 9))
    monkeypatch.setattr(device_module, "driver_cuda_version", lambda: (13, 0))
    here = cuda_facts()
    assert (here.gpu_name, here.capability, here.problem) == ("GPU 0", (8, 9), None)
    assert cuda_facts_problems(here) == []


def test_a_cuda_error_while_reading_the_gpu_is_a_cause_not_a_traceback(fake_cuda, monkeypatch):
    def broken(index):
        raise RuntimeError("CUDA error: unspecified launch failure\nCUDA kernel errors might be "
                           "asynchronously reported at some other API call")

    monkeypatch.setattr(torch.cuda, "get_device_name", broken)
    here = cuda_facts()
    assert here.problem == "CUDA error: unspecified launch failure"
    (line,) = cuda_facts_problems(here)
    assert "cannot use CUDA: CUDA error: unspecified launch failure; trials would" in line


def test_the_cap_leaves_the_measured_context_out_of_the_share(fake_cuda, monkeypatch):
    total = 80 * 1024**3
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": total})())
    fraction = cap_gpu_memory(resolve_device("auto", 0.25), 0.25, context_bytes=total // 100)
    assert fraction == pytest.approx(0.24)
    assert fake_cuda == [(pytest.approx(0.24), 0)]


def test_a_share_smaller_than_the_context_is_one_line(fake_cuda, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": 4 * 1024**3})())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    with pytest.raises(UserError, match=r"a 0.1 share of Tesla T4 \(4.0 GiB\) leaves nothing "
                                        r"beside the CUDA context \(0.50 GiB\)"):
        cap_gpu_memory(resolve_device("auto", 0.1), 0.1, context_bytes=512 * 1024**2)
    assert fake_cuda == []
