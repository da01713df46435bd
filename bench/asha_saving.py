"""ASHA's saving on the demo sweep: epochs actually trained / (trials x max_t), and best metric.

Runs configs/demo.yaml on the same data, same searcher seed, with ASHA and with FIFO (no early
stopping), each with the decoded cache (`data_cache: on`) and without it (`off`: every epoch
decodes the images again), and prints a Markdown table for BENCHMARKS.md: the trials, how many
ASHA stopped, epochs run, epochs ÷ (trials × max_t), best metric, and the sweep's wall time
(Ray start, pre-flight dry step and the trials table included: what a user waits for).

    # the demo's data: the `carsweep synth` and `carsweep prepare` lines of `make demo`, with
    # /tmp/demo-source and /tmp/demo-data for demo/source and demo/data, and `--cache 32`
    .venv/bin/python bench/asha_saving.py --data /tmp/demo-data [--config configs/demo.yaml]
                                          [--variants asha:on fifo:on asha:off fifo:off]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from machine import describe, load_average

from carsweep.config.sweep import load_sweep
from carsweep.results import trials_table
from carsweep.search import run_sweep


def measure(config_path: Path, data: Path, scheduler: str, cache: str, storage: Path) -> dict:
    overrides = [f"dataset={data}", f"storage_path={storage}", f"scheduler={scheduler}",
                 f"space.data_cache='{cache}'",  # quoted: YAML reads a bare on as true
                 f"name=bench-{scheduler}-{cache}"]
    config = load_sweep(config_path, overrides)
    start = time.perf_counter()
    outcome = run_sweep(config, verbose=0)
    seconds = time.perf_counter() - start
    table = trials_table(outcome.experiment)
    budget = len(table) * config.max_t
    return {
        "scheduler": scheduler,
        "cache": cache,
        "trials": len(table),
        "epochs": int(table["epochs_run"].sum()),
        "fraction": table["epochs_run"].sum() / budget,
        "stopped": int(table["stopped_early"].sum()),
        "best": table[f"best_{config.metric}"].max(),
        "seconds": seconds,
        "metric": config.metric,
        "max_t": config.max_t,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="prepared with --cache 64")
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--variants", nargs="+", default=["asha:on", "fifo:on", "asha:off",
                                                         "fifo:off"],
                        help="scheduler:data_cache pairs, run in this order")
    args = parser.parse_args()
    start_load = load_average()
    with tempfile.TemporaryDirectory() as storage:
        rows = []
        for variant in args.variants:
            scheduler, cache = variant.split(":")
            rows.append(measure(args.config, args.data, scheduler, cache, Path(storage)))
            print(f"done {variant}: {rows[-1]['seconds']:.0f} s", flush=True)
    print(f"\n{describe(start_load)}\nconfig {args.config}, data {args.data}, "
          f"max_t {rows[0]['max_t']}\n")
    print(f"| scheduler | decoded cache | trials | stopped early | epochs run "
          f"| ÷ (trials × max_t) | best {rows[0]['metric']} | sweep wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scheduler']} | {r['cache']} | {r['trials']} | {r['stopped']} "
              f"| {r['epochs']} | {r['fraction']:.2f} | {r['best']:.3f} | {r['seconds']:.0f} |")
    by_name = {(r["scheduler"], r["cache"]): r for r in rows}
    for cache in ("on", "off"):
        asha, fifo = by_name.get(("asha", cache)), by_name.get(("fifo", cache))
        if asha and fifo:
            print(f"\ncache {cache}: ASHA trained {asha['epochs'] / fifo['epochs']:.2f}x the "
                  f"epochs of FIFO in {asha['seconds'] / fifo['seconds']:.2f}x the time")


if __name__ == "__main__":
    main()
