"""Profiling results: the long-format CSV, the speedup arithmetic, a markdown table, a plot.

One row per measurement (``CSV_COLUMNS``, then any columns a benchmark adds, ``extra``).
Times are milliseconds; ``max_rel_err`` is the row's max |out - ref| / max |ref| against the
float64 dense product (checked before timing); ``command`` is the command line that produced
the row. Every
benchmark script and ``spd profile`` write this schema. The speedup of a row is

    speedup_vs_best_dense = best_dense_p50 / p50,   best_dense_p50 = min p50 of the dense rows
                                                      (``DENSE_IMPLS``: torch eager / compiled,
                                                      ONNX Runtime plain / fused, spinning
                                                      off / on)

over the rows with the same op, dtype and shape (M, N, K), so > 1 means faster than the best
dense implementation that was measured; dense rows get their own ratio (<= 1).
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

CSV_COLUMNS = (
    "op",
    "impl",
    "backend",
    "layout",
    "block",
    "sparsity",
    "density",
    "dtype",
    "shape",
    "M",
    "N",
    "K",
    "p20_ms",
    "p50_ms",
    "p80_ms",
    "samples",
    "speedup_vs_best_dense",
    "max_rel_err",
    "status",
    "note",
    "device",
    "threads",
    "torch",
    "triton",
    "cuda",
    "timestamp",
    "command",
)
# legend names in the plot (others: the impl itself)
IMPL_LABELS = {"spd_kernels": "spd_kernels", "torch_sparse": "torch.sparse"}
DENSE_IMPLS = (
    "dense_eager",
    "dense_eager_attention",
    "dense_compiled",
    "onnxruntime",
    "onnxruntime_spin",
    "onnxruntime_fused",
    "onnxruntime_fused_spin",
)
Row = Dict[str, object]


def _f(v) -> float:
    """A CSV cell as a float (NaN when empty)."""
    if v is None or v == "":
        return math.nan
    return float(v)


def _key(r: Mapping) -> Tuple:
    return (r["op"], r["dtype"], r["shape"], int(r["M"]), int(r["N"]), int(r["K"]))


def best_dense_p50(rows: Iterable[Mapping]) -> Dict[Tuple, float]:
    """(op, dtype, shape, M, N, K) -> min p50 (ms) over the dense rows that ran."""
    best: Dict[Tuple, float] = {}
    for r in rows:
        if r.get("impl") in DENSE_IMPLS and r.get("status") == "ok":
            p = _f(r["p50_ms"])
            if p > 0 and not math.isnan(p):
                k = _key(r)
                best[k] = min(best.get(k, math.inf), p)
    return best


def add_speedups(rows: List[Row]) -> List[Row]:
    """Fill ``speedup_vs_best_dense`` in place (empty where no dense row or the row did not run)."""
    best = best_dense_p50(rows)
    for r in rows:
        p = _f(r.get("p50_ms"))
        b = best.get(_key(r))
        ok = r.get("status") == "ok" and b is not None and p > 0
        r["speedup_vs_best_dense"] = b / p if ok else ""
    return rows


def add_speedups_vs(
    rows: List[Row], impl: str = "torch_sparse", column: str = "speedup_vs_torch_sparse"
) -> List[Row]:
    """Fill ``column`` of the spd_kernels rows in place: p50 of the ``impl`` row of the same case
    (op, dtype, shape, M, N, K, layout, sparsity) / the row's p50; rows without one keep theirs."""
    theirs = {
        _key(r) + (str(r["layout"]), _f(r["sparsity"])): _f(r["p50_ms"])
        for r in rows
        if r.get("impl") == impl and r.get("status") == "ok"
    }
    for r in rows:
        if r.get("impl") == "spd_kernels" and r.get("status") == "ok":
            t = theirs.get(_key(r) + (str(r["layout"]), _f(r["sparsity"])))
            if t is not None and _f(r["p50_ms"]) > 0:
                r[column] = t / _f(r["p50_ms"])
    return rows


# ------------------------------------------------------------------ CSV
def _cell(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_csv(rows: Sequence[Mapping], path, extra: Sequence[str] = ()) -> str:
    """Write ``rows`` with the columns ``CSV_COLUMNS`` + ``extra`` (missing cells empty, floats
    to 6 significant digits); written to a temporary file first, so a reader never sees half."""
    columns = list(CSV_COLUMNS) + [c for c in extra if c not in CSV_COLUMNS]
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: _cell(r.get(c, "")) for c in columns})
    os.replace(tmp, path)
    return path


