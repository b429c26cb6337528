"""SIGKILL while a checkpoint or a pruned-model directory is being written leaves the previous
one loadable (and verified), and a refused load touches no weight."""

import os
import sys

import pytest
import torch
from tiny_models import out, tiny_model, token_ids

import spd_kernels as sk
from helpers import sigkill_when
from spd.checkpoint import check_fingerprint, load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The writers loop forever, each save a new version; "ready" appears after the first save.
CHECKPOINT_WRITER = """
import sys, torch
from spd.checkpoint import save_checkpoint
path, ready = sys.argv[1], sys.argv[2]
i = 0
while True:
    save_checkpoint(path, {"i": i}, {"w": torch.full((1 << 21,), float(i))})  # 8 MB a save
    if i == 0:
        open(ready, "w").close()
    i += 1
"""
DIRECTORY_WRITER = """
import sys, torch
sys.path.insert(0, sys.argv[3])
import spd_kernels as sk
from tiny_models import tiny_model
path, ready = sys.argv[1], sys.argv[2]
model = sk.sparsify(tiny_model(), block=16, density=0.5)
i = 0
while True:
    with torch.no_grad():
        model.classifier.bias.fill_(float(i))  # each save a new version
    sk.save_pretrained(model, path)
    if i == 0:
        open(ready, "w").close()
    i += 1
"""


def _kill_while_writing(code, target, tmp_path, delay, *args):
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "python")]), OMP_NUM_THREADS="1"
    )
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    sigkill_when([sys.executable, "-c", code, str(target), str(ready), *args], env, ready.exists, delay, 120)


@pytest.mark.parametrize("delay", [0.0, 0.3])
def test_killed_checkpoint_write_leaves_a_loadable_checkpoint(tmp_path, delay):
    path = tmp_path / "checkpoint-last.safetensors"
    _kill_while_writing(CHECKPOINT_WRITER, path, tmp_path, delay)
    state, tensors = load_checkpoint(str(path))  # sha256 verified: not torn
    assert torch.equal(tensors["w"], torch.full((1 << 21,), float(state["i"])))


@pytest.mark.parametrize("delay", [0.1])
def test_killed_directory_save_leaves_a_loadable_model(tmp_path, delay):
    path = tmp_path / "best"
    _kill_while_writing(DIRECTORY_WRITER, path, tmp_path, delay, os.path.join(ROOT, "tests", "nn"))
    model = sk.load_pruned(path)  # every file checked against the manifest's sha256
    i = float(model.classifier.bias.detach()[0])
    assert torch.all(model.classifier.bias == i) and i == int(i)


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
