"""Every model directory ``spd`` writes (finetune best/ and final/, the prune stages' teacher/,
best/ and final/, export) is the one pruned-model directory: Hugging Face ``from_pretrained``
gives the *pruned* model (zeros baked in, the same outputs as spd's own loader), never the dense
weights beside their masks."""

import json

import pytest
import torch
from spd_tiny import save_tiny_model_dir, sentences, write_csv

import spd_kernels as sk
from spd.cli import main
from spd.models import load_model, prunable_linear_names

SPARSITY = 0.9


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("folders")
    save_tiny_model_dir(str(d / "model"), hidden=32, intermediate=64, dropout=0.0)
    rows = sentences(40, seed=7)
    for name, part in (("train", rows[:24]), ("dev", rows[24:32]), ("test", rows[32:])):
        write_csv(d / f"{name}.csv", part)
    data = ["--task", "files", "--train-file", str(d / "train.csv"), "--validation-file", str(d / "dev.csv"),
            "--test-file", str(d / "test.csv"), "--cache-dir", "none", "--no-progress", "--batch-size", "8",
            "--threads", "1"]  # fmt: skip
    ft = ["finetune", "--model", str(d / "model"), "--epochs", "1", "--output-dir", str(d / "ft")]
    assert main([*ft, *data]) == 0
    for method in ("spd", "movement"):  # spd runs its own stage 1 (teacher/); movement has scores
        assert main(["prune", "--method", method, "--model", str(d / "model"), "--sparsity", str(SPARSITY),
                     "--teacher-epochs", "1", "--prune-epochs", "2", "--final-epochs", "1",
                     "--update-every", "1", "--output-dir", str(d / method), *data]) == 0  # fmt: skip
    assert main(["export", str(d / "spd"), "--which", "final", "--output-dir", str(d / "exported")]) == 0
    return d


FOLDERS = {
    "ft/best": False, "ft/final": False, "spd/teacher": False, "spd/best": True, "spd/final": True,
    "movement/best": True, "movement/final": True, "exported": True,
}  # fmt: skip


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


@pytest.mark.parametrize("folder, pruned", FOLDERS.items())
def test_from_pretrained_gives_the_pruned_model(runs, folder, pruned):
    from transformers import AutoModelForSequenceClassification

    path = runs / folder
    hf = AutoModelForSequenceClassification.from_pretrained(path)
    ours, _ = load_model(str(path))
    ids = torch.randint(5, 40, (3, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(hf, ids), _logits(ours, ids), rtol=0, atol=1e-5)
    weights = [hf.get_submodule(n).weight for n in prunable_linear_names(hf)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    if pruned:
        assert zeros >= SPARSITY - 0.01, f"{folder}: only {zeros:.3f} of the encoder weights are zero"
        manifest = json.loads((path / "spd_sparsity.json").read_text())
        kinds = {r["kind"] for r in manifest["layers"].values()}
        assert kinds <= {"masked", "sparse", "fused_activation"} and kinds & {"masked", "sparse"}
        assert isinstance(sk.load_pruned(path), type(hf))  # the kernels' loader reads it too
    else:
        assert zeros < 0.01  # a dense model stays dense


def test_exported_folder_loads_packed(runs):
    model = sk.load_pruned(runs / "exported")
    assert any(isinstance(m, sk.SparseLinear) for m in model.modules())
