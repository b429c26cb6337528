"""spd.hf: the pruning callback and the distillation trainer inside transformers' Trainer."""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from spd_tiny import sentences, tiny_bert, tiny_tokenizer

pytest.importorskip("accelerate")

from spd.distill import DistillConfig  # noqa: E402
from spd.grafting import GraftConfig  # noqa: E402
from spd.models import masked_linears  # noqa: E402
from spd.schedules import cubic_sparsity  # noqa: E402
from spd.trainer import batch_loss  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPD_LOSS = dict(
    alpha_ce=0.0, alpha_logit=1.0, alpha_hidden=1.0, alpha_attn=1.0, temperature=1.0,
    temperature_squared=False, logit_class_mean=True, regression_target="labels", layer_reduction="sum",
    attn_maps_after_dropout=True,
)  # fmt: skip


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tiny_tokenizer(str(tmp_path_factory.mktemp("tok")))


def dataset(tok, n=64, seed=0):
    import datasets

    datasets.disable_progress_bars()
    rows = sentences(n, seed)
    ds = datasets.Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [r[1] for r in rows]})
    enc = lambda b: tok(b["sentence"], truncation=True, max_length=32)  # noqa: E731
    return ds.map(enc, batched=True, remove_columns=["sentence"])


def targs(out, **kw):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out), per_device_train_batch_size=8, num_train_epochs=2, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, warmup_steps=0,
    )  # fmt: skip
    base.update(kw)
    return TrainingArguments(**base)


def collator(tok):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tok)