def read_csv(path) -> List[Row]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def command_line(script: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command that reproduces a run: ``python <script> <args>`` (``sys.argv[1:]`` when
    ``argv`` is None), shell-quoted."""
    import shlex
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", script, *(shlex.quote(str(a)) for a in args)])


def base_row(env: Mapping[str, str], command: str = "", **cells) -> Row:
    """A row of the schema with every column empty but the environment, command and ``cells``."""
    row: Row = {c: "" for c in CSV_COLUMNS}
    row.update(env)
    row["command"] = command
    row.update(cells)
    return row


# ------------------------------------------------------------------ markdown
def machine_line(rows: Sequence[Mapping]) -> str:
    r = rows[0] if rows else {}
    backends = sorted(
        {str(x["backend"]) for x in rows if x.get("impl") == "spd_kernels" and x.get("backend")}
    )
    cuda = f", CUDA {r['cuda']}" if r.get("cuda") else ""
    ours = f"; spd_kernels backend: {', '.join(backends)}" if backends else ""
    return (
        f"machine: {r.get('device', '?')}, threads={r.get('threads', '?')}; torch {r.get('torch', '?')}, "
        f"triton {r.get('triton') or '?'}{cuda}{ours}; {r.get('timestamp', '')}"
    )


def _ms(r: Optional[Mapping], notes: List[str]) -> str:
    if r is None:
        return "–"
    if r.get("status") != "ok":
        reason = f"{r.get('status')}: {r.get('note')}"
        if reason not in notes:
            notes.append(reason)
        return f"{r.get('status')} [{notes.index(reason) + 1}]"
    return f"{_f(r['p50_ms']):.3g}"


def _x(r: Optional[Mapping]) -> str:
    if r is None or r.get("speedup_vs_best_dense") in ("", None):
        return "–"
    return f"{_f(r['speedup_vs_best_dense']):.2f}×"


def markdown_table(rows: Sequence[Mapping]) -> str:
    """One line per (op, shape, dtype, layout, sparsity): p50 of each implementation (ms) and the
    speedups vs the best dense p50; reasons for skipped/failed cells as numbered notes."""
    dense: Dict[Tuple, Dict[str, Mapping]] = {}
    sparse: Dict[Tuple, Dict[str, Mapping]] = {}
    for r in rows:
        k = _key(r)
        if r.get("impl") in DENSE_IMPLS:
            dense.setdefault(k, {})[str(r["impl"])] = r
        else:
            sk = k + (str(r["layout"]), _f(r["sparsity"]))
            sparse.setdefault(sk, {})[str(r["impl"])] = r
    notes: List[str] = []
    head = (
        "| op | shape | M×N×K | dtype | layout | sparsity | spd_kernels ms | torch.sparse ms "
        "| dense eager ms | dense compiled ms | speedup spd_kernels | speedup torch.sparse |"
    )
    lines = [head, "|" + "---|" * 12]
    for sk_, impls in sparse.items():
        op, dtype, shape, m, n, k, layout, s = sk_
        d = dense.get(sk_[:6], {})
        ours, ts = impls.get("spd_kernels"), impls.get("torch_sparse")
        lines.append(
            f"| {op} | {shape} | {m}×{n}×{k} | {dtype} | {layout} | {s:g} | {_ms(ours, notes)} "
            f"| {_ms(ts, notes)} | {_ms(d.get('dense_eager'), notes)} "
            f"| {_ms(d.get('dense_compiled'), notes)} "
            f"| {_x(ours)} | {_x(ts)} |"
        )
    return _with_notes(lines, notes)


def _with_notes(lines: List[str], notes: List[str]) -> str:
    """The table's lines, then its numbered notes (why cells did not run)."""
    return "\n".join(lines + ([""] + [f"[{i + 1}] {n}" for i, n in enumerate(notes)] if notes else []))


def model_markdown_table(rows: Sequence[Mapping]) -> str:
    """End-to-end model rows: one line per (model, op, implementation)."""
    notes: List[str] = []
    lines = [
        "| model | op | tokens | impl | sparsity | p20 ms | p50 ms | p80 ms | speedup |",
        "|" + "---|" * 9,
    ]
    for r in rows:
        ok = r.get("status") == "ok"
        p20 = f"{_f(r['p20_ms']):.3g}" if ok else "–"
        p80 = f"{_f(r['p80_ms']):.3g}" if ok else "–"
        s = r.get("sparsity")
        s = "" if s in ("", None) else f"{_f(s):.3f}"
        lines.append(
            f"| {r['shape']} | {r['op']} | {r['M']} | {r['impl']} | {s} "
            f"| {p20} | {_ms(r, notes)} | {p80} | {_x(r)} |"
        )
    return _with_notes(lines, notes)


def markdown_report(
    rows: Sequence[Mapping],
    command: Optional[str] = None,
    table: Optional[str] = None,
    legend: str = "p50 in ms (p20/p80 in the CSV); speedup = p50 of the fastest dense implementation / p50.",
) -> str:
    """The table with the machine line and the command that produced it (``None``: the rows'
    ``command``)."""
    if command is None:
        command = str(rows[0].get("command", "")) if rows else ""
    return (
        f"{machine_line(rows)}\n\ncommand: `{command}`\n\n"
        + (legend + "\n\n" if legend else "")
        + (table if table is not None else markdown_table(rows))
        + "\n"
    )


# ------------------------------------------------------------------ plot
def _geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def plot_speedup(rows: Sequence[Mapping], path: str, title: Optional[str] = None) -> str:
    """PNG of speedup vs sparsity: one panel per op, one line per layout (solid: spd_kernels,
    dotted: torch.sparse), the ideal 1/density line and the dense break-even line. Several
    shapes are summarised by their geometric mean."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state (renders with Agg)

    pts: Dict[Tuple, Dict[float, List[float]]] = {}
    shapes_per_op: Dict[str, set] = {}
    ops: List[str] = []
    layouts: List[str] = []
    dtypes: List[str] = []
    # several backends of our kernels in one file (e.g. cuda and reference): one line each
    ours = {str(r.get("backend")) for r in rows if r.get("impl") == "spd_kernels"}
    for r in rows:
        if r.get("impl") in DENSE_IMPLS:
            continue
        op = str(r["op"])
        if op not in ops:
            ops.append(op)
        if str(r["layout"]) not in layouts:
            layouts.append(str(r["layout"]))
        if str(r["dtype"]) not in dtypes:
            dtypes.append(str(r["dtype"]))
        sp = r.get("speedup_vs_best_dense")
        if r.get("status") != "ok" or sp in ("", None) or not _f(sp) > 0:
            continue
        shapes_per_op.setdefault(op, set()).add(str(r["shape"]))
        impl = str(r["impl"])
        if impl == "spd_kernels" and len(ours) > 1:
            impl = f"spd_kernels ({r.get('backend')})"
        key = (op, impl, str(r["layout"]), str(r["dtype"]))
        pts.setdefault(key, {}).setdefault(_f(r["sparsity"]), []).append(_f(sp))

    n = max(1, len(ops))
    ncols = min(n, 2)
    nrows = (n + ncols - 1) // ncols
    width, height = 6.5 * ncols, 4.4 * nrows + 0.6
    fig = Figure(figsize=(width, height))
    # margins fixed in inches: the constrained layout engine costs seconds on a busy machine
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, bottom=0.6 / height, top=1 - 0.75 / height,
                        wspace=0.22, hspace=0.35)  # fmt: skip
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = {lay: f"C{i % 10}" for i, lay in enumerate(layouts)}
    markers = {d: m for d, m in zip(dtypes, "osD^v<>p*h")}
    for ax, op in zip(axes, ops or ["(no data)"]):
        xs_all: List[float] = []
        for (o, impl, lay, dt), by_s in pts.items():
            if o != op:
                continue
            xs = sorted(by_s)
            ys = [_geomean(by_s[x]) for x in xs]
            xs_all += xs
            label = f"{IMPL_LABELS.get(impl, impl)} {lay}"
            if len(dtypes) > 1:
                label += f" {dt}"
            ax.plot(
                xs,
                ys,
                color=colors[lay],
                linestyle="-" if impl.startswith("spd_kernels") else ":",
                marker=markers[dt],
                label=label,
            )
        if xs_all:
            lo, hi = min(xs_all), min(max(xs_all), 0.99)
            lo = min(lo, hi)
            grid = [lo + (hi - lo) * i / 99 for i in range(100)]
            ax.plot(grid, [1.0 / (1.0 - x) for x in grid], "k--", linewidth=1, label="ideal 1/density")
            ax.axhline(1.0, color="0.5", linewidth=0.8, label="dense (best of eager, compiled)")
            ax.set_yscale("log")
            nshape = len(shapes_per_op.get(op, ()))
            extra = f" (geo-mean of {nshape} shapes)" if nshape > 1 else ""
            ax.set_title(f"{op}{extra}")
            ax.legend(fontsize="small")
        else:
            ax.set_title(f"{op}: no successful timings")
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("sparsity (fraction of weights pruned)")
        ax.set_ylabel("speedup vs best dense p50 (×)")
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[len(ops or [0]) :]:
        ax.set_visible(False)
    if title is None and rows:
        title = machine_line(rows)
    if title:
        fig.suptitle(textwrap.fill(title, width=int(width * 15)), fontsize="small")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
