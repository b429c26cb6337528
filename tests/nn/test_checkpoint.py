"""save_pruned / save_pretrained / load_pruned: exact round trips, file sizes, atomic writes,
and clear errors for corrupted files and other architectures. The older packed directory
(``spd_model.safetensors`` + ``spd_pruned.json``, still read, and written for modules that are
not Hugging Face models) is written here with ``checkpoint._save_packed``."""

import copy
import json
import os
import struct

import pytest
import safetensors.torch
import torch
from tiny_models import out, tiny_model, token_ids

import spd_kernels as sk
from spd_kernels import checkpoint
from spd_kernels.nn import FusedActivation, MaskedLinear, SparseLinear


def _pruned(arch="bert", block=16, export=False, **kw):
    model = sk.sparsify(tiny_model(arch), block=block, density=0.5, **kw)
    return sk.export(model) if export else model


save_packed = checkpoint._save_packed
HF_FILES = {"config.json", "model.safetensors", "spd_sparsity.json", "spd_masks.safetensors"}


def _same_modules(a, b):
    ta = [(n, type(m).__name__) for n, m in a.named_modules()]
    tb = [(n, type(m).__name__) for n, m in b.named_modules()]
    return ta == tb


@pytest.mark.parametrize("packed", [False, True], ids=["pruned-model-dir", "packed-dir"])
@pytest.mark.parametrize("export", [False, True])
@pytest.mark.parametrize("block", [1, 16])
def test_round_trip_is_exact(tmp_path, export, block, packed):
    model = _pruned(block=block, export=export)
    ids = token_ids()
    report = (save_packed if packed else sk.save_pruned)(model, tmp_path / "m")
    assert set(report.files) == ({"spd_model.safetensors", "spd_pruned.json"} if packed else HF_FILES)
    loaded = sk.load_pruned(tmp_path / "m")
    assert _same_modules(model, loaded)
    # the pruned-model directory keeps the pruned weights as zeros: equal once the masks apply
    sd, sd2 = (
        m.state_dict() if packed else sk.densify(copy.deepcopy(m)).state_dict() for m in (model, loaded)
    )
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert torch.equal(out(loaded, ids), out(model, ids))
    assert sk.sparsity_config(loaded) == sk.sparsity_config(model)


def test_round_trip_keeps_scores_and_targets(tmp_path):
    model = _pruned(block=16, scores="sigmoid_threshold")
    layer = model.bert.encoder.layer[1].output.dense
    with torch.no_grad():
        layer.scores.normal_()
    layer.threshold = 0.4
    sk.save_pruned(model, tmp_path / "m")
    loaded = sk.load_pruned(tmp_path / "m")
    twin = loaded.bert.encoder.layer[1].output.dense
    assert twin.threshold == 0.4 and twin.score_mode == "sigmoid_threshold"
    assert torch.equal(twin.scores, layer.scores)
    ids = token_ids()
    assert torch.equal(out(loaded, ids), out(model, ids))


def test_load_into_a_given_model_of_the_same_architecture(tmp_path):
    model = _pruned("distilbert", export=True)
    save_packed(model, tmp_path / "m")
    target = tiny_model("distilbert", seed=5)
    loaded = sk.load_pruned(tmp_path / "m", model=target)
    assert loaded is target
    assert torch.equal(out(loaded, token_ids()), out(model, token_ids()))


def _data_bytes(path):
    with open(path, "rb") as f:
        (header,) = struct.unpack("<Q", f.read(8))
    return os.path.getsize(path) - 8 - header


def test_packed_file_size_is_density_times_dense_plus_index(tmp_path):
    dense = tiny_model()
    safetensors.torch.save_model(dense, str(tmp_path / "dense.safetensors"))
    model = _pruned(block=16, export=True)
    report = save_packed(model, tmp_path / "m")
    total = report.layers["total"]
    assert total["values"] == pytest.approx(total["density"] * total["dense"])
    assert total["density"] == pytest.approx(0.5)
    packed = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert total["index"] == sum((m.row_offsets.numel() + m.col_indices.numel()) * 4 for m in packed)
    # the tensor data of the file: dense model - dense weights + packed values + index arrays
    want = _data_bytes(tmp_path / "dense.safetensors") - total["dense"] + total["values"] + total["index"]
    assert _data_bytes(tmp_path / "m" / "spd_model.safetensors") == want
    # and the whole file within a header's worth (a few hundred bytes per tensor) of that
    size = report.files["spd_model.safetensors"]
    assert want < size < want + 200 * len(model.state_dict()) + 1024
    assert "packed values" in str(report)


