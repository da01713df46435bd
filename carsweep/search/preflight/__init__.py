"""The pre-flight: everything that would make a sweep fail late, found before it launches, in
one place.

`carsweep sweep --check` prints the whole report and launches nothing; every real launch runs
the same checks first and stops at the first failure. The checks, in order:

    config      schema, space, augmentation names, the dataset is a prepared one (driver side)
    scheduler   asha and pasha: grace period <= max_t, reduction factor > 1, the rungs that
                gives and how many trials are expected to reach each (printed; pasha's
                starting maximum); median: its grace period <= max_t, the epoch it starts
                comparing from; fifo: that nothing stops
    schedules   warnings (not failures) where trials reach an ASHA rung at different points
                of their learning-rate schedule, so the rung compares schedules, not settings
    resources   one trial's request fits on some node
    slots       per kind of node, trials at once by CPU and by GPU, and the GPUs a CPU request
                leaves idle (warned, with the resources that fill them); the trials at once
                against num_samples and TPE's startup: how many suggestions see a result
                (capacity.py)
    gpu         on every GPU node at once, in a process holding a trial's GPU share: torch
                there can use CUDA, its kernels cover the GPU, the driver is new enough; a
                node that would train on its CPU fails (device: cpu is a warning instead)
    dry step    carsweep.trainable.train for one epoch on a few images at a small size
                really reports the sweep's metric (and ASHA's time attribute, epoch)
    nodes       the storage path is shared with the driver (a token written by the driver is
                read by every alive node, which writes its own back for the driver to read)
                and every node's dataset is the driver's (the manifest's digest)
    caches      per node that can run a trial and per resize: the decoded cache is there, or
                the disk has room to build it (caches.py); a cache folder on
                shared storage is a warning (warn lines never stop a sweep)
    real step   when everything above passed, per GPU type (Ray's accelerator_type) and per
                memory-worst trial of the space (each model x augmentation at the largest
                batch size and input size, the optimizer with the most state): one epoch of
                the trial's own loop over two batches of random images and an evaluation
                batch, on a whole GPU, capped as a trial is; it must not raise, and the
                allocator's peak plus the CUDA context must fit the trial's share. The largest
                context measured is what every trial's memory cap leaves out

Every failure is one line naming the node, path or value. A warning is one line too, saying
what to do; `--check` prints it as `warn`, a real launch prints it once and goes on.

The modules, in the order the checks run: config_checks (config, space, dataset, storage,
weights, asha, schedules: no Ray), capacity (resources, slots), gpus (gpu, real step),
dry_step, nodes (storage and dataset on every node), caches (and building them before the
trials start); report.Report is what they fill; run.py runs them in order and prints the
report. Nothing here imports the tuner: search/tuner.py calls `check_before_launch`.

The names below are imported on first use (PEP 562): a Ray worker that unpickles a probe task
imports its module, and through this file it would otherwise import every check.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_WHERE = {
    "Launch": "carsweep.search.preflight.run",
    "Report": "carsweep.search.preflight.report",
    "check_before_launch": "carsweep.search.preflight.run",
    "preflight": "carsweep.search.preflight.run",
    "print_report": "carsweep.search.preflight.run",
}
__all__ = ["Launch", "Report", "check_before_launch", "preflight", "print_report"]

if TYPE_CHECKING:
    from carsweep.search.preflight.report import Report
    from carsweep.search.preflight.run import Launch, check_before_launch, preflight, print_report


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