def student(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return tiny_bert(dropout=dropout)


class Recorder:
    """Weights kept per masked layer right after the pruning callback's update, per step."""

    def __init__(self, model):
        from transformers import TrainerCallback

        outer = self

        class _R(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                layers = masked_linears(model).items()
                outer.seen[state.global_step] = {n: (int(m.mask.sum()), m.mask.numel()) for n, m in layers}

        self.seen, self.callback = {}, _R()


@pytest.mark.parametrize("method", ["magnitude", "spd"])
def test_callback_reaches_the_cubic_schedule_on_time(tok, tmp_path, method):
    from transformers import Trainer

    from spd.hf import PruningCallback

    model = student()
    sched = {"update_every": 1} if method == "magnitude" else {"mask_updates": 4}
    cb = PruningCallback(method, sparsity=0.75, granularity="element", schedule=sched)
    rec = Recorder(model)
    trainer = Trainer(
        model=model, args=targs(tmp_path), train_dataset=dataset(tok), data_collator=collator(tok),
        callbacks=[cb, rec.callback],
    )  # fmt: skip
    assert len(masked_linears(model)) == 12  # sparsified at init, before the optimizer exists
    trainer.train()
    total = trainer.state.max_steps
    assert total == 16 and sorted(rec.seen) == list(range(total))
    warm, cool = round(0.1 * total), round(0.2 * total)
    for step, got in rec.seen.items():
        if method == "magnitude":  # s_f (1 - (1 - t/T)^3) after step+1 steps, with the plateaus
            want = cubic_sparsity(min(step + 1, total), total, 0.75, 0.0, warm, cool)
        else:  # SPD (the authors' Prune): freq = T // 4, update k after step k·freq < T,
            # sparsity s_f (1 - (1 - k/(T // freq))^3)
            freq = total // 4
            k = max([j for j in range(1, 5) if j * freq <= step and j * freq < total], default=0)
            want = 0.75 * (1 - (1 - k / (total // freq)) ** 3)
        assert cb.target_sparsity(step) == pytest.approx(want, abs=1e-12)
        for name, (kept, numel) in got.items():  # every layer keeps exactly round((1 - s_t) numel)
            assert kept == round((1 - want) * numel), (step, name, kept, want)
    if method == "magnitude":
        assert all(kept == numel // 4 for kept, numel in rec.seen[total - 1].values())
        assert cb.sparsity(model) == 0.75
    else:  # 16 steps, freq 4: updates after steps 4, 8, 12; the last at s_f (1 - (1/4)^3)
        assert cb.sparsity(model) == pytest.approx(0.75 * (1 - 0.25**3), abs=0.01)


def spd_loss_by_hand(s, t, attention_mask) -> float:
    """Σ over examples of SPD's distillation loss, in float64 on each example's real tokens:
    soft cross-entropy of the logits (T = 1) averaged over the classes, as the authors'
    ``(-p_t · log p_s).mean()`` + Σ over hidden states of the mean squared
    difference over tokens × hidden + Σ over attention maps of the mean over heads × query ×
    key of the squared difference."""
    total = 0.0
    for b in range(attention_mask.shape[0]):
        n = int(attention_mask[b].sum())
        p_t = torch.softmax(t.logits[b].double(), -1)
        total += -(p_t * torch.log_softmax(s.logits[b].double(), -1)).mean().item()
        for hs, ht in zip(s.hidden_states, t.hidden_states):
            total += (hs[b, :n].double() - ht[b, :n].double()).pow(2).mean().item()
        for a_s, a_t in zip(s.attentions, t.attentions):
            total += (a_s[b, :, :n, :n].double() - a_t[b, :, :n, :n].double()).pow(2).mean().item()
    return total


def test_distillation_trainer_loss_equals_the_cli_batch_loss(tok, tmp_path):
    from spd.hf import DistillationTrainer, PruningCallback

    teacher = student(seed=1)
    model = copy.deepcopy(teacher)
    cb = PruningCallback("spd", sparsity=0.5, granularity="block16")
    trainer = DistillationTrainer(
        model=model, teacher=teacher, graft=GraftConfig(p0=0.5), args=targs(tmp_path),
        train_dataset=dataset(tok), data_collator=collator(tok), callbacks=[cb],
    )  # fmt: skip
    assert trainer.distill == DistillConfig(**SPD_LOSS)  # SPD's loss by default with grafting
    cb.on_train_begin(trainer.args, trainer.state, trainer.control, model=model)
    cb.pruner.commit(0.5)
    batch = collator(tok)([dataset(tok)[i] for i in range(8)])
    model.train()
    trainer.state.global_step = 3
    got = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(8))
    choices = trainer._choices
    assert choices is not None and len(choices) == 2
    want, _, _ = batch_loss(
        model, batch, trainer.distill, 8, teacher=teacher, grafter=trainer.grafter, choices=choices
    )
    assert torch.equal(got, want)
    # and the formula itself, written out here in float64 example by example over the real
    # tokens only: SPD's loss (T = 1, no T^2, layers summed) summed over the batch / 8
    with torch.no_grad(), trainer.grafter.grafted(choices):
        s = model(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                  output_hidden_states=True, output_attentions=True)  # fmt: skip
        t = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
                    output_hidden_states=True, output_attentions=True)  # fmt: skip
    want = spd_loss_by_hand(s, t, batch["attention_mask"]) / 8
    assert abs(got.item() - want) <= 1e-5 * want, (got.item(), want)
    # evaluation: the student alone, its task loss
    model.eval()
    loss, out = trainer.compute_loss(model, dict(batch), return_outputs=True)
    assert out.logits.shape == (8, 2) and loss.ndim == 0


def test_distillation_trainer_loss_equals_the_spd_trainers_for_the_same_batch(tok, tmp_path):
    """One step of the ``spd`` CLI's trainer and of DistillationTrainer + PruningCallback on the
    same 8 sentences, the same initial student, teacher, masks and loss: the same loss."""
    from spd.data import TaskInfo, TextSplit, encode_split
    from spd.distributed import DistInfo
    from spd.hf import DistillationTrainer, PruningCallback
    from spd.models import make_prunable
    from spd.pruning import PruningConfig
    from spd.trainer import Phase, TrainConfig, Trainer

    rows = sentences(8, seed=4)
    enc = encode_split(tok, TextSplit([(r[0],) for r in rows], [r[1] for r in rows]), 32, cache_dir="none")
    teacher, init = student(seed=1), student(seed=2)
    dcfg = DistillConfig(alpha_ce=0.5, alpha_logit=0.5, alpha_hidden=1.0, temperature=2.0)
    plateaus = {"warmup_fraction": 0.0, "cooldown_fraction": 0.0}

    def build(prev, t):
        s = copy.deepcopy(init)
        make_prunable(s)
        return s

    cfg = TrainConfig(
        output_dir=str(tmp_path / "cli"), batch_size=8, log_every=1, progress=False, teacher_cache="none",
        resume="never", group_by_length=False,
    )  # fmt: skip
    phase = Phase(
        name="prune", epochs=1, lr=1e-3, distill=dcfg, build=build,
        pruning=PruningConfig(method="magnitude", sparsity=0.5, **plateaus),
    )  # fmt: skip
    splits = {k: enc for k in ("train", "validation", "test")}
    cli = Trainer(cfg, DistInfo(), TaskInfo("t", 2, ("accuracy",)), splits, tok, {})
    cli.run([phase], copy.deepcopy(teacher))
    with open(tmp_path / "cli" / "metrics.jsonl") as f:
        cli_loss = next(r["loss"] for r in map(json.loads, f) if "loss" in r)

    model = copy.deepcopy(init)
    cb = PruningCallback("magnitude", sparsity=0.5, schedule=plateaus, trainable=None)
    hf = DistillationTrainer(
        model=model, teacher=copy.deepcopy(teacher), distill=dcfg, callbacks=[cb],
        data_collator=collator(tok), args=targs(tmp_path / "hf", max_steps=1),
        train_dataset=dataset(tok, n=8, seed=4),
    )  # fmt: skip
    seen = []
    compute = hf.compute_loss
    hf.compute_loss = lambda *a, **k: seen.append(compute(*a, **k)) or seen[-1]
    hf.train()
    assert len(seen) == 1 and cb.sparsity(model) == 0.5
    # the same examples in another order within the batch: equal up to the summation order
    assert cli_loss > 0 and abs(float(seen[0].detach()) - cli_loss) <= 1e-6 * cli_loss


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _run(tok, out, method, resume=None, kd=False):
    from transformers import Trainer

    from spd.hf import DistillationTrainer, PruningCallback, create_optimizer, prepare_model

    model = student(seed=0, dropout=0.1)  # dropout on: the RNG state must come back too
    cb = PruningCallback(method, sparsity=0.75, granularity="element", schedule={"update_every": 2})
    args = targs(out, num_train_epochs=3, save_strategy="steps", save_steps=5, lr_scheduler_type="linear")
    common = dict(args=args, train_dataset=dataset(tok), data_collator=collator(tok), callbacks=[cb])
    if kd:  # SPD: grafting draws seeded by the step, hidden + attention + logit loss
        graft = {"p0": 0.5} if method == "spd" else None
        trainer = DistillationTrainer(model=model, teacher=student(seed=3), graft=graft, **common)
    else:  # a plain Trainer with the scores at their own learning rate
        prepare_model(model, cb)
        trainer = Trainer(model=model, optimizers=(create_optimizer(model, args, cb), None), **common)
    trainer.train(resume_from_checkpoint=resume)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    return model, losses


@pytest.mark.parametrize("method,kd", [("movement", False), ("soft-movement", True), ("spd", True)])
def test_trainer_resume_restores_masks_and_scores_bitwise(tok, tmp_path, method, kd):
    full, full_losses = _run(tok, tmp_path / "full", method, kd=kd)
    ckpt = tmp_path / "full" / "checkpoint-10"
    assert ckpt.is_dir()
    part = tmp_path / "part"
    shutil.copytree(ckpt, part / "checkpoint-10")
    resumed, res_losses = _run(tok, part, method, resume=str(part / "checkpoint-10"), kd=kd)
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys() and any(k.endswith(".scores") for k in a) == (method != "spd")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for name, m in masked_linears(full).items():
        assert torch.equal(m.effective_mask(), masked_linears(resumed)[name].effective_mask()), name
    assert len(full_losses) == 24 and res_losses == full_losses  # steps 1-10 come from the checkpoint
    from spd.pruning import model_sparsity

    assert abs(model_sparsity(masked_linears(full)) - 0.75) < 0.01  # soft movement: a global budget


def test_densified_result_saves_and_loads_with_the_zeros(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification, Trainer

    from spd.hf import PruningCallback

    model = student()
    cb = PruningCallback("magnitude", sparsity=0.5, granularity="block16", at_end="densify")
    Trainer(
        model=model, args=targs(tmp_path, num_train_epochs=1), train_dataset=dataset(tok),
        data_collator=collator(tok), callbacks=[cb],
    ).train()  # fmt: skip
    assert not masked_linears(model)  # plain nn.Linear again
    w = model.bert.encoder.layer[0].intermediate.dense.weight
    assert float((w == 0).float().mean()) == 0.5
    model.save_pretrained(tmp_path / "saved")
    back = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    model.eval()
    for (n, p), (n2, p2) in zip(model.named_parameters(), back.named_parameters()):
        assert n == n2 and torch.equal(p, p2), n
    ids = torch.randint(5, 40, (2, 7))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, back(input_ids=ids).logits)


def test_export_at_end_gives_packed_layers(tok, tmp_path):
    from transformers import Trainer

    from spd.hf import PruningCallback
    from spd_kernels.nn import SparseLinear

    model = student()
    cb = PruningCallback("magnitude", sparsity=0.5, granularity="block16", at_end="export")
    Trainer(
        model=model, args=targs(tmp_path, max_steps=3), train_dataset=dataset(tok),
        data_collator=collator(tok), callbacks=[cb],
    ).train()  # fmt: skip
    packed = [m for m in model.modules() if isinstance(m, SparseLinear)]
    assert len(packed) == 12


def test_unprepared_model_with_late_callback_fails_clearly(tok, tmp_path):
    from transformers import Trainer

    from spd.hf import PruningCallback

    trainer = Trainer(
        model=student(), args=targs(tmp_path, max_steps=2), train_dataset=dataset(tok),
        data_collator=collator(tok),
    )  # fmt: skip
    trainer.add_callback(PruningCallback("magnitude", sparsity=0.5))
    with pytest.raises(RuntimeError, match="prepare_model"):
        trainer.train()


DDP_SCRIPT = r"""
import os, sys, json
import torch
sys.path[:0] = [{root!r}, os.path.join({root!r}, "python"), os.path.join({root!r}, "tests", "spd")]
import test_hf as T
from spd.hf import DistillationTrainer, PruningCallback
from spd.models import masked_linears

tok = T.tiny_tokenizer({tmp!r})
model = T.student(seed=0, dropout=0.1)
cb = PruningCallback("magnitude", sparsity=0.75, granularity="element", schedule={{"update_every": 1}})
args = T.targs({out!r}, per_device_train_batch_size=4)
trainer = DistillationTrainer(model=model, teacher=T.student(seed=5), args=args,
    train_dataset=T.dataset(tok), data_collator=T.collator(tok), callbacks=[cb])
trainer.train()
rank = int(os.environ.get("RANK", "0"))
masks = {{n: m.mask for n, m in masked_linears(model).items()}}
torch.save({{"masks": masks, "weights": {{k: v for k, v in model.state_dict().items()}},
            "world": trainer.accelerator.num_processes, "steps": trainer.state.global_step}},
           os.path.join({out!r}, f"rank{{rank}}.pt"))
"""


def test_two_process_accelerate_launch_ends_with_identical_masks(tmp_path):
    """Two gloo processes under ``accelerate launch`` (~20 s on 2 shared cores)."""
    accelerate = shutil.which("accelerate") or os.path.join(os.path.dirname(sys.executable), "accelerate")
    if not os.path.exists(accelerate):
        pytest.skip("accelerate launcher not found")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(root=ROOT, tmp=str(tmp_path), out=str(tmp_path / "out")))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    r = subprocess.run(
        # on a machine without CUDA, --multi_gpu starts torchrun-style processes joined by gloo
        # (accelerate's --cpu flag alone would start one process, or go through mpirun)
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533", str(script)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    a = torch.load(tmp_path / "out" / "rank0.pt")
    b = torch.load(tmp_path / "out" / "rank1.pt")
    assert a["world"] == b["world"] == 2
    assert a["steps"] == b["steps"] == 16  # 2 epochs x 64 examples / (2 x 4)
    for k in a["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k
        assert float((~a["masks"][k]).float().mean()) == 0.75
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


def test_embedded_dataset_is_a_datasetdict_with_glue_columns():
    pytest.importorskip("datasets")
    from spd.data import embedded_dataset, load_rotten_tomatoes

    try:
        d = embedded_dataset()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    splits, _ = load_rotten_tomatoes()
    assert set(d) == {"train", "validation", "test"}
    assert d["train"].features["label"].names == ["rotten", "fresh"]
    assert len(d["train"]) == len(splits["train"]) and d["test"][3]["sentence"] == splits["test"].texts[3][0]
    assert [d["validation"][i]["label"] for i in range(5)] == splits["validation"].labels[:5]
    json.dumps(d["train"][0])
