"""The timing harness: warm-up, enough samples, ordered percentiles, thread setting restored."""

import time

import numpy as np
import pytest
import torch

from spd_kernels.profiling import percentiles, time_callable
from spd_kernels.profiling.timing import environment, torch_threads


def test_percentiles_match_numpy_linear():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 0.5]
    assert percentiles(xs) == pytest.approx(tuple(np.percentile(xs, [20, 50, 80])))
    assert percentiles([2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        percentiles([])


def test_time_callable_warms_up_and_takes_enough_samples():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    t = time_callable(fn, warmup=3, min_run_time=0.01, min_samples=4, threads=1)
    assert t.samples >= 4
    assert len(calls) >= 3 + t.samples
    assert 0.002 <= t.p20 <= t.p50 <= t.p80 < 1.0
    assert t.method == "torch.utils.benchmark"
    assert set(t.ms()) == {"p20_ms", "p50_ms", "p80_ms"}


def test_fast_calls_are_timed_in_blocks():
    x = torch.randn(8, 8)
    t = time_callable(lambda: x + 1, warmup=1, min_run_time=0.01, min_samples=3)
    assert t.samples >= 3 and 0 < t.p50 < 1e-3


def test_threads_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kw", [dict(warmup=-1), dict(min_run_time=0), dict(min_samples=0)])
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        time_callable(lambda: None, **kw)


def test_environment_line():
    env = environment("cpu", threads=1)
    assert env["torch"] == torch.__version__ and env["threads"] == "1"
    assert env["device"] and env["timestamp"] and env["triton"]
