"""Where the sparse kernels start to beat the dense masked product: one table, one lookup.

:class:`~spd_kernels.nn.MaskedLinear` (with ``sparse_path="auto"``) computes through the sparse
kernels only when the density of its pattern is *below* the crossover measured for the backend
that would run the call, the layout of the pattern and the kind of call:

* ``"train"``: forward + backward (the weight needs a gradient),
* ``"infer"``: forward only (no autograd).

The numbers live in :mod:`spd_kernels.nn._crossover_table`, a file written by
``python benchmarks/bench_crossover.py`` (it records the machine and the command it came from).
A backend, layout or mode missing from the table has crossover 0: ``auto`` stays dense there.
Re-measure whenever a backend's kernels change.
"""

from __future__ import annotations

from typing import Dict, Tuple

from . import _crossover_table

MODES = ("train", "infer")


def layout_name(block: Tuple[int, int]) -> str:
    """``(1, 1)`` -> ``"csr"``, ``(32, 32)`` -> ``"bsr32"``, ``(16, 32)`` -> ``"bsr16x32"``."""
    bm, bk = int(block[0]), int(block[1])
    if (bm, bk) == (1, 1):
        return "csr"
    return f"bsr{bm}" if bm == bk else f"bsr{bm}x{bk}"


def crossover_table() -> Dict[str, Dict[str, Dict[str, float]]]:
    """backend -> layout -> mode -> density below which the sparse path is faster."""
    return _crossover_table.CROSSOVER


def crossover_density(backend: str, block: Tuple[int, int], mode: str) -> float:
    """The crossover density for ``backend`` on ``block``'s layout (0.0 when not measured)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return float(_crossover_table.CROSSOVER.get(backend, {}).get(layout_name(block), {}).get(mode, 0.0))


__all__ = ["MODES", "crossing", "crossover_density", "crossover_table", "layout_name", "table_source"]


def table_source(table: Dict[str, Dict[str, Dict[str, float]]], header=()) -> str:
    """A crossover table (backend -> layout -> mode or op -> density) as the Python source of the
    files the dispatch reads (``_crossover_table.py``, ``backends/_gpu_crossover.py``): the
    ``header`` lines as comments, then ``CROSSOVER``, one backend/layout per line."""
    lines = [f"# {h}" for h in header] + ["CROSSOVER = {" if table else "CROSSOVER = {}"]
    for backend, layouts in sorted(table.items()):
        lines.append(f'    "{backend}": {{')
        for layout, values in sorted(layouts.items()):
            inner = ", ".join(f'"{k}": {float(v)!r}' for k, v in sorted(values.items()))
            lines.append(f'        "{layout}": {{{inner}}},')
        lines.append("    },")
    return "\n".join(lines + (["}"] if table else [])) + "\n"


def crossing(points) -> float:
    """points: [(density, sparse time / dense time)] -> the density where the ratio crosses 1
    (linear between the last density where sparse wins and the first it loses; 1.0 if it
    always wins, 0.0 if it never does)."""
    last_win = None
    for d, ratio in sorted(points):
        if ratio >= 1.0:
            if last_win is None:
                return 0.0
            d0, r0 = last_win
            return round(d0 + (1.0 - r0) * (d - d0) / (ratio - r0), 4)
        last_win = (d, ratio)
    return 1.0 if last_win is not None else 0.0
