"""Time one callable: warm-up, then p20/p50/p80 of its run time.

* CPU: ``torch.utils.benchmark.Timer.blocked_autorange`` (it picks a block size that keeps
  the timer's own overhead negligible and sets the thread count), run again for the missing
  blocks until at least ``min_samples`` exist, so slow calls still get real percentiles.
* CUDA: ``triton.testing.do_bench`` (L2 flushed between calls, CUDA events) when Triton
  imports, else (or with ``flush=False``) CUDA events around each call.

Percentiles are linear-interpolated over the per-call samples (one sample per block on CPU:
a block's mean per-call time).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

QUANTILES = (0.2, 0.5, 0.8)


@dataclass(frozen=True)
class Timing:
    """Run time percentiles of one callable, in seconds."""

    p20: float
    p50: float
    p80: float
    samples: int
    method: str

    def ms(self) -> Dict[str, float]:
        return {"p20_ms": self.p20 * 1e3, "p50_ms": self.p50 * 1e3, "p80_ms": self.p80 * 1e3}


def percentiles(samples: Sequence[float], qs: Sequence[float] = QUANTILES) -> tuple:
    """Linear-interpolated quantiles (numpy's default method) of ``samples``."""
    xs = sorted(float(s) for s in samples)
    if not xs:
        raise ValueError("percentiles of an empty sample")
    out = []
    for q in qs:
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"quantile must lie in [0, 1], got {q}")
        pos = q * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        out.append(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo))
    return tuple(out)


@contextlib.contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Set ``torch.set_num_threads(n)`` inside the block (``None``: leave it)."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _check_args(warmup: int, min_run_time: float, min_samples: int) -> None:
    if int(warmup) < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not min_run_time > 0:
        raise ValueError(f"min_run_time must be > 0 seconds, got {min_run_time}")
    if int(min_samples) < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")


def _time_cpu(fn, warmup, min_run_time, min_samples, threads) -> Timing:
    from torch.utils.benchmark import Timer

    num_threads = int(threads) if threads is not None else torch.get_num_threads()
    with torch_threads(num_threads):
        for _ in range(warmup):
            fn()
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=num_threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    samples = list(m.times)
    while len(samples) < min_samples:
        # slow calls give few blocks in min_run_time: run just long enough for the missing ones
        block_time = max(m.mean * m.number_per_run, 1e-6)
        m = timer.blocked_autorange(min_run_time=(min_samples - len(samples)) * block_time * 1.05)
        samples.extend(m.times)
    p20, p50, p80 = percentiles(samples)
    return Timing(p20, p50, p80, len(samples), "torch.utils.benchmark")


def _time_cuda_events(fn, warmup, min_run_time, min_samples) -> Timing:
    for _ in range(max(warmup, 1)):
        fn()
    torch.cuda.synchronize()
    times = []
    spent = 0.0
    while len(times) < min_samples or spent < min_run_time:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        t = start.elapsed_time(end) / 1e3
        times.append(t)
        spent += t
    p20, p50, p80 = percentiles(times)
    return Timing(p20, p50, p80, len(times), "cuda events")


def _time_cuda(fn, warmup, min_run_time, min_samples, warmup_ms, grad_to_none) -> Timing:
    try:
        from triton.testing import do_bench
    except ImportError:
        return _time_cuda_events(fn, warmup, min_run_time, min_samples)
    for _ in range(warmup):  # call-count warm-up (autotuning, compilation) before do_bench's own
        fn()
    rep_ms = max(1, int(round(min_run_time * 1e3)))
    times_ms = list(do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, return_mode="all"))
    if len(times_ms) < min_samples:
        return _time_cuda_events(fn, 0, min_run_time, min_samples)
    p20, p50, p80 = percentiles([t / 1e3 for t in times_ms])
    return Timing(p20, p50, p80, len(times_ms), "triton.testing.do_bench")


