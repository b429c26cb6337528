"""Timing harness and profiler for the sparse kernels (``spd profile`` is its command line).

>>> from spd_kernels.profiling import time_callable
>>> t = time_callable(lambda: x @ w, device="cpu")        # Timing(p20, p50, p80, samples, method)
>>> from spd_kernels.profiling import ProfileSpec, run_profile, write_csv
>>> rows = run_profile(ProfileSpec(shapes=["128,384,384"], layouts=["bsr32"], sparsities=[0.9]))
"""

from .grid import OPS, PRESETS, Layout, ProfileSpec, Shape, parse_layout, parse_shape, plan, preset_shapes
from .report import (
    CSV_COLUMNS,
    add_speedups,
    add_speedups_vs,
    base_row,
    command_line,
    markdown_report,
    markdown_table,
    plot_speedup,
    read_csv,
    write_csv,
)
from .runner import run_plan, run_profile
from .timing import Timing, environment, percentiles, time_callable, time_interleaved, torch_threads

__all__ = [
    "CSV_COLUMNS",
    "Layout",
    "OPS",
    "PRESETS",
    "ProfileSpec",
    "Shape",
    "Timing",
    "add_speedups",
    "add_speedups_vs",
    "base_row",
    "command_line",
    "environment",
    "markdown_report",
    "markdown_table",
    "parse_layout",
    "parse_shape",
    "percentiles",
    "plan",
    "plot_speedup",
    "preset_shapes",
    "read_csv",
    "run_plan",
    "run_profile",
    "time_callable",
    "time_interleaved",
    "torch_threads",
    "write_csv",
]
