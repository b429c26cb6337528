"""``spd profile``: time the sparse kernels against dense and torch.sparse baselines."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

NAME = "profile"
HELP = "time sparse kernels (or a pruned model) against dense and torch.sparse baselines"
DESCRIPTION = """\
Time the sparse linear kernels over a grid of op x layout x sparsity x dtype x shape for one
backend, next to dense eager, dense torch.compile and torch.sparse baselines, and write a
long-format CSV (profile.csv), a markdown table (profile.md) and a plot of speedup vs sparsity
(speedup.png) to --out.

Shapes follow y = x W^T with x (M, K) and W (N, K): a preset gives one encoder layer's linears
(q/k/v and attention output hidden->hidden, intermediate hidden->FFN, output FFN->hidden)
with M = --tokens rows. Speedup = min(dense eager p50, dense compiled p50) / p50 of the row.
Every grid value is validated before anything is timed. Each measurement: --warmup untimed
calls, then samples for at least --min-run-time seconds and at least --repeats samples;
p20/p50/p80 reported (torch.utils.benchmark on CPU, triton do_bench / CUDA events on GPU).

With --model DIR, a saved pruned model is timed end to end against the dense engines a user
would run instead on its dense twin (same weights, plain linears): PyTorch eager with SDPA and
with eager attention, torch.compile, ONNX Runtime, and ONNX Runtime after its BERT fusions
(--engines; ONNX Runtime is a benchmark extra: requirements/bench.txt), all timed side by side
in --rounds interleaved rounds. Speedup = the fastest dense engine's p50 / p50 of the row.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from spd_kernels.profiling.engines import ENGINES
    from spd_kernels.profiling.grid import BASELINES, OPS, PRESETS

    g = p.add_argument_group("grid")
    g.add_argument(
        "--preset",
        nargs="+",
        choices=sorted(PRESETS),
        default=None,
        help="model presets whose linear shapes to time (hidden/FFN: "
        + ", ".join(f"{k} {h}/{f}" for k, (h, f) in sorted(PRESETS.items()))
        + "); default minilm when no --shapes is given",
    )
    g.add_argument(
        "--shapes",
        nargs="+",
        metavar="M,N,K",
        default=None,
        help="custom shapes: x is (M, K), the weight W is (N, K); added to any --preset",
    )
    g.add_argument("--tokens", type=int, default=128, help="M (batch x sequence rows) for the presets")
    g.add_argument(
        "--layouts",
        nargs="+",
        default=["csr", "bsr32"],
        help="weight layouts: csr (unstructured), bsrB (BxB blocks: bsr16, bsr32, bsr64) or "
        "bsrBMxBK (rectangular blocks, e.g. bsr32x64); each block must divide every N and K",
    )
    g.add_argument(
        "--sparsities",
        nargs="+",
        default=["0.5", "0.9"],
        help="fractions of weights (blocks) pruned, each in [0, 1]",
    )
    g.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32"],
        help="float32/fp32, bfloat16/bf16, float16/fp16, float64/fp64; the backend must support each",
    )
    g.add_argument(
        "--ops",
        nargs="+",
        choices=OPS,
        default=list(OPS),
        help="forward = x W^T, input_grad = dY W, weight_grad = dY^T X at the stored blocks, "
        "fwd_bwd = forward + both gradients through autograd",
    )
    g.add_argument(
        "--backend",
        default="auto",
        help="spd_kernels backend: auto (the dispatcher's choice) or a registered name "
        "(reference, cpu, triton, cuda); it must be able to run every op/dtype/layout asked for",
    )
    g.add_argument(
        "--baselines",
        nargs="*",
        choices=BASELINES,
        default=list(BASELINES),
        help="eager = dense F.linear and the dense backward products, compiled = the same under "
        "torch.compile, torch-sparse = torch.sparse CSR/BSR (unsupported cases are recorded as "
        "skipped with the reason); the speedup needs eager and/or compiled",
    )
    g.add_argument("--no-compile", action="store_true", help="drop the torch.compile baseline")
    g.add_argument(
        "--no-check", action="store_true", help="skip the one-off correctness check against float64"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the random inputs and sparsity patterns")

    t = p.add_argument_group("timing")
    t.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu or cuda[:i]")
    t.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads while timing; 1 gives steady numbers on a shared machine (more "
        "threads than free cores make OpenMP kernels stall); set it to the core count to measure "
        "multi-threaded kernels on a quiet machine",
    )
    t.add_argument("--warmup", type=int, default=2, help="untimed calls before each measurement")
    t.add_argument(
        "--min-run-time",
        type=float,
        default=0.1,
        metavar="SECONDS",
        help="minimum measuring time per measurement",
    )
    t.add_argument(
        "--repeats",
        type=int,
        default=5,
        metavar="N",
        help="minimum number of samples per measurement (percentiles are over the samples)",
    )

    o = p.add_argument_group("output")
    o.add_argument("--out", default=os.path.join("reports", "profile"), metavar="DIR", help="output folder")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")

    m = p.add_argument_group("model (instead of the kernel grid)")
    m.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="a saved pruned model: time it end to end against its dense twin (same weights, "
        "plain nn.Linear layers); writes model.csv and model.md",
    )
    m.add_argument("--batch", type=int, default=1, help="--model: batch size of the random token ids")
    m.add_argument("--seq-len", type=int, default=128, help="--model: sequence length")
    m.add_argument(
        "--engines",
        nargs="+",
        choices=ENGINES,
        default=list(ENGINES),
        help="--model: dense engines to compare against (default: all; those that cannot run here "
        "are listed as skipped with the reason)",
    )
    m.add_argument(
        "--compile",
        action="store_true",
        help="--model: also time the pruned model under torch.compile(fullgraph=True)",
    )
    m.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="--model: interleaved rounds (each runs every implementation --repeats/--rounds times)",
    )
    m.add_argument(
        "--model-ops",
        nargs="+",
        choices=("forward", "fwd_bwd"),
        default=["forward"],
        help="--model: forward (inference, no grad) and/or fwd_bwd (a training step's forward + backward)",
    )


