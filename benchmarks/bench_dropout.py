"""torch.dropout against spd_kernels' CPU dropout, interleaved in one process (A, B, A, B, ...).

    python benchmarks/bench_dropout.py --threads 1 --samples 15
    python benchmarks/bench_dropout.py --threads 2 --samples 31

Prints, per shape and dtype, the median (p20, p80) milliseconds of forward and of forward +
backward for both, and the speedup torch / spd.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spd_kernels.dropout import dropout as spd_dropout


def _time(fn, reps):
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def _q(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--samples", type=int, default=15, help="interleaved samples per variant (>= 9)")
    ap.add_argument("--reps", type=int, default=5, help="calls per sample")
    ap.add_argument("--p", type=float, default=0.1)
    ap.add_argument("--dtypes", default="float32", help="comma-separated: float32,bfloat16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), p={args.p}")
    for dt in args.dtypes.split(","):
        dtype = getattr(torch, dt)
        for shape in ((32, 64, 384), (32, 64, 1536)):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)
            dy = torch.randn(shape, dtype=dtype)
            variants = {
                "torch fwd": lambda: torch.dropout(x.detach(), args.p, True),
                "spd fwd": lambda: spd_dropout(x.detach(), args.p),
                "torch fwd+bwd": lambda: torch.dropout(x, args.p, True).backward(dy),
                "spd fwd+bwd": lambda: spd_dropout(x, args.p).backward(dy),
            }
            for f in variants.values():  # warm up
                f()
            samples = {k: [] for k in variants}
            for _ in range(args.samples):
                for k, f in variants.items():
                    samples[k].append(_time(f, args.reps))
            med = {k: statistics.median(v) for k, v in samples.items()}
            for k, v in samples.items():
                tag = f"{dt:8s} {str(shape):15s} {k:14s}"
                print(f"{tag} {med[k]:8.3f} ms  (p20 {_q(v, 0.2):.3f}, p80 {_q(v, 0.8):.3f})")
            for what in ("fwd", "fwd+bwd"):
                ratio = med["torch " + what] / med["spd " + what]
                print(f"{dt:8s} {str(shape):15s} speedup {what:8s} {ratio:.2f}x")


if __name__ == "__main__":
    main()
