"""Timing helpers shared by the layer/model benchmarks: medians with p20/p80, the machine
line, and long-format CSV rows."""

from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

RESULTS = Path(__file__).resolve().parent / "results"
CSV_FIELDS = (
    "op", "backend", "shape", "sparsity", "block", "dtype", "metric", "p50", "p20", "p80",
    "device", "versions", "timestamp",
)  # fmt: skip


def measure(fn: Callable[[], object], warmup: int = 2, reps: int = 10) -> Dict[str, float]:
    """Seconds per call of ``fn``: ``{"p50", "p20", "p80"}`` over ``reps`` timed calls."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"p50": statistics.median(times), "p20": q[1], "p80": q[7]}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    import spd_kernels

    py = platform.python_version()
    return f"torch {torch.__version__}, spd_kernels {spd_kernels.__version__}, python {py}"


def machine_line() -> str:
    return (
        f"{cpu_name()} ({os.cpu_count()} cores visible), torch threads {torch.get_num_threads()}; "
        f"{versions()}"
    )


def timestamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    os.replace(tmp, path)
