"""A node's mirror of a dataset in a bucket: how long fetching Cars' train+val takes (8,144
JPEGs, about 0.83 GB) from an S3 endpoint on loopback, and the server's memory beside it.

Against moto's S3 server on 127.0.0.1 (tests/bucket_server.py). The whole source is uploaded
(train, val and test, as a bucket holds it), then the prepared dataset with its `root` at the
source's URI; the mirror is carsweep's own (carsweep/data/mirror.py: 16 GETs in flight, every
file checked against the manifest's sha1), into a fresh cache folder, as a sweep's node task
runs it. Then the same mirror again (every file recorded: nothing fetched, nothing read), and
once more with half the files and the record deleted (a mirror cut short: the other half is
found by hashing it, the deleted half fetched). The server's resident memory (VmRSS, and its
peak VmHWM) is read from /proc after the upload and after the mirror.

    .venv/bin/python bench/bucket_mirror.py [--prepared /tmp/cars-full/prepared]
    .venv/bin/python bench/bucket_mirror.py --small     # a 4-class synthetic dataset

Cars-shaped data: `carsweep synth --preset cars --out /tmp/cars-full/source`, then
`carsweep prepare /tmp/cars-full/source --out /tmp/cars-full/prepared`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bucket_io import prepared_dataset  # the same small synthetic dataset as that bench
from machine import describe, load_average

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bucket_server import create_bucket, running_bucket_server  # noqa: E402

BUCKET = "carsweep-bench"
UPLOAD_THREADS = 16


def upload_source_and_dataset(prepared: Path) -> tuple[str, float, int]:
    """Every file of the source, then the prepared dataset rooted at the source's URI; returns
    (the dataset's URI, upload seconds, source bytes)."""
    from carsweep.storage import location

    info = json.loads((prepared / "dataset.json").read_text())
    source_folder = Path(info["root"])
    source = location(f"s3://{BUCKET}/source")
    files = [p for p in source_folder.rglob("*") if p.is_file()]
    started = time.perf_counter()
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda file: (source / file.relative_to(source_folder).as_posix())
                      .write_bytes(file.read_bytes()), files))
    data = location(f"s3://{BUCKET}/data")
    data.upload_tree(prepared)
    (data / "dataset.json").write_text(json.dumps({**info, "root": str(source)}))
    return str(data), time.perf_counter() - started, sum(p.stat().st_size for p in files)


def server_memory(pid: int) -> dict[str, int]:
    """moto_server's resident memory now and at its peak, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


def timed_mirror(dataset, rows) -> tuple[float, str]:
    from carsweep.data.mirror import mirror_lines

    started = time.perf_counter()
    lines = list(mirror_lines(dataset, rows))
    return time.perf_counter() - started, lines[-1]


def cut_short(dataset, rows) -> None:
    """Half the mirrored files and the record gone, as after a mirror killed half-way."""
    from carsweep.data.mirror import VERIFIED_FILE, mirror_folder

    folder = mirror_folder(dataset.root)
    (folder / VERIFIED_FILE).unlink()
    for relative in rows["path"][::2]:
        (folder / relative).unlink()


def measure(prepared: Path, work: Path, pid: int) -> dict:
    from carsweep.data.manifest import load_dataset

    uri, upload_s, source_bytes = upload_source_and_dataset(prepared)
    after_upload = server_memory(pid)
    os.environ["CARSWEEP_CACHE_DIR"] = str(work / "cache")
    dataset = load_dataset(uri)
    rows = dataset.rows("train", "val")
    sizes = dataset.root.files()
    mirror_bytes = sum(sizes[path] for path in rows["path"])
    cold_s, cold_line = timed_mirror(dataset, rows)
    after_mirror = server_memory(pid)
    again_s, again_line = timed_mirror(dataset, rows)
    cut_short(dataset, rows)
    resumed_s, resumed_line = timed_mirror(dataset, rows)
    return {"images": len(rows), "bytes": mirror_bytes, "source_bytes": source_bytes,
            "upload_s": upload_s, "cold_s": cold_s, "again_s": again_s, "resumed_s": resumed_s,
            "cold_line": cold_line, "again_line": again_line, "resumed_line": resumed_line,
            "server_after_upload": after_upload, "server_after_mirror": after_mirror}


def report(result: dict) -> None:
    mb = result["bytes"] / 1e6
    print(f"train+val: {result['images']:,} images, {mb:,.0f} MB (the source in the bucket: "
          f"{result['source_bytes'] / 1e9:.2f} GB, uploaded in {result['upload_s']:.0f} s)")
    print("| mirror | seconds | images/s | MB/s |")
    print("|---|---|---|---|")
    for name, key in (("cold (every image fetched)", "cold_s"),
                      ("again (all recorded)", "again_s"),
                      ("resumed (half deleted, record gone)", "resumed_s")):
        seconds = result[key]
        print(f"| {name} | {seconds:.2f} | {result['images'] / seconds:,.0f} | "
              f"{mb / seconds:,.0f} |")
    for moment in ("after_upload", "after_mirror"):
        memory = result[f"server_{moment}"]
        print(f"moto_server {moment.replace('_', ' ')}: RSS {memory['rss'] / 1e9:.2f} GB, "
              f"peak {memory['peak'] / 1e9:.2f} GB")
    print(f"last lines: {result['cold_line']!r}; {result['resumed_line']!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, default=Path("/tmp/cars-full/prepared"))
    parser.add_argument("--small", action="store_true", help="a 4-class synthetic dataset")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start_load = load_average()
    with tempfile.TemporaryDirectory(prefix="carsweep-bench-mirror-") as temporary:
        work = Path(temporary)
        prepared = prepared_dataset(work) if args.small else args.prepared
        with running_bucket_server(work / "moto_server.log") as server:
            for key, value in server.environment().items():
                os.environ[key] = value
            create_bucket(server, BUCKET)
            result = measure(prepared, work, server.pid)
    report(result)
    print(describe(start_load))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
