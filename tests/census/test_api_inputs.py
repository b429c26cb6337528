"""Census of bad inputs to the Python API (formats, products, layers, surgery, save/load): each
row is what was tried, the error type and a fragment of the message it must give."""

import torch
from tiny_models import tiny_model

import spd_kernels as sk
from helpers import assert_clear_error, census
from spd_kernels.nn import MaskedLinear, SparseLinear

W = sk.SparseMatrix.from_dense(torch.randn(64, 96), block=(32, 32))
X = torch.randn(5, 96)


def from_dense(weight=None, **kw):
    kw.setdefault("block", (16, 16))
    return lambda: sk.SparseMatrix.from_dense(torch.randn(32, 32) if weight is None else weight, **kw)


def linear(x=X, w=W, **kw):
    return lambda: sk.sparse_linear(x, w, **kw)


def masked(**kw):
    return lambda: MaskedLinear(96, 64, **kw)


CASES = [
    # SparseMatrix
    ("from_dense: weight a list", from_dense([[1.0]]), TypeError, "weight must be a torch.Tensor"),
    ("from_dense: weight 1-D", from_dense(torch.randn(8)), ValueError, "weight must be 2-D (N, K)"),
    ("from_dense: weight 3-D", from_dense(torch.randn(2, 8, 8)), ValueError, "weight must be 2-D (N, K)"),
    (
        "from_dense: weight int32",
        from_dense(torch.ones(8, 8, dtype=torch.int32)),
        TypeError,
        "floating tensor",
    ),
    (
        "from_dense: weight complex",
        from_dense(torch.randn(8, 8, dtype=torch.cfloat)),
        TypeError,
        "floating tensor",
    ),
    (
        "from_dense: block does not divide",
        from_dense(torch.randn(30, 32)),
        ValueError,
        "not divisible by block",
    ),
    ("from_dense: block 0", from_dense(block=(0, 16)), ValueError, "block sizes must be positive"),
    ("from_dense: block negative", from_dense(block=-1), ValueError, "block sizes must be positive"),
    ("from_dense: block a string", from_dense(block="32"), TypeError, "block must be an int or a pair"),
    (
        "from_dense: block of three",
        from_dense(block=(16, 16, 1)),
        TypeError,
        "block must be an int or a pair",
    ),
    ("from_dense: block float", from_dense(block=(16.0, 16)), TypeError, "block must be an int or a pair"),
    (
        "from_dense: mask float",
        from_dense(mask=torch.ones(32, 32)),
        TypeError,
        "mask must have dtype torch.bool",
    ),
    ("from_dense: mask a list", from_dense(mask=[[True]]), TypeError, "mask must be a torch.Tensor"),
    (
        "from_dense: mask shape",
        from_dense(mask=torch.ones(31, 32, dtype=torch.bool)),
        ValueError,
        "mask shape (31, 32) matches neither",
    ),
    (
        "with_values: wrong shape",
        lambda: W.with_values(torch.randn(1, 2, 3)),
        ValueError,
        "values must have shape",
    ),
    ("to: int dtype", lambda: W.to(dtype=torch.int64), TypeError, "dtype must be one of"),
    # products
    ("sparse_linear: x a list", linear(x=[[1.0] * 96]), TypeError, "x must be a torch.Tensor"),
    (
        "sparse_linear: weight dense",
        linear(w=torch.randn(64, 96)),
        TypeError,
        "must be a spd_kernels.SparseMatrix",
    ),
    ("sparse_linear: x 0-d", linear(x=torch.tensor(1.0)), ValueError, "got a 0-d tensor"),
    ("sparse_linear: x wrong K", linear(x=torch.randn(5, 95)), ValueError, "x has 95 features"),
    (
        "sparse_linear: x int",
        linear(x=torch.ones(5, 96, dtype=torch.long)),
        TypeError,
        "x must be a floating",
    ),
    ("sparse_linear: x float64, W float32", linear(x=X.double()), TypeError, "x has dtype torch.float64"),
    (
        "sparse_linear: bias wrong length",
        linear(bias=torch.randn(63)),
        ValueError,
        "bias must have shape (64,)",
    ),
    ("sparse_linear: bias 2-D", linear(bias=torch.randn(1, 64)), ValueError, "bias must have shape (64,)"),
    ("sparse_linear: bias float64", linear(bias=torch.randn(64).double()), TypeError, "bias has dtype"),
    ("sparse_linear: bias a list", linear(bias=[0.0] * 64), TypeError, "bias must be a torch.Tensor or None"),
    (
        "sparse_linear: unknown activation",
        linear(activation="swish"),
        ValueError,
        "activation must be one of",
    ),
    ("sparse_linear: activation not a str", linear(activation=3), ValueError, "activation must be one of"),
    (
        "sparse_input_grad: dy wrong N",
        lambda: sk.sparse_input_grad(torch.randn(5, 63), W),
        ValueError,
        "dy has 63 features",
    ),
    (
        "sparse_weight_grad: rows differ",
        lambda: sk.sparse_weight_grad(torch.randn(5, 64), torch.randn(4, 96), W),
        ValueError,
        "same leading dims",
    ),
    (
        "sparse_weight_grad: x wrong K",
        lambda: sk.sparse_weight_grad(torch.randn(5, 64), torch.randn(5, 95), W),
        ValueError,
        "x has 95 features",
    ),
    # backends
    (
        "use_backend: unknown name",
        lambda: sk.use_backend("fast").__enter__(),
        ValueError,
        "unknown backend 'fast'",
    ),
    # layers
    ("MaskedLinear: block does not divide", masked(block=(48, 48)), ValueError, "not divisible by block"),
    ("MaskedLinear: unknown score mode", masked(scores="random"), ValueError, "scores must be one of"),
    (
        "MaskedLinear: unknown sparse_path",
        masked(sparse_path="sometimes"),
        ValueError,
        "sparse_path must be one of",
    ),
    (
        "MaskedLinear.set_mask: float mask",
        lambda: MaskedLinear(96, 64).set_mask(torch.ones(64, 96)),
        TypeError,
        "mask must have dtype torch.bool",
    ),
    (
        "MaskedLinear.set_mask: wrong shape",
        lambda: MaskedLinear(96, 64).set_mask(torch.ones(64, 95).bool()),
        ValueError,
        "matches neither",
    ),
    (
        "MaskedLinear.from_linear: a Conv1d",
        lambda: MaskedLinear.from_linear(torch.nn.Conv1d(1, 1, 1)),
        TypeError,
        "expected an nn.Linear",
    ),
    (
        "MaskedLinear.prune_magnitude: density 1.5",
        lambda: MaskedLinear(96, 64).prune_magnitude(1.5),
        ValueError,
        "density must lie in [0, 1]",
    ),
    (
        "MaskedLinear.prune_magnitude: density nan",
        lambda: MaskedLinear(96, 64).prune_magnitude(float("nan")),
        ValueError,
        "density must lie in [0, 1]",
    ),
    (
        "SparseLinear.from_linear: mask shape",
        lambda: SparseLinear.from_linear(
            torch.nn.Linear(96, 64), mask=torch.ones(3, 3, dtype=torch.bool), block=(32, 32)
        ),
        ValueError,
        "matches neither",
    ),
    (
        "SparseLinear: unknown activation",
        lambda: SparseLinear.from_linear(torch.nn.Linear(96, 64), block=(32, 32), activation="tanh"),
        ValueError,
        "activation must be one of",
    ),
    (
        "SparseLinear: x wrong K",
        lambda: SparseLinear.from_linear(torch.nn.Linear(96, 64), block=(32, 32))(torch.randn(3, 95)),
        ValueError,
        "x has 95 features",
    ),
    # surgery
    (
        "sparsify: density 2",
        lambda: sk.sparsify(tiny_model(), density=2.0),
        ValueError,
        "density must lie in [0, 1]",
    ),
    ("sparsify: density -1", lambda: sk.sparsify(tiny_model(), density=-1.0), ValueError, "density must lie"),
    (
        "sparsify: block does not divide a layer",
        lambda: sk.sparsify(tiny_model(), block=(48, 48), density=0.5),
        ValueError,
        "is not divisible by block",
    ),
    (
        "sparsify: a plain Linear",
        lambda: sk.sparsify(torch.nn.Linear(3, 3), density=0.5),
        ValueError,
        "no module-name table for Linear",
    ),
    ("sparsify: a string", lambda: sk.sparsify("bert", density=0.5), TypeError, "model must be an nn.Module"),
    ("export: nothing sparsified", lambda: sk.export(tiny_model()), ValueError, "has no MaskedLinear layer"),
    (
        "set_masks: unknown layer",
        lambda: sk.set_masks(tiny_model(), {"nope": torch.ones(2, 2).bool()}),
        ValueError,
        "layer 'nope' is not a MaskedLinear",
    ),
    # save / load
    (
        "save_pruned: a string",
        lambda: sk.save_pruned("model", "/nonexistent/x"),
        TypeError,
        "must be an nn.Module",
    ),
    (
        "save_pretrained: a plain module",
        lambda: sk.save_pretrained(torch.nn.Linear(3, 3), "/nonexistent/x"),
        TypeError,
        "is not a Hugging Face model",
    ),
    (
        "load_pruned: missing directory",
        lambda: sk.load_pruned("/nonexistent/dir"),
        FileNotFoundError,
        "is not a directory",
    ),
    ("load_pruned: a file", lambda: sk.load_pruned(__file__), FileNotFoundError, "is not a directory"),
]


@census(CASES)
def test_bad_api_input(call, error, fragment):
    assert_clear_error(call, error, fragment)
