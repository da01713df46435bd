"""Trial slots per node and what the trials at once leave TPE to learn
(search/preflight/capacity.py), over the clusters the docs and the issue name; no Ray."""

from __future__ import annotations

import pytest

from carsweep.config.sweep import Resources, SweepConfig
from carsweep.search.preflight import Report
from carsweep.search.preflight.capacity import (
    check_capacity,
    filling_resources,
    informed_suggestions,
    node_slots,
    trial_cpus,
)


@pytest.mark.parametrize(("cpus", "gpus", "resources", "by_gpu", "by_cpu", "idle", "fill"), [
    # p4d / a2-highgpu-8g: 96 vCPUs, 8 GPUs; the old Cars request left 2 GPUs idle
    (96, 8, {"cpu": 4, "gpu": 0.25}, 32, 24, 2, "{cpu: 3, gpu: 0.25}"),
    (96, 8, {"cpu": 1, "gpu": 0.25}, 32, 96, 0, "{cpu: 3, gpu: 0.25}"),
    # docs/cluster.md's SLURM job: 32 CPUs and 4 GPUs
    (32, 4, {"cpu": 4, "gpu": 0.25}, 16, 8, 2, "{cpu: 2, gpu: 0.25}"),
    # whole GPUs, and two GPUs per trial
    (48, 8, {"cpu": 8, "gpu": 1}, 8, 6, 2, "{cpu: 6, gpu: 1}"),
    (96, 8, {"cpu": 4, "gpu": 2}, 4, 24, 0, "{cpu: 24, gpu: 2}"),
    # fewer CPUs than GPU slots: fewer trials per GPU keep every GPU busy
    (16, 8, {"cpu": 1, "gpu": 0.25}, 32, 16, 4, "{cpu: 1, gpu: 0.5}"),
])
def test_slots_by_cpu_and_by_gpu(cpus, gpus, resources, by_gpu, by_cpu, idle, fill):
    node = node_slots(cpus, gpus, Resources(**resources))
    assert (node.by_gpu, node.by_cpu, node.idle_gpus) == (by_gpu, by_cpu, idle)
    assert node.slots == min(by_gpu, by_cpu)
    assert filling_resources(node, Resources(**resources), need=1) == fill


def test_cpu_trials_have_slots_by_cpu_only():
    node = node_slots(16, 0, Resources(cpu=2, gpu=0))
    assert (node.slots, node.by_gpu, node.idle_gpus) == (8, None, 0)


def test_informed_suggestions():
    # trial k starts once k - C + 1 have ended; TPE uses results once S have ended
    assert informed_suggestions(128, at_once=32, startup=8) == 89
    assert informed_suggestions(64, at_once=128, startup=16) == 0  # the old Cars sweep
    assert informed_suggestions(10, at_once=1, startup=1) == 9  # one at a time: all but one
    assert informed_suggestions(10, at_once=2, startup=4) == 5


def sweep(**changes) -> SweepConfig:
    base = {"dataset": "/data", "num_samples": 64,
            "resources": {"cpu": 4, "gpu": 0.25},
            "searcher": {"n_startup_trials": 16},
            "space": {"lr": {"loguniform": [1e-4, 1e-1]}, "num_workers": 4}}
    return SweepConfig.model_validate(base | changes)


def lines_for(config: SweepConfig, nodes) -> Report:
    report = Report()
    check_capacity(config, report, nodes)
    return report


EIGHT_GPU_NODES = [(f"10.0.0.{i}/abcdef0{i}", 96.0, 8.0) for i in range(1, 5)]
HEAD = ("10.0.0.9/00000000", 16.0, 0.0)


def test_the_old_cars_sweep_on_four_8_gpu_nodes():
    report = lines_for(sweep(), [HEAD, *EIGHT_GPU_NODES])
    assert report.warnings == [
        "slots: 4 nodes like 10.0.0.1/abcdef01 (8 GPU, 96 CPU): 24 trials at once (32 by GPU, "
        "4 per GPU, 24 by CPU (4 each)), so 2 of 8 GPUs sit idle; resources "
        "{cpu: 3, gpu: 0.25} fill them",
        "concurrency: 64 trials at once (96 slots on the cluster): all 64 trials start before "
        "any result, so TPE learns nothing and this is random search; raise num_samples to "
        ">= 222, or lower max_concurrent_trials to 17 (leaves slots idle)",
    ]
    assert report.failures == []


def test_the_shipped_sizing_fills_one_8_gpu_node_and_mostly_learns():
    config = sweep(num_samples=128, max_concurrent_trials=32, resources={"cpu": 1, "gpu": 0.25},
                   searcher={"n_startup_trials": 8},
                   space={"lr": {"loguniform": [1e-4, 1e-1]}, "data_cache": "on"})
    report = lines_for(config, [(HEAD[0], 8.0, 0.0), EIGHT_GPU_NODES[0]])
    assert report.warnings == []
    assert report.lines == [
        "  ok    slots: node 10.0.0.1/abcdef01 (8 GPU, 96 CPU): 32 trials at once (32 by GPU, "
        "4 per GPU, 96 by CPU (1 each))",
        "  ok    concurrency: 32 trials at once (32 slots on the cluster, max_concurrent_trials "
        "32): 89 of 128 suggestions see results (the first 32 start before any result, and "
        "TPE draws at random until 8 have ended)",
    ]
    # The same config on four such nodes: the cap that keeps TPE learning leaves slots idle.
    (idle,) = lines_for(config, EIGHT_GPU_NODES).warnings
    assert idle == ("concurrency: max_concurrent_trials 32 leaves 96 of the cluster's 128 "
                    "slots idle; raise it with num_samples (below) to use them")


