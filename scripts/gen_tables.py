"""Write the measured tables of README.md and docs/*.md from the committed CSVs.

Every table sits between two markers in the markdown::

    <!-- table:model_cpu -->
    ... generated: the table, then the CSV it comes from and the command that made it ...
    <!-- /table -->

and is produced here from ``benchmarks/results/*.csv`` (each row carries its machine line and
command). Nothing is timed.

    python scripts/gen_tables.py            # rewrite every marked table in place
    python scripts/gen_tables.py --check    # exit 1 and show the difference if a page is stale
    python scripts/gen_tables.py --list     # the table names and the CSV each reads

``tests/test_gen_tables.py`` fails when the committed markdown differs from what this writes.
A table whose CSV does not exist yet says so, with the command that makes it.
"""

from __future__ import annotations

import argparse
import csv
import difflib
import math
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"(<!-- table:([a-z0-9_]+) -->\n)(.*?)(<!-- /table -->)", re.S)
Row = Dict[str, str]


# ------------------------------------------------------------------ helpers
def read(name: str) -> List[Row]:
    with open(RESULTS / name, newline="") as f:
        return list(csv.DictReader(f))


def f(v) -> float:
    return math.nan if v in ("", None) else float(v)


def rng(xs: Sequence[float], fmt: str = "{:.1f}", unit: str = "×") -> str:
    """'a–b×' (or 'a×' when all equal after formatting)."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return "–"
    lo, hi = fmt.format(min(xs)), fmt.format(max(xs))
    return f"{lo}{unit}" if lo == hi else f"{lo}–{hi}{unit}"


def source(csv_name: str, rows: Sequence[Row], command: Optional[str] = None) -> str:
    """The line under a table: its CSV, the command that made the rows, the machine and date."""
    r = rows[0] if rows else {}
    cmds = list(dict.fromkeys(str(x.get("command", "")).strip() for x in rows if x.get("command")))
    cmd = command or (cmds[0] if len(cmds) == 1 else " / ".join(f"`{c}`" for c in cmds))
    if cmd and not cmd.startswith("`"):
        cmd = f"`{cmd}`"
    stamps = sorted(str(x.get("timestamp", "")) for x in rows if x.get("timestamp"))
    date = stamps[-1][:10] if stamps else "?"
    machine = f"{r.get('device', '?')}, {r.get('threads', '?')} threads, torch {r.get('torch', '?')}"
    return f"Source: `benchmarks/results/{csv_name}` ({machine}, {date}); command: {cmd}."


def ms(x: float) -> str:
    """A time in ms to 3 significant digits, never in exponent form."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def missing(csv_name: str, command: str) -> str:
    return f"Not measured yet: `benchmarks/results/{csv_name}` does not exist; `{command}` makes it."


# ------------------------------------------------------------------ model benchmark
MODEL_NAMES = {"minilm": "MiniLM-L6", "bert-base": "BERT-base"}
ENGINE_COLUMNS = [
    ("dense eager (SDPA)", ("dense_eager",)),
    ("dense eager attn", ("dense_eager_attention",)),
    ("dense compiled", ("dense_compiled",)),
    ("ORT", ("onnxruntime", "onnxruntime_spin")),
    ("ORT fused", ("onnxruntime_fused", "onnxruntime_fused_spin")),
]
DENSE = tuple(i for _, impls in ENGINE_COLUMNS for i in impls)
# (model, pattern, batch) -> the whole-model speedup target (small blocks: the best of them)
SMALL_BLOCKS = ("bsr16", "bsr8", "4x4", "8x1", "16x1")
MODEL_TARGETS = {
    ("minilm", "bsr32", 32): 4.5, ("minilm", "bsr32", 1): 3.0,
    ("minilm", "csr", 32): 3.5, ("minilm", "csr", 1): 2.5,
    **{("minilm", p, 32): 4.0 for p in SMALL_BLOCKS}, **{("minilm", p, 1): 2.8 for p in SMALL_BLOCKS},
    ("bert-base", "bsr32", 32): 5.5, ("bert-base", "bsr32", 1): 4.0,
    ("bert-base", "csr", 32): 4.0, ("bert-base", "csr", 1): 3.0,
}  # fmt: skip


