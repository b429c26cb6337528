"""Census of damaged and hostile files on disk: training checkpoints, the pruned-model directory
(and its older layouts), the teacher-output cache, a model directory with pickle weights. Each row
damages a fresh copy of a good file and names the error type and a message fragment (which names
the file). Pickles are never loaded: every row also checks that the crafted pickle's code did
not run."""

import json
import os
import pickle
import shutil

import pytest
import torch
from safetensors.torch import save_file
from spd_tiny import tiny_bert
from tiny_models import tiny_model

import spd_kernels as sk
from helpers import assert_clear_error, census
from spd import data as D
from spd.checkpoint import load_checkpoint, save_checkpoint, tensors_digest
from spd.models import inference_state, load_model, load_pretrained, make_prunable, model_spec
from spd.teacher_cache import TeacherCache

MARKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "PICKLE_CODE_RAN")


class _Evil:
    """Unpickling this runs code: it would create MARKER."""

    def __reduce__(self):
        return (open, (MARKER, "w"))


EVIL = pickle.dumps(_Evil())
TEACHER_CACHE = {}  # the teacher and split the cache was built from, its folder (set by `pristine`)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    p = tmp_path_factory.mktemp("pristine")
    save_checkpoint(str(p / "ckpt.safetensors"), {"step": 3}, {"w": torch.arange(1000.0)})
    sk.save_pretrained(sk.sparsify(tiny_model(), block=16, density=0.5), p / "hf")
    # the older spd layout: spd_model.json + the full state dict
    old = tiny_bert(hidden=32, intermediate=64)
    make_prunable(old)
    old.config.save_pretrained(p / "spec")
    save_file(inference_state(old), str(p / "spec" / "model.safetensors"))
    (p / "spec" / "spd_model.json").write_text(json.dumps(model_spec(old)))
    # a teacher-output cache
    teacher = tiny_bert(vocab=64).eval()
    ids = torch.randint(5, 60, (40,))
    split = D.EncodedSplit(ids, torch.zeros_like(ids), torch.arange(0, 41, 10), torch.tensor([0, 1, 0, 1]))
    cache = TeacherCache(teacher, split, ("logits",), str(p / "tc")).prepare()
    TEACHER_CACHE.update(teacher=teacher, split=split, rel=os.path.relpath(cache.dir, p))
    os.makedirs(p / "pickled")
    tiny_bert().config.save_pretrained(p / "pickled")
    (p / "pickled" / "pytorch_model.bin").write_bytes(EVIL)
    return p


@pytest.fixture
def d(pristine, tmp_path):
    shutil.copytree(pristine, tmp_path / "f")
    return tmp_path / "f"


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(path, at=-10):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def _json(path, change):
    man = json.loads(path.read_text())
    change(man)
    path.write_text(json.dumps(man))


def ckpt(damage):
    def case(d):
        damage(d / "ckpt.safetensors")
        return lambda: load_checkpoint(str(d / "ckpt.safetensors"))

    return case


def hf(name, damage, verify=True):
    def case(d):
        damage(d / "hf" / name)
        return lambda: sk.load_pruned(d / "hf", verify=verify)

    return case


def spec(name, damage):
    def case(d):
        damage(d / "spec" / name)
        return lambda: load_model(str(d / "spec"))

    return case


def cache(damage):
    def case(d):
        damage(d / TEACHER_CACHE["rel"])
        t = TEACHER_CACHE
        return lambda: TeacherCache(t["teacher"], t["split"], ("logits",), str(d / "tc")).load()

    return case


def _shard(directory):
    return directory / "shard-00000.safetensors"


def _bad_state(path):
    tensors = {"w": torch.arange(3.0)}
    meta = {"format": "spd-checkpoint", "version": "1", "sha256": tensors_digest(tensors), "state": "{bad"}
    save_file(tensors, str(path), metadata=meta)


