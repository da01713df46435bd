"""The machine line every benchmark prints: CPU model, cores, torch version, load average;
and dropping a file from the page cache, for cold reads.

A figure measured on a shared machine means little without the load it ran under, so the
load is read at the start and again at the end of a run (`describe(start_load)`).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name ("AMD EPYC 7B13"), from /proc/cpuinfo where there is one."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def load_average() -> float:
    """The 1-minute load average (NaN where the OS has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def describe(start_load: float | None = None, device: str | None = None) -> str:
    """One line: CPU model, cores, torch version (if imported), the device, load start -> end."""
    parts = [f"{cpu_model()}, {os.cpu_count()} cores"]
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    if device:
        parts.append(device)
    now = load_average()
    load = f"{now:.1f}" if start_load is None else f"{start_load:.1f} at start, {now:.1f} at end"
    parts.append(f"load average {load}")
    return "machine: " + "; ".join(parts)


def evict_from_page_cache(path: Path) -> None:
    """Drop the file's pages from the page cache (this file only), so the next read goes to the
    disk: what every read costs when the file is not in RAM (a cache larger than RAM, a node
    reading its JPEGs for the first time)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