def _shape_label(shape: str) -> Tuple[str, int, str]:
    model, bs = shape.rsplit(" ", 1)
    b, s = bs.split("x")
    return MODEL_NAMES.get(model, model), int(b), f"{MODEL_NAMES.get(model, model)}, {b} × {s}"


def _patterns(rows: Sequence[Row]) -> List[str]:
    out = []
    for r in rows:
        impl = r["impl"]
        if impl.startswith("spd_kernels/"):
            p = impl.split("/", 1)[1]
            if p not in out:
                out.append(p)
    return out


def _model_rows(csv_name: str = "model_cpu.csv") -> List[Row]:
    return [r for r in read(csv_name) if r["op"] == "model_forward"]


PATTERNS_CMD = (
    "python benchmarks/bench_model_cpu.py --models minilm --patterns element,bsr32,bsr16,bsr8,4x4,8x1,16x1 "
    "--csv benchmarks/results/model_cpu_patterns.csv"
)


def table_model_cpu_patterns() -> str:
    if not (RESULTS / "model_cpu_patterns.csv").exists():
        return missing("model_cpu_patterns.csv", PATTERNS_CMD)
    return table_model_cpu("model_cpu_patterns.csv")


def table_attention_cpu() -> str:
    name, cmd = "attention_cpu.csv", "python benchmarks/bench_attention_cpu.py"
    if not (RESULTS / name).exists():
        return missing(name, cmd)
    rows = read(name)
    by_case: Dict[str, Dict[str, Row]] = {}
    for r in rows:
        by_case.setdefault(r["shape"], {})[r["impl"]] = r
    lines = [
        "| batch, heads, seq, head dim | key padding | `cpu_attention` ms | GFLOP/s | torch SDPA ms "
        "| GFLOP/s | × SDPA | HF eager ms | max rel err |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for impls in by_case.values():
        k, d, e = impls["spd_kernels"], impls["dense_eager"], impls.get("dense_eager_attention")
        lines.append(
            f"| {k['batch']}, {k['heads']}, {k['seq']}, {k['head_dim']} | {100 * f(k['key_padding']):.0f} % "
            f"| {f(k['p50_ms']):.2f} | {f(k['gflops']):.0f} | {f(d['p50_ms']):.2f} | {f(d['gflops']):.0f} "
            f"| **{f(k['speedup_vs_sdpa']):.2f}×** | {f(e['p50_ms']):.2f} | {f(k['max_rel_err']):.1e} |"
            if e
            else f"| {k['shape']} | | {f(k['p50_ms']):.2f} | | {f(d['p50_ms']):.2f} | | "
            f"{f(k['speedup_vs_sdpa']):.2f}× | | |"
        )
    note = (
        "p50 of interleaved samples; GFLOP/s counts the 4·B·H·S²·d of unpadded attention (padded keys "
        "are skipped, so a padded case's rate is above the work it does); targets: ≥ 2× SDPA at d = 32, "
        "≥ 1.5× at d = 64, ≥ 100 GFLOP/s at d = 32."
    )
    return "\n".join(lines) + "\n\n" + note + "\n\n" + source(name, rows)


def table_model_cpu(csv_name: str = "model_cpu.csv") -> str:
    rows = _model_rows(csv_name)
    pats = _patterns(rows)
    cols = [c for c, impls in ENGINE_COLUMNS if any(r["impl"] in impls for r in rows)]
    head = "| model, batch × seq | " + " | ".join(cols) + " | " + " | ".join(f"**{p}**" for p in pats)
    targeted = [p for p in pats if any(k[1] == p for k in MODEL_TARGETS)]
    head += " | target " + " / ".join(targeted) + " |"
    lines = [head, "|---|" + "---:|" * (len(cols) + len(pats)) + "---|"]
    notes: List[str] = []
    spin_used = False
    for shape in dict.fromkeys(r["shape"] for r in rows):
        part = {r["impl"]: r for r in rows if r["shape"] == shape}
        _, batch, label = _shape_label(shape)
        dense = {}
        for c, impls in ENGINE_COLUMNS:
            ok = [part[i] for i in impls if i in part and part[i]["status"] == "ok"]
            if ok:
                best = min(ok, key=lambda r: f(r["p50_ms"]))
                dense[c] = (f(best["p50_ms"]), best["impl"].endswith("_spin"))
        fastest = min(dense, key=lambda c: dense[c][0]) if dense else None
        cells = []
        for i, c in enumerate(cols):
            if c not in dense:
                cells.append("–")
                continue
            t_ms, spin = dense[c]
            spin_used |= spin
            txt = ms(t_ms) + (" ms" if i == 0 else "") + (" (spin)" if spin else "")
            cells.append(f"**{txt}**" if c == fastest else txt)
        marks = []
        for p in pats:
            r = part.get(f"spd_kernels/{p}")
            if r is None:
                cells.append("–")
            elif r["status"] != "ok":
                reason = f"{r['status']}: {r['note']}"
                if reason not in notes:
                    notes.append(reason)
                cells.append(f"{r['status']} [{notes.index(reason) + 1}]")
            else:
                cells.append(f"{ms(f(r['p50_ms']))} ms, **{f(r['speedup_vs_best_dense']):.2f}×**")
            if p not in targeted:
                continue
            t = MODEL_TARGETS.get((shape.rsplit(" ", 1)[0], p, batch))
            if t is None:
                marks.append("–")
            else:
                ok = r is not None and r["status"] == "ok" and f(r["speedup_vs_best_dense"]) >= t
                marks.append(f"{t:.1f} {'✓' if ok else '✗'}")
        lines.append(f"| {label} | " + " | ".join(cells) + " | " + " / ".join(marks) + " |")
    out = "\n".join(lines)
    if notes:
        out += "\n\n" + "\n".join(f"[{i + 1}] {n}" for i, n in enumerate(notes))
    samples = sorted({int(r["samples"]) for r in rows if r["status"] == "ok" and r["samples"]})
    legend = (
        f"p50 over {rng(samples, '{:.0f}', '')} interleaved samples per implementation; speedup = the "
        "fastest dense engine's p50 / p50; fastest dense engine in bold"
    )
    if any(r["impl"].endswith("_spin") for r in rows):
        legend += "; ORT = the faster of spinning off and on ((spin): on)"
    return out + "\n\n" + legend + ".\n\n" + source(csv_name, rows)


def table_model_cpu_compiled() -> str:
    rows = _model_rows()
    comp = [r for r in rows if r["impl"].startswith("spd_kernels_compiled/") and r["status"] == "ok"]
    if not comp:
        return "No compiled rows in `benchmarks/results/model_cpu.csv` (run with `--compile-sparse`)."
    lines = [
        "| model, batch × seq | pattern | eager ms | compiled ms | compiled / eager |",
        "|---|---|---:|---:|---:|",
    ]
    ratios = []
    for r in comp:
        p = r["impl"].split("/", 1)[1]
        eager = next((x for x in rows if x["shape"] == r["shape"] and x["impl"] == f"spd_kernels/{p}"), None)
        if eager is None or eager["status"] != "ok":
            continue
        ratio = f(r["p50_ms"]) / f(eager["p50_ms"])
        ratios.append(ratio)
        lines.append(
            f"| {_shape_label(r['shape'])[2]} | {p} | {ms(f(eager['p50_ms']))} | {ms(f(r['p50_ms']))} "
            f"| {ratio:.2f} |"
        )
    pct = rng([100 * (x - 1) for x in ratios], "{:+.0f}", " %")
    return (
        "\n".join(lines)
        + f"\n\nThe exported model under `torch.compile(fullgraph=True)` (`--compile-sparse`) against the "
        f"same model in eager mode: {pct} (compiled / eager p50 − 1).\n\n" + source("model_cpu.csv", rows)
    )


BREAKDOWN_KINDS = [
    "sparse linears",
    "attention",
    "layer norm",
    "adds, dropout, copies",
    "embeddings",
    "other",
]


def table_model_breakdown() -> str:
    rows = [r for r in read("model_cpu.csv") if r["op"] == "breakdown"]
    name = "model_cpu.csv"
    if not rows and (RESULTS / "model_cpu_breakdown.csv").exists():
        rows, name = read("model_cpu_breakdown.csv"), "model_cpu_breakdown.csv"
    if not rows:
        return missing("model_cpu.csv", "python benchmarks/bench_model_cpu.py --breakdown")
    kinds = [k for k in BREAKDOWN_KINDS if any(r["impl"] == k and f(r["share"]) >= 0.005 for r in rows)]
    lines = ["| case | " + " | ".join(kinds) + " | profiled calls |", "|---|" + "---:|" * (len(kinds) + 1)]
    for key in dict.fromkeys((r["shape"], r["layout"]) for r in rows):
        part = {r["impl"]: r for r in rows if (r["shape"], r["layout"]) == key}
        cells = [f"{100 * f(part[k]['share']):.0f} %" if k in part else "–" for k in kinds]
        n = next(iter(part.values()))["samples"]
        lines.append(f"| {_shape_label(key[0])[2]}, {key[1]} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines) + "\n\n" + source(name, rows)


def table_call_overhead() -> str:
    rows = read("call_overhead_cpu.csv")
    lines = ["| path (64→64 block-32 layer, x (4, 64), inference mode) | µs per call (p50) |", "|---|---:|"]
    lines += [f"| {r['impl']} | {1e3 * f(r['p50_ms']):.1f} |" for r in rows]
    by = {r["impl"]: 1e3 * f(r["p50_ms"]) for r in rows}
    extra = ""
    if {"kernel", "layer", "custom_op, backend chosen per call (before)"} <= set(by):
        before = by["custom_op, backend chosen per call (before)"] - by["kernel"]
        now = by["layer"] - by["kernel"]
        extra = (
            f"\n\nAbove the C++ kernel: {before:.0f} µs a call before, {now:.0f} µs through the layer now."
        )
    return "\n".join(lines) + extra + "\n\n" + source("call_overhead_cpu.csv", rows)


# ------------------------------------------------------------------ kernel benchmark
KERNEL_OPS = ("forward", "input_grad", "weight_grad")
KERNEL_LAYOUT_ORDER = ("csr", "bsr8", "bsr16", "bsr32", "bsr64")


def _fmt(v, unit: str = "") -> str:
    return "–" if v in ("", None) or math.isnan(f(v)) else f"{f(v):.2f}{unit}"


def kernel_tables(rows: Sequence[Row]) -> str:
    """One table per shape (the format of ``bench_cpu_kernels.py``'s printout)."""
    out = []
    keys = sorted({(int(r["K"]), int(r["N"]), int(r["M"])) for r in rows})
    for k, n, m in keys:
        sel = [r for r in rows if (int(r["K"]), int(r["N"]), int(r["M"])) == (k, n, m)]
        dense = {r["op"]: r for r in sel if r["impl"] == "dense_eager"}
        head = ", ".join(
            f"{op.replace('_', ' ')} {_fmt(dense[op]['p50_ms'])} ms" for op in KERNEL_OPS if op in dense
        )
        gf = (
            f" ({f(dense['forward']['gflops']):.0f} GFLOP/s)"
            if dense.get("forward", {}).get("gflops")
            else ""
        )
        out.append(f"**{k} → {n}, M = {m}** — dense: {head}{gf}\n")
        out.append(
            "| layout | sparsity | forward ms | × dense | × torch.sparse | input grad ms | × dense "
            "| × torch.sparse | weight grad ms | × dense | × torch.sparse |"
        )
        out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        ours = {(r["layout"], f(r["sparsity"]), r["op"]): r for r in sel if r["impl"] == "spd_kernels"}
        order = {lay: i for i, lay in enumerate(KERNEL_LAYOUT_ORDER)}
        for layout, sp in sorted({key[:2] for key in ours}, key=lambda t: (order.get(t[0], 99), t[0], t[1])):
            cells = [layout, f"{sp:.2f}"]
            for op in KERNEL_OPS:
                r = ours.get((layout, sp, op), {})
                ok = r.get("status") == "ok"
                cells += [_fmt(r.get("p50_ms") if ok else "")]
                cells += [
                    _fmt(r.get(c) if ok else "", "×")
                    for c in ("speedup_vs_best_dense", "speedup_vs_torch_sparse")
                ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def _speedups(rows, layout, op, sparsity, shape_key=None) -> Dict[Tuple[int, int, int], float]:
    return {
        (int(r["K"]), int(r["N"]), int(r["M"])): f(r["speedup_vs_best_dense"])
        for r in rows
        if r["impl"] == "spd_kernels" and r["layout"] == layout and r["op"] == op
        and abs(f(r["sparsity"]) - sparsity) < 1e-9 and r["status"] == "ok"
    }  # fmt: skip


def table_cpu_kernels() -> str:
    rows = read("cpu_kernels.csv")
    dense = [f(r["gflops"]) for r in rows if r["impl"] == "dense_eager" and r["op"] == "forward"]
    return (
        kernel_tables(rows)
        + f"\n\nDense `F.linear` runs at {rng(dense, '{:.0f}', ' GFLOP/s')} here. "
        + source("cpu_kernels.csv", rows)
    )


KERNEL_TARGETS = [
    ("block 32×32 forward vs dense, 90 %", "bsr32", "forward", 0.9, "speedup_vs_best_dense", 6),
    ("block 32×32 forward vs dense, 95 %", "bsr32", "forward", 0.95, "speedup_vs_best_dense", 11),
    ("block 32×32 forward vs dense, 50 %", "bsr32", "forward", 0.5, "speedup_vs_best_dense", 1.6),
    ("block 32×32 forward vs torch.sparse BSR, 90 %", "bsr32", "forward", 0.9, "speedup_vs_torch_sparse", 4),
    ("CSR forward vs dense, 90 %", "csr", "forward", 0.9, "speedup_vs_best_dense", 3.5),
    ("CSR forward vs torch.sparse CSR, 90 %", "csr", "forward", 0.9, "speedup_vs_torch_sparse", 3),
    ("block 32×32 input grad vs dense, 90 %", "bsr32", "input_grad", 0.9, "speedup_vs_best_dense", 4),
    ("block 32×32 weight grad vs dense, 90 %", "bsr32", "weight_grad", 0.9, "speedup_vs_best_dense", 4),
]


def table_cpu_kernels_targets() -> str:
    rows = read("cpu_kernels.csv")
    shapes = sorted(
        {(int(r["K"]), int(r["N"]), int(r["M"])) for r in rows}, key=lambda t: (t[2], t[0] * t[1], t)
    )
    lines = [
        "| target | goal | " + " | ".join(f"{k} → {n}" for k, n, _ in shapes) + " |",
        "|---|---:|" + "---:|" * len(shapes),
    ]
    for label, lay, op, sp, col, goal in KERNEL_TARGETS:
        got = {
            (int(r["K"]), int(r["N"]), int(r["M"])): f(r.get(col))
            for r in rows
            if r["impl"] == "spd_kernels" and r["layout"] == lay and r["op"] == op
            and abs(f(r["sparsity"]) - sp) < 1e-9 and r["status"] == "ok"
        }  # fmt: skip
        cells = []
        for s in shapes:
            v = got.get(s, math.nan)
            txt = "–" if math.isnan(v) else (f"{v:.2f}×" if goal < 2 else f"{v:.1f}×")
            cells.append(txt if math.isnan(v) or v >= goal else f"**{txt}**")
        lines.append(f"| {label} | ≥ {goal:g}× | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nBold: missed. " + source("cpu_kernels.csv", rows)


def table_cpu_kernels_minilm() -> str:
    rows = read("cpu_kernels_minilm.csv")
    layouts = [lay for lay in KERNEL_LAYOUT_ORDER if any(r["layout"] == lay for r in rows)]
    sp = max(f(r["sparsity"]) for r in rows if r["impl"] == "spd_kernels")
    cols = [(lay, "forward") for lay in layouts] + [("bsr32", "input_grad"), ("bsr32", "weight_grad")]
    cols = [c for c in cols if any(r["layout"] == c[0] and r["op"] == c[1] for r in rows)]
    names = {"forward": "fwd", "input_grad": "input grad", "weight_grad": "weight grad"}
    lines = [
        "| shape, M | dense fwd ms | " + " | ".join(f"{lay} {names[op]}" for lay, op in cols) + " |",
        "|---|" + "---:|" * (len(cols) + 1),
    ]
    shapes = sorted(
        {(int(r["M"]), int(r["K"]), int(r["N"])) for r in rows}, key=lambda t: (-t[0], t[1] * t[2], t)
    )
    for m, k, n in shapes:
        sel = [r for r in rows if (int(r["M"]), int(r["K"]), int(r["N"])) == (m, k, n)]
        d = next((r for r in sel if r["impl"] == "dense_eager" and r["op"] == "forward"), None)
        cells = [f"{f(d['p50_ms']):.2f}" if d else "–"]
        for lay, op in cols:
            r = next((x for x in sel if x["impl"] == "spd_kernels" and x["layout"] == lay and x["op"] == op
                      and abs(f(x["sparsity"]) - sp) < 1e-9), None)  # fmt: skip
            cells.append(f"{f(r['speedup_vs_best_dense']):.2f}×" if r and r["status"] == "ok" else "–")
        lines.append(f"| {k} → {n}, {m} | " + " | ".join(cells) + " |")
    # share of the dense FLOP rate at the largest M: speedup × density
    big = max(int(r["M"]) for r in rows)
    rates = []
    for lay, op in cols:
        got = [
            f(r["speedup_vs_best_dense"]) * f(r["density"])
            for r in rows
            if int(r["M"]) == big and r["impl"] == "spd_kernels" and r["layout"] == lay and r["op"] == op
            and r["status"] == "ok" and abs(f(r["sparsity"]) - sp) < 1e-9
        ]  # fmt: skip
        if got:
            rates.append(f"{lay} {names[op]} {rng([100 * g for g in got], '{:.0f}', ' %')}")
    legend = (
        f"{100 * sp:.0f} % sparsity; × dense = dense p50 / p50. Share of the dense GFLOP/s rate "
        f"(× dense × density) at M = {big}, over the three shapes: " + "; ".join(rates) + "."
    )
    return "\n".join(lines) + "\n\n" + legend + "\n\n" + source("cpu_kernels_minilm.csv", rows)


# ------------------------------------------------------------------ profile example, training
def table_profile_example() -> str:
    path = RESULTS / "profile_example" / "profile.csv"
    cmd = "spd profile --shapes 128,1536,384 --threads 1 --out benchmarks/results/profile_example"
    if not path.exists():
        return missing("profile_example/profile.csv", cmd)
    sys.path.insert(0, str(ROOT))
    from spd_kernels.profiling.report import markdown_table

    rows = read("profile_example/profile.csv")
    return markdown_table(rows) + "\n\n" + source("profile_example/profile.csv", rows)


def table_accuracy_previous() -> str:
    rows = read("accuracy_cpu_previous_method.csv")
    teacher = next(r for r in rows if r["method"] == "dense")
    t_test = f(teacher["test"])
    groups: Dict[Tuple[str, str], List[Row]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["granularity"]), []).append(r)
    order = ["dense", "spd", "soft-movement", "magnitude"]
    keys = sorted(
        groups, key=lambda k: (k[1] != "-", k[1] != "element", order.index(k[0]) if k[0] in order else 9)
    )
    lines = [
        "| model | granularity | sparsity | test acc, mean (per seed) | % of teacher | validation acc, mean "
        "| time per run |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for k in keys:
        g = sorted(groups[k], key=lambda r: int(r["seed"]))
        test = [f(r["test"]) for r in g]
        mean = sum(test) / len(test)
        name = "teacher (dense)" if k[0] == "dense" else k[0]
        lines.append(
            f"| {name} | {k[1]} | {f(g[0]['sparsity']):.2f} "
            f"| {mean:.4f} ({', '.join(f'{t:.4f}' for t in test)}) "
            f"| {100 * mean / t_test:.1f} | {sum(f(r['validation']) for r in g) / len(g):.4f} "
            f"| {sum(f(r['train_time_s']) for r in g) / len(g):.0f} s |"
        )
    return "\n".join(lines) + "\n\nSource: `benchmarks/results/accuracy_cpu_previous_method.csv`."


# ------------------------------------------------------------------ README summary
def table_readme_results() -> str:
    k = read("cpu_kernels.csv")
    parts = []
    for lay, label in (("bsr32", "block 32"), ("csr", "CSR")):
        vals = [rng(list(_speedups(k, lay, op, 0.9).values())) for op in KERNEL_OPS]
        parts.append(f"{label}: forward {vals[0]}, input grad {vals[1]}, weight grad {vals[2]}")
    kernels = "; ".join(parts)

    m = _model_rows()
    pats = _patterns(m)
    model_parts = []
    for p in pats:
        per = []
        for model in dict.fromkeys(r["shape"].rsplit(" ", 1)[0] for r in m):
            cells = []
            for r in m:
                if (
                    r["impl"] == f"spd_kernels/{p}"
                    and r["shape"].startswith(model + " ")
                    and r["status"] == "ok"
                ):
                    b, s = r["shape"].rsplit(" ", 1)[1].split("x")
                    cells.append(f"{f(r['speedup_vs_best_dense']):.2f}× ({b} × {s})")
            if cells:
                per.append(f"{MODEL_NAMES.get(model, model)} " + ", ".join(cells))
        if per:
            model_parts.append(
                f"{'block 32' if p == 'bsr32' else 'CSR' if p == 'csr' else p}: " + "; ".join(per)
            )
    model = ". ".join(model_parts)

    def spd_cells(name: str) -> List[str]:
        a = read(name)
        teacher = next(r for r in a if r["method"] == "dense")
        cells = []
        for gran, label in (("element", "element"), ("block32", "block 32")):
            r = next((x for x in a if x["method"] == "spd" and x["granularity"] == gran), None)
            if r:
                cells.append(
                    f"{label}: {f(r['test']):.4f} vs {f(teacher['test']):.4f} = "
                    f"{100 * f(r['test']) / f(teacher['test']):.1f} % (seed {r['seed']})"
                )
        return cells

    acc = spd_cells("accuracy_cpu.csv")
    if not acc:  # the grid is being re-run under the current defaults: say so, quote the last run
        before = "accuracy_cpu_before_published_spd.csv"
        acc = [
            "being re-run under the published SPD defaults; with the previous defaults "
            + ", ".join(spd_cells(before))
            + f" (`{before}`)"
        ]

    t = {(r["op"], r["impl"]): r for r in read("training_cpu.csv")}
    w = {r["impl"]: f(r["wall_s"]) for r in read("training_whole_run.csv")}
    stage2 = f(t[("spd-stage2", "new")]["speedup_vs_today"])
    train = (
        f"{stage2:.2f}× (whole `spd prune --method spd` run: {w['base-spd']:.1f} s → "
        f"{w['new-spd-warm']:.1f} s, warm teacher cache)"
    )

    rows = [
        (
            "CPU kernels, BERT-base shapes (768→768, 768→3072, 3072→768), M = 2048, 90 % sparsity, "
            "× dense `F.linear` and its backward",
            kernels,
            "[docs/cpu-kernels.md](docs/cpu-kernels.md), `cpu_kernels.csv`",
        ),
        (
            "exported encoders, 90 %, × the fastest dense engine (ONNX Runtime plain or fused, torch "
            "eager and compiled)",
            model,
            "[docs/benchmarks.md](docs/benchmarks.md), `model_cpu.csv`",
        ),
        (
            "SPD student vs its teacher, embedded MiniLM-L6 + Rotten Tomatoes, 90 % sparsity, "
            "whole training split",
            "; ".join(acc),
            "[docs/training.md](docs/training.md), `accuracy_cpu.csv`",
        ),
        (
            "training step, SPD stage 2, × the previous trainer",
            train,
            "[docs/training.md](docs/training.md), `training_cpu.csv`, `training_whole_run.csv`",
        ),
        (
            "GPU backends",
            "not yet run on a GPU: the prepared one-command check is ready",
            "[docs/gpu-kernels.md](docs/gpu-kernels.md)",
        ),
    ]
    dev = m[0] if m else {}
    lines = ["| what | measured | where |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return (
        "\n".join(lines) + f"\n\nMachine: {dev.get('device', '?')}, {dev.get('threads', '?')} threads, "
        f"torch {dev.get('torch', '?')}. "
        "Each figure comes from the CSV named beside it in `benchmarks/results/`; the command that "
        "makes each CSV is in its `command` column and in "
        "[docs/benchmarks.md](docs/benchmarks.md#re-measuring-the-published-figures) (kernels, models) "
        "or [docs/training.md](docs/training.md) (accuracy, training)."
    )


TABLES: Dict[str, Callable[[], str]] = {
    "readme_results": table_readme_results,
    "model_cpu": table_model_cpu,
    "model_cpu_patterns": table_model_cpu_patterns,
    "attention_cpu": table_attention_cpu,
    "model_cpu_compiled": table_model_cpu_compiled,
    "model_cpu_breakdown": table_model_breakdown,
    "call_overhead": table_call_overhead,
    "cpu_kernels": table_cpu_kernels,
    "cpu_kernels_targets": table_cpu_kernels_targets,
    "cpu_kernels_minilm": table_cpu_kernels_minilm,
    "profile_example": table_profile_example,
    "accuracy_previous": table_accuracy_previous,
}


# ------------------------------------------------------------------ pages
def render(text: str) -> str:
    """``text`` with every marked table regenerated (an unknown name raises ValueError)."""
    cache: Dict[str, str] = {}

    def sub(m: "re.Match[str]") -> str:
        name = m.group(2)
        if name not in TABLES:
            raise ValueError(
                f"unknown table {name!r} in a <!-- table:... --> marker; known: {sorted(TABLES)}"
            )
        if name not in cache:
            cache[name] = TABLES[name]().rstrip("\n")
        return f"{m.group(1)}{cache[name]}\n{m.group(4)}"

    return MARKER.sub(sub, text)


def marked(text: str) -> List[str]:
    return [m.group(2) for m in MARKER.finditer(text)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if a page differs from what would be written")
    p.add_argument("--list", action="store_true", help="list the tables and the pages that hold them")
    args = p.parse_args(argv)
    stale = []
    for page in PAGES:
        text = page.read_text()
        if args.list:
            for name in marked(text):
                print(f"{page.relative_to(ROOT)}: {name}")
            continue
        new = render(text)
        if new == text:
            continue
        rel = page.relative_to(ROOT).as_posix()
        if args.check:
            stale.append(rel)
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), new.splitlines(True), rel, rel + " (generated)")
            )
        else:
            page.write_text(new)
            print(f"wrote {rel}")
    if stale:
        print(f"\nstale: {', '.join(stale)}; run `python scripts/gen_tables.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
