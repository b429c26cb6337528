"""The fused CPU attention kernel against torch SDPA and Hugging Face's eager attention.

For each case (batch, heads, sequence length, head dim, key padding) it builds one fused QKV
projection output ``(B, S, 3·hidden)`` and times, interleaved in one process through the
profiler's harness (``spd_kernels.profiling.time_interleaved``: every implementation in turn,
``--rounds`` × ``--calls`` samples each):

=======================  ==================================================================
impl                     what is timed (input: the QKV output; output: (B, S, hidden))
=======================  ==================================================================
spd_kernels              ``spd_kernels.attention.qkv_attention`` (q, k, v read in place)
dense_eager              ``F.scaled_dot_product_attention`` on the (B, H, S, d) views, as
                         Hugging Face's SDPA attention calls it, + the output transpose
dense_eager_attention    Hugging Face BERT's ``eager_attention_forward`` (matmul, softmax, matmul)
=======================  ==================================================================

Masks are what a BERT model hands its attention: none without padding, else a bool (SDPA) or
additive float (eager) ``(B, 1, 1, S)`` key-padding mask. Every output is checked against the
float64 SDPA before timing (``max_rel_err``). GFLOP/s counts the nominal 4·B·H·S²·d of the
unpadded problem (the kernel skips padded keys, so with padding it is an effective rate).
Writes the profiler's long-format CSV plus ``speedup_vs_sdpa``, ``gflops`` and the case columns.

    python benchmarks/bench_attention_cpu.py                        # default cases, 2 threads
    python benchmarks/bench_attention_cpu.py --threads 1 --out /tmp/a1.csv
    python benchmarks/bench_attention_cpu.py --quick --out /tmp/q.csv   # seconds: smoke test
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from spd_kernels import attention as sa  # noqa: E402
from spd_kernels.profiling import (  # noqa: E402
    add_speedups,
    base_row,
    command_line,
    environment,
    time_interleaved,
    write_csv,
)

# (batch, heads, seq, head_dim, key padding fraction)
CASES = (
    (32, 12, 128, 32, 0.0),
    (32, 12, 128, 32, 0.4),
    (32, 12, 128, 64, 0.0),
    (32, 12, 128, 64, 0.4),
    (1, 12, 128, 32, 0.0),
)
EXTRA = ("speedup_vs_sdpa", "gflops", "batch", "heads", "seq", "head_dim", "key_padding")


def parse_case(text: str):
    """``B,H,S,d,padding`` -> a case tuple."""
    parts = text.split(",")
    if len(parts) != 5:
        raise argparse.ArgumentTypeError(f"a case is B,H,S,d,padding (e.g. 32,12,128,32,0.4), got {text!r}")
    b, h, s, d = (int(p) for p in parts[:4])
    pad = float(parts[4])
    if min(b, h, s, d) < 1 or not 0.0 <= pad < 1.0:
        raise argparse.ArgumentTypeError(f"sizes must be >= 1 and padding in [0, 1), got {text!r}")
    return b, h, s, d, pad


def key_lengths(b: int, s: int, pad: float, seed: int) -> torch.Tensor:
    """Per-sequence lengths with mean padding ``pad``: uniform in [s (1 - 2 pad), s] (right
    padding), the first sequence unpadded."""
    if pad == 0.0:
        return torch.full((b,), s, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    lo = max(1, round(s * (1.0 - 2.0 * pad)))
    n = torch.randint(lo, s + 1, (b,), generator=g)
    n[0] = s
    return n


def implementations(qkv: torch.Tensor, heads: int, keep):
    """name -> callable computing (B, S, hidden) from ``qkv``; ``keep`` (B, S) bool or None."""
    from transformers.models.bert.modeling_bert import eager_attention_forward

    b, s, n3 = qkv.shape
    d = n3 // (3 * heads)
    q, k, v = (t.transpose(1, 2) for t in sa.split_qkv(qkv, heads))  # (B, H, S, d) views
    bool_mask = None if keep is None else keep[:, None, None, :]
    add_mask = None if keep is None else torch.where(bool_mask, 0.0, torch.finfo(torch.float32).min)
    module = torch.nn.Module().eval()

    def sdpa():
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)
        return o.transpose(1, 2).reshape(b, s, heads * d)

    def eager():
        o, _ = eager_attention_forward(module, q, k, v, add_mask, scaling=d**-0.5)
        return o.reshape(b, s, heads * d)

    def ours():
        return sa.qkv_attention(qkv, heads, keep)

    return {"spd_kernels": ours, "dense_eager": sdpa, "dense_eager_attention": eager}


def run_case(case, args, env, command) -> List[dict]:
    b, h, s, d, pad = case
    g = torch.Generator().manual_seed(args.seed)
    qkv = torch.randn(b, s, 3 * h * d, generator=g)
    lengths = key_lengths(b, s, pad, args.seed + 1)
    keep = None if pad == 0.0 else torch.arange(s)[None, :] < lengths[:, None]
    fns = implementations(qkv, h, keep)
    with torch.no_grad():
        qd, kd, vd = (t.double().transpose(1, 2) for t in sa.split_qkv(qkv, h))
        ref = F.scaled_dot_product_attention(
            qd, kd, vd, attn_mask=None if keep is None else keep[:, None, None, :]
        )
        ref = ref.transpose(1, 2).reshape(b, s, h * d)
        errs = {k: ((fn().double() - ref).abs().max() / ref.abs().max()).item() for k, fn in fns.items()}
        timings = time_interleaved(
            fns, rounds=args.rounds, calls=args.calls, warmup=args.warmup, threads=args.threads
        )
    flops = 4.0 * b * h * s * s * d
    shape = f"B{b} H{h} S{s} d{d} pad{pad:g}"
    rows = []
    for impl, t in timings.items():
        row = base_row(
            env, command, op="attention", impl=impl, backend="cpu" if impl == "spd_kernels" else "torch",
            layout="dense", block="", sparsity=0.0, density=1.0, dtype="float32", shape=shape,
            M=b * s, N=h * d, K=s, samples=t.samples, max_rel_err=errs[impl], status="ok",
            note=f"key padding {float(1 - lengths.float().mean() / s):.2f} (mean); {t.method}",
            batch=b, heads=h, seq=s, head_dim=d, key_padding=pad,
        )  # fmt: skip
        row.update(t.ms())
        row["gflops"] = flops / t.p50 / 1e9
        rows.append(row)
    sdpa = timings["dense_eager"].p50
    for r in rows:
        r["speedup_vs_sdpa"] = sdpa / (float(r["p50_ms"]) * 1e-3)
    return rows


def markdown(rows: List[dict]) -> str:
    out = [
        "| case | impl | p50 ms | p20–p80 ms | GFLOP/s | × SDPA | max rel err |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['shape']} | {r['impl']} | {float(r['p50_ms']):.3f} | {float(r['p20_ms']):.3f}–"
            f"{float(r['p80_ms']):.3f} | {r['gflops']:.1f} | {r['speedup_vs_sdpa']:.2f}× | "
            f"{float(r['max_rel_err']):.1e} |"
        )
    return "\n".join(out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Time the fused CPU attention kernel against torch SDPA and Hugging Face's eager "
        "attention, interleaved; write a long-format CSV row per case and implementation and print a "
        "markdown table.",
    )
    p.add_argument("--threads", type=int, default=2, help="torch/OpenMP threads (default 2)")
    p.add_argument(
        "--case",
        action="append",
        type=parse_case,
        metavar="B,H,S,d,PAD",
        help="a case (repeatable); default: " + "; ".join(",".join(f"{x:g}" for x in c) for c in CASES),
    )
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default 10)")
    p.add_argument("--calls", type=int, default=2, help="calls of each implementation per round (default 2)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls of each first (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join(HERE, "results", "attention_cpu.csv"), help="CSV path")
    p.add_argument("--quick", action="store_true", help="smoke test: tiny cases, few samples (seconds)")
    args = p.parse_args(argv)
    args.cases = args.case or list(CASES)
    if args.quick:
        args.cases = [(2, 2, 40, 32, 0.0), (2, 2, 40, 64, 0.4)]
        args.rounds, args.calls, args.warmup = 2, 1, 1
    if args.rounds * args.calls < 15 and not args.quick:
        p.error(
            f"--rounds x --calls must give >= 15 samples per implementation, got {args.rounds * args.calls}"
        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not sa.available():
        print(
            "the cpu attention kernel is not available (extension not built with AVX2/FMA)", file=sys.stderr
        )
        return 2
    env = environment("cpu", args.threads)
    command = command_line("benchmarks/bench_attention_cpu.py", argv)
    rows: List[dict] = []
    for case in args.cases:
        rows += run_case(case, args, env, command)
    add_speedups(rows)
    write_csv(rows, args.out, extra=EXTRA)
    print(f"{env['device']}, {args.threads} threads, torch {env['torch']}\n")
    print(markdown(rows))
    print(f"\nwrote {len(rows)} rows to {args.out}")
    bad = [r for r in rows if not float(r["max_rel_err"]) < 1e-4 or math.isnan(float(r["max_rel_err"]))]
    if bad:
        print(f"warning: {len(bad)} rows differ from the float64 reference by >= 1e-4", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