def test_hf_save_pretrained_directory_round_trips(tmp_path):
    import transformers

    ids = token_ids()
    for export in (False, True):
        model = _pruned(block=16, export=export)
        d = tmp_path / f"hf{export}"
        report = sk.save_pretrained(model, d)
        assert {"config.json", "model.safetensors", "spd_sparsity.json", "spd_masks.safetensors"} <= set(
            report.files
        )
        # plain transformers: the dense-equivalent model, same outputs
        plain = transformers.AutoModelForSequenceClassification.from_pretrained(d).eval()
        assert not any(isinstance(m, (MaskedLinear, SparseLinear)) for m in plain.modules())
        torch.testing.assert_close(out(plain, ids), out(model, ids), rtol=0, atol=1e-5)
        # spd_kernels: the masked / packed model again
        back = sk.load_pruned(d)
        assert _same_modules(model, back)
        assert torch.equal(out(back, ids), out(model, ids))
        if export:
            assert any(isinstance(m, FusedActivation) for m in back.modules())


def test_failed_save_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = _pruned(block=16, export=True)
    target = tmp_path / "m"

    def broken_save(model, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_model", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_packed(model, target)
    assert list(tmp_path.iterdir()) == []  # no target, no temporary directory
    monkeypatch.undo()
    save_packed(model, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def broken_json(path, obj):
        raise RuntimeError("killed")

    monkeypatch.setattr(checkpoint, "_write_json", broken_json)
    other = _pruned(block=32, export=True)
    with pytest.raises(RuntimeError, match="killed"):
        save_packed(other, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # old save intact
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    monkeypatch.undo()
    assert torch.equal(out(sk.load_pruned(target), token_ids()), out(model, token_ids()))


def test_save_refuses_to_replace_unrelated_directories(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        sk.save_pruned(_pruned(), tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_corrupted_files_are_clear_errors(tmp_path):
    model = _pruned(block=16, export=True)
    d = tmp_path / "m"
    save_packed(model, d)
    f = d / "spd_model.safetensors"
    good = f.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    f.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="spd_model.safetensors is corrupted"):
        sk.load_pruned(d)
    f.write_bytes(good[: len(good) // 2])  # truncated, and unverified: safetensors' own check
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        sk.load_pruned(d, verify=False)
    f.write_bytes(good)
    (d / "spd_pruned.json").write_text("{not json")
    with pytest.raises(ValueError, match="spd_pruned.json is corrupted"):
        sk.load_pruned(d)
    with pytest.raises(ValueError, match="not a pruned-model directory"):
        sk.load_pruned(tmp_path)


def test_other_architecture_is_a_clear_error(tmp_path):
    save_packed(_pruned("bert", export=True), tmp_path / "bert")
    save_packed(_pruned("distilbert", export=True), tmp_path / "distil")
    with pytest.raises(ValueError, match="saved from a BertForSequenceClassification, not a DistilBert"):
        sk.load_pruned(tmp_path / "bert", model=tiny_model("distilbert"))
    bigger = tiny_model("bert")
    bigger.config.intermediate_size = 256
    with pytest.raises(ValueError, match="another configuration.*intermediate_size"):
        sk.load_pruned(tmp_path / "bert", model=bigger)
    # the tensors of another architecture under a BERT manifest
    src = (tmp_path / "distil" / "spd_model.safetensors").read_bytes()
    (tmp_path / "bert" / "spd_model.safetensors").write_bytes(src)
    with pytest.raises(ValueError, match="corrupted or was replaced"):
        sk.load_pruned(tmp_path / "bert")
    with pytest.raises(ValueError, match="does not fit BertForSequenceClassification"):
        sk.load_pruned(tmp_path / "bert", verify=False)
    # a manifest naming a class transformers does not have
    man = json.loads((tmp_path / "distil" / "spd_pruned.json").read_text())
    man["architecture"] = "NotAModel"
    (tmp_path / "distil" / "spd_pruned.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match="'NotAModel' is not a transformers model class"):
        sk.load_pruned(tmp_path / "distil")


def test_layer_record_mismatch_names_the_layer(tmp_path):
    save_packed(_pruned("bert", export=True), tmp_path / "m")
    man = json.loads((tmp_path / "m" / "spd_pruned.json").read_text())
    rec = man["layers"].pop("bert.encoder.layer.0.output.dense")
    man["layers"]["bert.encoder.layer.0.output.LayerNorm"] = rec
    (tmp_path / "m" / "spd_pruned.json").write_text(json.dumps(man))
    with pytest.raises(ValueError, match=r"layer 'bert\.encoder\.layer\.0\.output\.LayerNorm' as Linear"):
        sk.load_pruned(tmp_path / "m")