@pytest.mark.parametrize("nodes", [
    [EIGHT_GPU_NODES[0]],                                         # one 96-vCPU 8-GPU node
    [("10.0.1.1/11111111", 32.0, 4.0), ("10.0.1.2/22222222", 32.0, 4.0)],  # docs' SLURM job
])
def test_the_shipped_cars_sweep_fills_the_gpus_it_is_sized_for(nodes):
    from carsweep.config.sweep import load_sweep

    cars = load_sweep("configs/stanford-cars.yaml").model_copy(update={"dataset": "/data"})
    assert cars.resources.cpu >= trial_cpus(cars) == 1
    report = lines_for(cars, [HEAD, *nodes])
    assert report.warnings == []
    assert report.lines[-1].startswith("  ok    concurrency: 32 trials at once (32 slots on "
                                       "the cluster, max_concurrent_trials 32): 89 of 128 ")


def test_make_demos_sweep_on_two_cores_is_not_warned():
    from carsweep.config.sweep import load_sweep

    demo = load_sweep("configs/demo.yaml").model_copy(update={"dataset": "/data"})
    report = lines_for(demo, [("127.0.0.1/aaaa", 2.0, 0.0)])  # the local Ray of `make demo`
    assert report.warnings == []
    assert "4 of 8 suggestions see results" in report.lines[-1]


def test_few_informed_suggestions_say_what_to_set():
    config = sweep(num_samples=40, resources={"cpu": 1, "gpu": 0},
                   searcher={"n_startup_trials": 10})
    (line,) = lines_for(config, [("127.0.0.1/aaaa", 16.0, 0.0)]).warnings
    assert line == ("concurrency: 16 trials at once (16 slots on the cluster): only 15 of 40 "
                    "suggestions see a result (the first 16 start before any result, and TPE "
                    "draws at random until 10 have ended); raise num_samples to >= 50, or lower "
                    "max_concurrent_trials to 11 (leaves slots idle)")


def test_a_sweep_all_of_whose_trials_are_tpes_startup_is_not_warned():
    config = sweep(num_samples=2, resources={"cpu": 1, "gpu": 0}, searcher={"n_startup_trials": 2})
    report = lines_for(config, [("127.0.0.1/aaaa", 2.0, 0.0)])
    assert report.warnings == []
    assert report.lines[-1] == ("  ok    concurrency: 2 trials at once (2 slots on the "
                                "cluster); all 2 trials are TPE's random start "
                                "(n_startup_trials 2)")


def test_random_search_states_no_learning_problem():
    config = sweep(resources={"cpu": 1, "gpu": 0}, searcher={"algorithm": "random"})
    report = lines_for(config, [("127.0.0.1/aaaa", 2.0, 0.0)])
    assert report.lines[-1] == ("  ok    concurrency: 2 trials at once (2 slots on the "
                                "cluster); 64 trials of random search")


@pytest.mark.parametrize(("space", "cpus"), [
    ({"data_cache": "on"}, 1),                                   # cached, augmented on the GPU
    ({"data_cache": "off", "num_workers": 4}, 5),                # decodes JPEGs in workers
    ({"augment_on": "cpu", "num_workers": {"choice": [2, 6]}}, 7),  # CPU-side presets
])
def test_what_a_gpu_trial_uses(space, cpus):
    config = SweepConfig.model_validate({"resources": {"cpu": 1, "gpu": 0.25}, "space": space})
    assert trial_cpus(config) == cpus


def test_a_cpu_request_below_what_trials_use_is_warned():
    config = sweep(resources={"cpu": 1, "gpu": 0.5},
                   space={"lr": 0.01, "data_cache": "off", "num_workers": 3})
    report = lines_for(config, [("127.0.0.1/aaaa", 8.0, 2.0)])
    assert report.warnings[0] == (
        "slots: a trial of this space uses 4 CPUs (its process and 3 loader workers), but "
        "resources.cpu is 1: trials on a node will slow each other; set resources.cpu: 4")


def test_tpe_under_pasha_is_warned_to_be_random_search():
    """A trial PASHA pauses is RUNNING in the study: TPE never leaves its random start-up."""
    config = sweep(num_samples=40, resources={"cpu": 1, "gpu": 0}, scheduler="pasha",
                   searcher={"n_startup_trials": 4}, space={"epochs": 9})
    (line,) = lines_for(config, [("127.0.0.1/aaaa", 4.0, 0.0)]).warnings
    assert line == ("concurrency: 4 trials at once (4 slots on the cluster): under pasha a trial "
                    "ends only at max_t (9 epochs; the others pause until the sweep ends), so "
                    "TPE draws at random until 4 trials have reached it, which few do; set "
                    "searcher.algorithm: random to say so, or use scheduler asha for TPE to "
                    "steer (docs/schedulers.md)")
    random = config.model_copy(update={"searcher": config.searcher.model_copy(
        update={"algorithm": "random"})})
    assert lines_for(random, [("127.0.0.1/aaaa", 4.0, 0.0)]).warnings == []