CASES = [
    # training checkpoint (spd.checkpoint.load_checkpoint)
    (
        "checkpoint: truncated",
        ckpt(_truncate),
        ValueError,
        "ckpt.safetensors: corrupt or truncated checkpoint",
    ),
    (
        "checkpoint: a flipped data byte",
        ckpt(_flip),
        ValueError,
        "ckpt.safetensors: corrupt checkpoint (tensor checksum",
    ),
    (
        "checkpoint: flipped header byte",
        ckpt(lambda p: _flip(p, 20)),
        ValueError,
        "ckpt.safetensors: corrupt",
    ),
    (
        "checkpoint: empty file",
        ckpt(lambda p: p.write_bytes(b"")),
        ValueError,
        "ckpt.safetensors: corrupt or truncated",
    ),
    (
        "checkpoint: a text file",
        ckpt(lambda p: p.write_text("hello")),
        ValueError,
        "ckpt.safetensors: corrupt or",
    ),
    (
        "checkpoint: a pickle",
        ckpt(lambda p: p.write_bytes(EVIL)),
        ValueError,
        "ckpt.safetensors: corrupt or truncated",
    ),
    (
        "checkpoint: another kind of file",
        ckpt(lambda p: save_checkpoint(str(p), {}, {"w": torch.zeros(2)}, fmt="x")),
        ValueError,
        "ckpt.safetensors: not an spd-checkpoint file (format 'x')",
    ),
    (
        "checkpoint: state not JSON",
        ckpt(_bad_state),
        ValueError,
        "ckpt.safetensors: corrupt checkpoint state",
    ),
    ("checkpoint: missing", ckpt(os.remove), FileNotFoundError, "no checkpoint at"),
    # the pruned-model directory (sk.load_pruned)
    (
        "model dir: model.safetensors truncated",
        hf("model.safetensors", _truncate),
        ValueError,
        "model.safetensors is corrupted or was replaced",
    ),
    (
        "model dir: model.safetensors a pickle",
        hf("model.safetensors", lambda p: p.write_bytes(EVIL)),
        ValueError,
        "model.safetensors is corrupted or was replaced",
    ),
    (
        "model dir: a flipped mask byte",
        hf("spd_masks.safetensors", _flip),
        ValueError,
        "spd_masks.safetensors is corrupted",
    ),
    (
        "model dir: masks truncated, unverified",
        hf("spd_masks.safetensors", _truncate, verify=False),
        ValueError,
        "spd_masks.safetensors is not a valid safetensors file",
    ),
    (
        "model dir: masks missing",
        hf("spd_masks.safetensors", os.remove),
        ValueError,
        "spd_masks.safetensors is missing",
    ),
    (
        "model dir: config.json edited",
        hf("config.json", lambda p: _json(p, lambda c: c.update(hidden_size=8))),
        ValueError,
        "config.json is corrupted or was replaced",
    ),
    (
        "model dir: manifest not JSON",
        hf("spd_sparsity.json", lambda p: p.write_text("{not json")),
        ValueError,
        "spd_sparsity.json is corrupted (not valid JSON",
    ),
    (
        "model dir: manifest a list",
        hf("spd_sparsity.json", lambda p: p.write_text("[]")),
        ValueError,
        "spd_sparsity.json is not a spd_kernels.hf_sparsity manifest",
    ),
    (
        "model dir: manifest of a future version",
        hf("spd_sparsity.json", lambda p: _json(p, lambda m: m.update(format_version=99))),
        ValueError,
        "spd_sparsity.json has format_version 99",
    ),
    (
        "model dir: manifest lists no files",
        hf("spd_sparsity.json", lambda p: _json(p, lambda m: m.pop("files"))),
        ValueError,
        "the manifest lists no files",
    ),
    (
        "model dir: manifest binary",
        hf("spd_sparsity.json", lambda p: p.write_bytes(b"\xff\xfe\x00")),
        ValueError,
        "spd_sparsity.json is corrupted",
    ),
    # the older spd layout (spd.models.load_model)
    (
        "old model dir: spd_model.json not JSON",
        spec("spd_model.json", lambda p: p.write_text("{")),
        ValueError,
        "spd_model.json: not a readable spd model description",
    ),
    (
        "old model dir: weights truncated",
        spec("model.safetensors", _truncate),
        ValueError,
        "model.safetensors: unreadable weights",
    ),
    (
        "old model dir: weights a pickle",
        spec("model.safetensors", lambda p: p.write_bytes(EVIL)),
        ValueError,
        "model.safetensors: unreadable weights",
    ),
    # the teacher-output cache
    (
        "teacher cache: manifest not JSON",
        cache(lambda c: (c / "manifest.json").write_text("{")),
        ValueError,
        "manifest.json: unreadable teacher-cache manifest",
    ),
    (
        "teacher cache: manifest a list",
        cache(lambda c: (c / "manifest.json").write_text("[]")),
        ValueError,
        "manifest.json: not a teacher-cache manifest",
    ),
    (
        "teacher cache: shard outside the cache",
        cache(
            lambda c: _json(
                c / "manifest.json", lambda m: m["shards"][0].update(file="../../ckpt.safetensors")
            )
        ),
        ValueError,
        "malformed shard record",
    ),
    (
        "teacher cache: shard truncated",
        cache(lambda c: _truncate(_shard(c))),
        ValueError,
        "shard-00000.safetensors: teacher-cache shard has",
    ),
    (
        "teacher cache: a flipped shard byte",
        cache(lambda c: _flip(_shard(c))),
        ValueError,
        "shard-00000.safetensors: corrupt checkpoint (tensor checksum mismatch)",
    ),
    (
        "teacher cache: shard a pickle of the same size",
        cache(lambda c: _shard(c).write_bytes(EVIL.ljust(_shard(c).stat().st_size, b"."))),
        ValueError,
        "shard-00000.safetensors: corrupt or truncated",
    ),
    # a model directory whose weights are a pickle
    (
        "model: pytorch_model.bin only",
        lambda d: lambda: load_pretrained(str(d / "pickled"), 2),
        ValueError,
        "holds its weights only as pickle files ['pytorch_model.bin']",
    ),
    (
        "model: pytorch_model.bin only, sk.load_pruned",
        lambda d: lambda: sk.load_pruned(d / "pickled"),
        ValueError,
        "not a pruned-model directory",
    ),
]


@census(CASES)
def test_bad_file(d, call, error, fragment):
    assert_clear_error(call(d), error, fragment)
    assert not os.path.exists(MARKER), "a pickle was loaded: its code ran"


def test_the_crafted_pickle_would_run_code(tmp_path):
    """The control: unpickling EVIL does run code, so the rows above show it was never loaded."""
    try:
        pickle.loads(EVIL)
        assert os.path.exists(MARKER)
    finally:
        if os.path.exists(MARKER):
            os.remove(MARKER)