def _device(name: str) -> str:
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _command(args: argparse.Namespace, shapes) -> str:
    """The run as an explicit command line (every grid value spelled out), for the report."""
    parts = ["spd", "profile"]
    if args.preset:
        parts += ["--preset", *args.preset, "--tokens", str(args.tokens)]
    if args.shapes:
        parts += ["--shapes", *args.shapes]
    parts += ["--layouts", *args.layouts, "--sparsities", *map(str, args.sparsities)]
    parts += ["--dtypes", *args.dtypes, "--ops", *args.ops, "--backend", args.backend]
    parts += ["--baselines", *(args.baselines or [])] if args.baselines else ["--baselines"]
    if args.no_compile:
        parts.append("--no-compile")
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    parts += ["--min-run-time", f"{args.min_run_time:g}", "--repeats", str(args.repeats)]
    return " ".join(shlex.quote(p) for p in parts)


def _fail(msg: str) -> int:
    print(f"spd profile: error: {msg}", file=sys.stderr)
    return 2


def _run_model(args: argparse.Namespace) -> int:
    from spd_kernels.profiling.model import example_inputs, load_pruned_model, profile_model
    from spd_kernels.profiling.report import model_markdown_table, write_csv

    try:
        model = load_pruned_model(args.model)
        inputs = example_inputs(model, args.batch, args.seq_len, args.seed)
        rows = profile_model(
            model,
            inputs,
            ops=[f"model_{o}" for o in args.model_ops],
            engines=[e for e in args.engines if not (args.no_compile and e == "compiled")],
            compile_sparse=args.compile,
            rounds=args.rounds,
            threads=args.threads,
            warmup=args.warmup,
            min_run_time=args.min_run_time,
            min_samples=args.repeats,
            name=os.path.basename(os.path.normpath(args.model)),
        )
    except (ValueError, TypeError, NotImplementedError) as exc:
        return _fail(str(exc))
    os.makedirs(args.out, exist_ok=True)
    cmd = (
        f"spd profile --model {shlex.quote(args.model)} --batch {args.batch} --seq-len {args.seq_len} "
        f"--threads {args.threads} --engines {' '.join(args.engines)} --rounds {args.rounds} "
        f"--repeats {args.repeats}" + (" --compile" if args.compile else "")
    )
    for r in rows:
        r["command"] = cmd
    csv_path = write_csv(rows, os.path.join(args.out, "model.csv"))
    from spd_kernels.profiling.report import markdown_report

    md = markdown_report(rows, cmd, table=model_markdown_table(rows))
    md_path = os.path.join(args.out, "model.md")
    with open(md_path, "w") as f:
        f.write(md)
    print(md)
    print(f"wrote {csv_path}, {md_path}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.model:
        return _run_model(args)

    from spd_kernels.profiling.grid import ProfileSpec, plan, preset_shapes
    from spd_kernels.profiling.report import markdown_report, plot_speedup, write_csv
    from spd_kernels.profiling.runner import SPD_IMPL, run_plan

    baselines = [b for b in (args.baselines or []) if not (args.no_compile and b == "compiled")]
    try:
        shapes = []
        presets = args.preset if args.preset else ([] if args.shapes else ["minilm"])
        if not args.preset and not args.shapes:
            args.preset = presets
        for name in presets:
            shapes += preset_shapes(name, args.tokens)
        shapes += list(args.shapes or [])
        spec = ProfileSpec(
            shapes=shapes,
            ops=args.ops,
            layouts=args.layouts,
            sparsities=args.sparsities,
            dtypes=args.dtypes,
            backend=args.backend,
            baselines=baselines,
            device=_device(args.device),
            threads=args.threads,
            warmup=args.warmup,
            min_run_time=args.min_run_time,
            min_samples=args.repeats,
            check=not args.no_check,
            seed=args.seed,
        )
        validated = plan(spec)  # every grid value checked before any timing
    except (ValueError, TypeError) as exc:
        return _fail(str(exc))

    rows = run_plan(validated, progress=not args.no_progress)
    command = _command(args, shapes)
    for r in rows:
        r["command"] = command
    os.makedirs(args.out, exist_ok=True)
    csv_path = write_csv(rows, os.path.join(args.out, "profile.csv"))
    md = markdown_report(rows, command)
    md_path = os.path.join(args.out, "profile.md")
    with open(md_path, "w") as f:
        f.write(md)
    png_path = plot_speedup(rows, os.path.join(args.out, "speedup.png"))
    print(md)
    print(f"wrote {csv_path}, {md_path}, {png_path}")
    bad = [r for r in rows if r["impl"] == SPD_IMPL and r["status"] in ("error", "mismatch")]
    if bad:
        print(
            f"spd profile: {len(bad)} spd_kernels case(s) failed or mismatched; see the notes",
            file=sys.stderr,
        )
        return 1
    return 0
