"""The pre-flight's real step (trainable/real_step.py) runs the trial's own epoch loop, every
preset of the registry included; its failures and memory figures are one line each
(search/preflight/gpus.py); it runs once per GPU type.

On this CPU the step trains for real; its GPU side is driven with only the CUDA driver's own
calls faked (test_device.py's `fake_cuda`), up to the first real CUDA operation.
"""

from __future__ import annotations

import pytest
import torch
from test_device import fake_cuda  # noqa: F401 - the fixture

from carsweep.config.trial import TrialConfig
from carsweep.search.preflight.gpus import (
    _real_step_task,
    one_node_per_type,
    report_step,
)
from carsweep.search.preflight.report import Report
from carsweep.trainable import run as run_module
from carsweep.trainable.augment import AUGMENTATIONS
from carsweep.trainable.cam_occlusion import CamOcclusion
from carsweep.trainable.real_step import StepMeasure, real_step, step_failure

CLASSES = 10


def tiny(**changed) -> TrialConfig:
    return TrialConfig(**({"model": "resnet18", "batch_size": 4, "resize": 32,
                           "optimizer": "adam", "weights": "none", "device": "cpu",
                           "num_workers": 0} | changed))


@pytest.fixture
def epochs_run(monkeypatch) -> list[dict]:
    """What each call of the loop's own train_one_epoch saw (and it still trains)."""
    seen = []
    original = run_module.train_one_epoch

    def spy(model, loader, *args, **kwargs):
        seen.append({"batches": len(loader), "augment": loader.augment,
                     "hook": kwargs["batch_hook"], "mix": kwargs["batch_mix"]})
        return original(model, loader, *args, **kwargs)

    monkeypatch.setattr(run_module, "train_one_epoch", spy)
    return seen


def test_the_real_step_is_one_epoch_of_the_trials_own_loop(epochs_run):
    measured = real_step(tiny(augmentation="flip+cam-occlusion", augment_on="device",
                              cam_occlusion_start_epoch=3), CLASSES, None)
    (epoch,) = epochs_run
    assert epoch["batches"] == 2  # optimizers allocate their state at the first step
    assert epoch["augment"] is not None  # flip's device part, per sample
    # The epoch with every hook on, and every image of both batches occluded.
    assert isinstance(epoch["hook"], CamOcclusion)
    assert epoch["hook"].occluded == 2 * 4
    assert (measured.device, measured.precision, measured.needed_bytes) == ("cpu", "fp32", None)


def test_a_mixing_trial_mixes_in_the_real_step(epochs_run):
    real_step(tiny(augmentation="flip+snapmix", mix_prob=0.5), CLASSES, None)
    assert epochs_run[0]["mix"] is not None


@pytest.mark.parametrize("preset", sorted(set(AUGMENTATIONS) - {"none"}))
def test_every_preset_of_the_registry_runs_in_the_real_step(preset):
    # A preset added to the registry is in this list, and so in the real step, by itself.
    real_step(tiny(augmentation=preset, augment_on="device"), CLASSES, None)


def test_on_a_gpu_the_step_is_capped_to_its_share_less_the_context_it_measures(
        fake_cuda, monkeypatch):  # noqa: F811 - the fixture
    total, context = 80 * 1024**3, 800 * 1024**2
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (total - context, total))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: type("Props", (), {"total_memory": total, "major": 9,
                                                          "minor": 0})())
    with pytest.raises(RuntimeError):  # the first real CUDA operation, which cannot run here
        real_step(tiny(device="auto"), CLASSES, 0.25)
    assert fake_cuda == [(pytest.approx(0.25 - context / total), 0)]


def test_an_out_of_memory_under_the_cap_and_an_exception_are_one_line(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.19 GiB of which 1.2 GiB is free.\nOf the allocated memory ...")

    monkeypatch.setattr(run_module, "train_one_epoch", out_of_memory)
    trial = tiny().model_dump()
    assert _real_step_task._function(trial, CLASSES, 0.25) == (None, (
        "CUDA out of memory under the cap of a 0.25 share of the GPU less its CUDA context "
        "(it tried to allocate 2.00 GiB more); raise resources.gpu or lower batch_size / "
        "resize"))
    assert step_failure(ValueError("bad shape\nmore"), 0.25) == "ValueError: bad shape"

    report = Report()
    failure = _real_step_task._function(trial, CLASSES, 0.25)[1]
    assert not report_step(report, "H100 GPU on node 10.0.0.2/1a2b3c4d", trial, None,
                           failure, 0.25)
    assert report.failures == [
        "real step: H100 GPU on node 10.0.0.2/1a2b3c4d: resnet18 at batch_size=4 x resize=32, "
        "flip, adam: CUDA out of memory under the cap of a 0.25 share of the GPU less its "
        "CUDA context (it tried to allocate 2.00 GiB more); raise resources.gpu or lower "
        "batch_size / resize"]


GIB = 1024**3


def h100(peak_gib: float) -> StepMeasure:
    return StepMeasure(device="cuda:0", gpu_name="NVIDIA H100 80GB HBM3", precision="bf16",
                       seconds=6.0, total_bytes=80 * GIB, peak_bytes=int(peak_gib * GIB),
                       outside_bytes=int(0.5 * GIB), cap_bytes=int(19.5 * GIB))


def test_the_step_must_fit_the_trials_share_with_its_context():
    trial = tiny(batch_size=64, resize=448).model_dump()
    report = Report()
    assert report_step(report, "H100 GPU on node N", trial, h100(12.25), None, 0.25)
    assert not report_step(report, "H100 GPU on node N", trial, h100(19.75), None, 0.25)
    assert report.lines[0] == (
        "  ok    real step: H100 GPU on node N: resnet18 at batch_size=64 x resize=448, flip, "
        "adam, bf16: 12.75 GiB (12.25 allocator peak + 0.50 CUDA context) of the 20.00 GiB "
        "each of 4 trials per GPU gets on NVIDIA H100 80GB HBM3 (80 GiB); 6.0 s")
    assert report.failures == [
        "real step: H100 GPU on node N: resnet18 at batch_size=64 x resize=448, flip, adam: "
        "needs 20.25 GiB on NVIDIA H100 80GB HBM3 (19.75 allocator peak + 0.50 CUDA context), "
        "more than the 20.00 GiB each of 4 trials per GPU gets with resources.gpu = 0.25; "
        "raise resources.gpu or lower batch_size / resize"]


def test_one_real_step_per_gpu_type_and_one_for_gpus_ray_cannot_name():
    def node(name: str, *types: str) -> dict:
        return {"NodeID": name, "Resources": {"GPU": 8.0, **{f"accelerator_type:{t}": 1.0
                                                             for t in types}}}

    nodes = [node("a", "H100"), node("b", "H100"), node("c", "A100"), node("d"), node("e")]
    chosen = one_node_per_type(nodes)
    assert {kind: n["NodeID"] for kind, n in chosen.items()} == {
        "H100": "a", "A100": "c", "unknown": "d"}
