"""SIGKILL inside a checkpoint or pruned-model directory write leaves the previous one loadable
(and verified), and a refused load touches no weight.

The writers save version 0, then version 1 with ``SPD_TEST_STOP_AT`` naming a point inside the
write (spd_kernels.checkpoint's test hook): the process stops itself there, the test checks that
the new version is half-done on disk (the write was in progress), then SIGKILLs it."""

import os
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import out, tiny_model, token_ids

import spd_kernels as sk
from helpers import stopped_inside_write
from spd.checkpoint import check_fingerprint, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# version 0 is saved whole; the stop point is armed for version 1 only
CHECKPOINT_WRITER = """
import os, sys, torch
from spd.checkpoint import save_checkpoint
path, point = sys.argv[1], os.environ.pop("SPD_TEST_STOP_AT")
for i in range(2):
    save_checkpoint(path, {"i": i}, {"w": torch.full((1 << 16,), float(i))})
    os.environ["SPD_TEST_STOP_AT"] = point
raise SystemExit("version 1 was saved without stopping")
"""
DIRECTORY_WRITER = """
import os, sys, torch
sys.path.insert(0, sys.argv[2])
import spd_kernels as sk
from tiny_models import tiny_model
path, point = sys.argv[1], os.environ.pop("SPD_TEST_STOP_AT")
model = sk.sparsify(tiny_model(), block=16, density=0.5)
for i in range(2):
    with torch.no_grad():
        model.classifier.bias.fill_(float(i))
    sk.save_pretrained(model, path)
    os.environ["SPD_TEST_STOP_AT"] = point
raise SystemExit("version 1 was saved without stopping")
"""


def _env():
    path = os.pathsep.join([ROOT, os.path.join(ROOT, "python")])
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")


def test_checkpoint_killed_inside_its_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint-last.safetensors"
    cmd = [sys.executable, "-c", CHECKPOINT_WRITER, str(path)]
    with stopped_inside_write(cmd, _env(), "file:written") as proc:
        # stopped with version 1 complete in its temporary file, not yet moved over version 0
        tmp = tmp_path / f".{path.name}.tmp.{proc.pid}"
        assert torch.equal(load_file(tmp)["w"], torch.full((1 << 16,), 1.0))
        assert load_checkpoint(str(path))[0] == {"i": 0}
    state, tensors = load_checkpoint(str(path))  # sha256 verified: not torn
    assert state == {"i": 0} and torch.equal(tensors["w"], torch.zeros(1 << 16))


def _bias(path):
    model = sk.load_pruned(path)  # every file checked against the manifest's sha256
    return model.classifier.bias.detach()


@pytest.mark.parametrize("point", ["directory:written", "directory:moved-aside"])
def test_directory_save_killed_inside_its_write_leaves_the_previous_one(tmp_path, point):
    path = tmp_path / "best"
    cmd = [sys.executable, "-c", DIRECTORY_WRITER, str(path), os.path.join(ROOT, "tests", "nn")]
    with stopped_inside_write(cmd, _env(), point):
        (tmp,) = tmp_path.glob(".best.tmp-*")  # version 1, complete, in its temporary directory
        assert torch.all(load_file(tmp / "model.safetensors")["classifier.bias"] == 1.0)
        if point == "directory:written":  # nothing renamed yet
            assert not list(tmp_path.glob(".best.old-*")) and torch.all(_bias(path) == 0.0)
        else:  # version 0 moved aside, nothing at the target
            assert not path.exists() and len(list(tmp_path.glob(".best.old-*"))) == 1
    assert torch.all(_bias(path) == 0.0)  # (a load puts a moved-aside version 0 back first)
    assert path.is_dir() and not list(tmp_path.glob(".best.old-*"))


def test_a_save_killed_between_its_renames_is_recovered(tmp_path):
    model = sk.sparsify(tiny_model(), block=16, density=0.5)
    path = tmp_path / "best"
    sk.save_pretrained(model, path)
    os.rename(path, tmp_path / ".best.old-x1")  # the old directory moved aside, the new one not in
    (tmp_path / ".best.tmp-x1").mkdir()  # a half-written new one
    assert torch.equal(out(sk.load_pruned(path), token_ids()), out(model, token_ids()))
    sk.save_pretrained(model, path)  # and a later save replaces it as usual
    assert not list(tmp_path.glob(".best.old-*"))


def test_refused_loads_touch_no_weight(tmp_path):
    from spd_kernels import checkpoint

    checkpoint._save_packed(sk.export(sk.sparsify(tiny_model("bert"), block=16, density=0.5)), tmp_path / "p")
    sk.save_pretrained(sk.sparsify(tiny_model("bert"), block=16, density=0.5), tmp_path / "hf")
    for target, directory, message in [
        (tiny_model("distilbert"), "p", "different architecture"),
        (tiny_model("bert", seed=3), "hf", "load it without model="),
        (sk.sparsify(tiny_model("bert", seed=3), block=16, density=0.25), "p", "already has sparse layers"),
    ]:
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(ValueError, match=message):
            sk.load_pruned(tmp_path / directory, model=target)
        after = target.state_dict()
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="different run.*sparsity"):
        check_fingerprint({"sparsity": 0.9, "model": "m"}, {"sparsity": 0.5, "model": "m"}, "ckpt")
