"""Measure where MaskedLinear's sparse path beats its dense masked product, and write the table.

For every backend that can run here (or those named with --backends), every layout (CSR and
BSR 16/32/64) and the encoder shapes of MiniLM/BERT, it times the dense masked product and the
sparse kernels at rising densities, forward + backward ("train") and forward only under
inference_mode ("infer"). The crossover of a (backend, layout, mode) is the density where the
sparse/dense time ratio crosses 1 (linear interpolation between the last density the sparse
path wins and the first it loses), the minimum over the shapes. It writes

* ``spd_kernels/nn/_crossover_table.py`` (the table MaskedLinear's ``sparse_path="auto"`` reads),
* ``benchmarks/results/crossover.csv`` (every timing, the profiler's long-format CSV; the
  dense path's rows have impl ``dense_eager``, the sparse path's ``spd_kernels``).

Re-run it whenever a backend's kernels change:

    python benchmarks/bench_crossover.py                # 2 threads, 2048 tokens
    python benchmarks/bench_crossover.py --quick --no-write   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import pprint
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "spd_kernels" / "nn" / "_crossover_table.py"
LAYOUTS = {
    "csr": (1, 1),
    "bsr8x1": (8, 1),
    "bsr16x1": (16, 1),
    "bsr4": (4, 4),
    "bsr16": (16, 16),
    "bsr32": (32, 32),
    "bsr64": (64, 64),
}
SHAPES = [(384, 384), (1536, 384), (384, 1536)]  # (N, K): attention, FFN in, FFN out
DENSITIES = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048, help="M = batch x sequence rows of x")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--backends", default="", help="comma list (default: every backend that runs on CPU)")
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--quick", action="store_true", help="one shape, 4 densities, 2 reps")
    p.add_argument("--no-write", action="store_true", help="print the table, write neither file")
    p.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "crossover.csv")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    sys.path.insert(0, str(ROOT))
    import spd_kernels as sk
    from spd_kernels.nn import MaskedLinear
    from spd_kernels.nn.crossover import crossing, table_source
    from spd_kernels.profiling import base_row, command_line, environment, time_callable, write_csv
    from spd_kernels.profiling.report import machine_line

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shapes = SHAPES[:1] if args.quick else SHAPES
    densities = [0.05, 0.1, 0.3, 0.6] if args.quick else DENSITIES
    reps = 2 if args.quick else args.reps
    cpu = torch.device("cpu")
    wanted = [b for b in args.backends.split(",") if b] or [
        name
        for name, b in sk.BACKENDS.items()
        if not b.not_supported_reasons("dds_t", cpu, torch.float32, (32, 32))
    ]
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layouts {unknown}; known: {sorted(LAYOUTS)}")
    env = environment(cpu, args.threads)
    cmd = command_line("benchmarks/bench_crossover.py", argv)
    machine = machine_line([env])
    print(f"# {machine}\n# backends {wanted}, tokens {args.tokens}, reps {reps}")
    rows, table = [], {}
    for backend in wanted:
        for layout in layouts:
            block = LAYOUTS[layout]
            if sk.BACKENDS[backend].not_supported_reasons("dds_t", cpu, torch.float32, block):
                print(f"{backend:>10} {layout:>6}: cannot run, skipped")
                continue
            crossings = {"train": [], "infer": []}
            for n, k in shapes:
                x = torch.randn(args.tokens, k, requires_grad=True)  # dX is part of a training step
                gy = torch.randn(args.tokens, n)
                for mode in ("train", "infer"):
                    points = []
                    for density in densities:
                        layer = MaskedLinear(k, n, block=block)
                        nb = (n // block[0]) * (k // block[1])
                        flags = torch.zeros(nb, dtype=torch.bool)
                        flags[torch.randperm(nb)[: max(1, round(density * nb))]] = True
                        layer.set_mask(flags.view(n // block[0], k // block[1]), allow_regrow=True)
                        times = {}
                        for path in ("never", "always"):
                            layer.sparse_path = path

                            def train_step():
                                layer.weight.grad = x.grad = None
                                layer(x).backward(gy)

                            def infer_step():
                                with torch.inference_mode():
                                    layer(x)

                            fn = train_step if mode == "train" else infer_step
                            with sk.use_backend(backend):
                                t = time_callable(fn, warmup=args.warmup, min_run_time=1e-3, min_samples=reps)
                            times[path] = t
                            rows.append(
                                base_row(
                                    env, cmd, op=f"masked_linear_{mode}", shape=f"{args.tokens}x{k}->{n}",
                                    impl="spd_kernels" if path == "always" else "dense_eager",
                                    backend=backend if path == "always" else "aten", layout=layout,
                                    block=f"{block[0]}x{block[1]}", sparsity=round(1 - density, 4),
                                    density=density, dtype="float32", M=args.tokens, N=n, K=k,
                                    samples=t.samples, status="ok", note="MaskedLinear sparse_path=" + path,
                                    speedup_vs_best_dense=times["never"].p50 / t.p50, **t.ms(),
                                )
                            )  # fmt: skip
                        ratio = times["always"].p50 / times["never"].p50
                        points.append((density, ratio))
                        dense_ms, sparse_ms = times["never"].p50 * 1e3, times["always"].p50 * 1e3
                        print(
                            f"{backend:>10} {layout:>6} {mode:>5} N={n:<5} K={k:<5} density {density:<5} "
                            f"dense {dense_ms:8.2f} ms  sparse {sparse_ms:8.2f} ms  ratio {ratio:6.2f}",
                            flush=True,
                        )
                        if ratio >= 1.0:  # denser only gets worse for the sparse path
                            break
                    crossings[mode].append(crossing(points))
            table.setdefault(backend, {})[layout] = {mode: min(v) for mode, v in crossings.items()}
    print("\nCROSSOVER = ", end="")
    pprint.pprint(table)
    if args.no_write:
        return 0
    write_csv(rows, args.csv)
    header = [
        "Generated by benchmarks/bench_crossover.py -- do not edit by hand; re-run the script.",
        machine.rsplit("; ", 1)[0],  # the date has its own line
        f"command: {cmd.strip()}",
        f"date: {env['timestamp']}; tokens {args.tokens}; shapes (N, K) {shapes}",
        "backend -> layout -> mode -> density below which the sparse path is faster",
    ]
    TABLE.write_text(table_source(table, header))
    print(f"wrote {TABLE.relative_to(ROOT)} and {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