def time_callable(
    fn: Callable[[], object],
    *,
    device: torch.device | str = "cpu",
    warmup: int = 2,
    min_run_time: float = 0.1,
    min_samples: int = 5,
    threads: Optional[int] = None,
    grad_to_none: Optional[Sequence[torch.Tensor]] = None,
    flush: bool = True,
    warmup_ms: float = 25.0,
) -> Timing:
    """Time ``fn()`` (no arguments; build a closure over its inputs).

    ``warmup`` calls run first and are not timed (lazy initialisation, compilation). Then
    samples are taken for at least ``min_run_time`` seconds and at least ``min_samples``
    samples. ``threads`` sets torch's intra-op threads on CPU (``None``: as it is).
    ``device`` picks the clock: CUDA events for a CUDA device, wall clock otherwise.
    ``grad_to_none``: tensors whose ``.grad`` is reset before every call (a backward that
    would otherwise accumulate). On CUDA, ``flush`` clears the L2 cache before each call
    (``do_bench``; ``False``: plain CUDA events, warm cache) and ``warmup_ms`` is
    ``do_bench``'s own time-based warm-up.
    """
    _check_args(warmup, min_run_time, min_samples)
    device = torch.device(device)
    if grad_to_none and not (device.type == "cuda" and flush):
        call = fn

        def fn():
            for t in grad_to_none:
                t.grad = None
            return call()

    if device.type == "cuda":
        if not flush:
            return _time_cuda_events(fn, int(warmup), float(min_run_time), int(min_samples))
        return _time_cuda(fn, int(warmup), float(min_run_time), int(min_samples), warmup_ms, grad_to_none)
    return _time_cpu(fn, int(warmup), float(min_run_time), int(min_samples), threads)


def time_interleaved(
    fns: Dict[str, Callable[[], object]],
    *,
    rounds: int = 5,
    calls: int = 2,
    warmup: int = 1,
    threads: Optional[int] = None,
    settle: float = 0.0,
    min_block_time: float = 0.0,
) -> Dict[str, Timing]:
    """Time several callables side by side on a CPU.

    After ``warmup`` untimed calls of each, ``rounds`` rounds each take ``calls`` samples of
    every callable in turn: a slow drift of the machine (another job, frequency, memory)
    spreads over all of them instead of favouring whichever ran first.

    ``settle`` (seconds, untimed) is slept each time the next callable takes over, so the idle
    threads of the previous one (OpenMP's spin-wait after a torch or extension call, ONNX
    Runtime's spinning workers) have gone to sleep before it starts and do not slow it.
    ``min_block_time`` > 0 makes each sample the mean of as many back-to-back calls as take at
    least that long (the count fixed per callable from its warm-up, at least 1): for calls of
    microseconds to milliseconds, where the clock's own cost would show; 0 (the default): one
    call per sample, for calls of milliseconds or more (a model forward).
    """
    _check_args(warmup, 1.0, rounds)
    if int(calls) < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    if not settle >= 0:
        raise ValueError(f"settle must be >= 0 seconds, got {settle}")
    if not min_block_time >= 0:
        raise ValueError(f"min_block_time must be >= 0 seconds, got {min_block_time}")
    import time

    samples: Dict[str, list] = {k: [] for k in fns}
    number: Dict[str, int] = dict.fromkeys(fns, 1)
    with torch_threads(threads):
        for key, fn in fns.items():
            if settle:
                time.sleep(settle)
            for _ in range(max(int(warmup), 1 if min_block_time else 0)):
                t0 = time.perf_counter()
                fn()
                per_call = time.perf_counter() - t0  # the last warm-up call: past any compilation
            if min_block_time:
                number[key] = max(1, math.ceil(min_block_time / max(per_call, 1e-9)))
        for _ in range(int(rounds)):
            for key, fn in fns.items():
                if settle:
                    time.sleep(settle)
                n = number[key]
                for _ in range(int(calls)):
                    t0 = time.perf_counter()
                    for _ in range(n):
                        fn()
                    samples[key].append((time.perf_counter() - t0) / n)
    how = f"interleaved wall clock, {rounds} rounds" + (f", settle {settle * 1e3:g} ms" if settle else "")
    return {
        k: Timing(
            *percentiles(v),
            samples=len(v),
            method=how + (f", {number[k]} calls a sample" if number[k] > 1 else ""),
        )
        for k, v in samples.items()
    }


def device_name(device: torch.device | str) -> str:
    """A human name for the device the timings ran on (CPU model, or the GPU's name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cores)"


def environment(device: torch.device | str, threads: Optional[int] = None) -> Dict[str, str]:
    """The machine line recorded with every row: device, threads, versions (torch, triton, the
    CUDA torch was built with), timestamp."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {
        "device": device_name(device),
        "threads": str(threads if threads is not None else torch.get_num_threads()),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
