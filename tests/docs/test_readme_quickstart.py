"""The README's quickstart runs as written and shows the sparsity it claims (~10 % stored)."""

import contextlib
import io
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quickstart_code() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    m = re.search(r"^## Quickstart\n.*?^```python\n(.*?)^```", text, re.S | re.M)
    assert m, "README.md has no python block under '## Quickstart'"
    return m.group(1)


def test_quickstart_runs_and_prints_a_density_near_one_tenth():
    out = io.StringIO()
    scope: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(quickstart_code(), "README.md#quickstart", "exec"), scope)
    printed = out.getvalue()
    density = float(re.search(r"density[= ]([0-9.]+)", printed).group(1))
    assert 0.07 <= density <= 0.13, printed
    W = scope["W"]
    assert W.layout == "bsr" and tuple(W.block) == (32, 32) and abs(W.density - density) < 0.006  # as printed
    assert scope["y"].shape == (8, 128, 3072) and scope["x"].grad is not None
