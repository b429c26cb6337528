"""The training loop shared by fine-tuning, the pruning baselines and SPD's stages.

A run is a list of :class:`Phase` objects, each one learning-rate cycle (AdamW, linear
warm-up and decay) over a number of epochs with its own loss (:class:`DistillConfig`), an
optional :class:`Pruner` and optional grafting. :class:`Trainer` runs the phases in order and
writes, under ``output_dir``:

* ``metrics.jsonl`` — one JSON object per logged step and per evaluation (TensorBoard event
  files too when ``tensorboard`` is installed);
* ``checkpoint-last.safetensors`` — everything needed to continue exactly (see
  :mod:`spd.checkpoint`), written every ``save_every`` steps and at each epoch end;
* ``best/`` (or ``teacher/`` for SPD's first stage) — the model with the best validation
  metric among the evaluations that count (pruning runs: only at the final sparsity);
* ``final/`` and ``results.json`` — the last model and the validation/test metrics, the data
  report (splits, label mapping, truncation) and the collapse guard's verdict on the reported
  model (``"collapse"``: does it answer (nearly) one class on validation?).

Every classification evaluation carries macro-F1, per-class recall and the collapse guard
(:func:`spd.metrics.collapse_check`); a collapsed evaluation never displaces a sound one as the
best model, and the final report says when the chosen model is near the majority class.

Exact resume: the data order is a pure function of (seed, phase, epoch), the position is the
step, the schedules are pure functions of the step, and the checkpoint holds weights, masks,
scores, optimizer moments, pruner and grafting-generator state and every RNG; so a run killed
at any point and resumed ends bitwise equal to an uninterrupted one on CPU with
``deterministic=True``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from spd_kernels.nn.dropout import use_fast_dropout

from . import checkpoint as ckpt
from .data import (
    EncodedSplit,
    TaskInfo,
    apply_label_mapping,
    epoch_order,
    padding_share,
    step_indices,
    steps_per_epoch,
)
from .distill import DistillConfig, distillation_loss
from .distributed import DistInfo, all_reduce_gradients, all_reduce_sum, gather_tensor
from .grafting import GraftConfig, Grafter
from .metrics import collapse_check, collapse_text, compute_metrics
from .models import (
    ATTN_NO_DROPOUT,
    apply_trainable,
    attention_implementation,
    ensure_output_capture,
    is_saved_model,
    load_state_strict,
    masked_linears,
    save_model,
    set_attention_implementation,
)
from .pruning import Pruner, PruningConfig, model_sparsity
from .schedules import lr_factor
from .teacher_cache import TeacherCache, cached_evaluation, needed_fields

CHECKPOINT = "checkpoint-last.safetensors"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
RESUME_MODES = ("auto", "never", "must")


@dataclass
class TrainConfig:
    output_dir: str = field(default="runs/run", metadata={"help": "directory of the run's outputs"})
    seed: int = field(
        default=42, metadata={"help": "seed of initialisation, data order, dropout and grafting"}
    )
    batch_size: int = field(
        default=32,
        metadata={"help": "global batch size per optimizer step (all processes, all micro-batches)"},
    )
    grad_accum: int = field(default=1, metadata={"help": "micro-batches accumulated per optimizer step"})
    eval_batch_size: int = field(default=64, metadata={"help": "batch size of evaluation"})
    weight_decay: float = field(
        default=0.0,
        metadata={
            "help": "AdamW weight decay (not on biases/LayerNorm); 0 is the default of the SPD authors' "
            "code, of emmental and of Hugging Face's run_glue"
        },
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of each LR cycle spent warming up"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (0 = off)"})
    clip_scope: str = field(
        default="auto",
        metadata={
            "help": "which gradients the clipping norm is taken over: all (every parameter of the "
            "student and of the grafted teacher layers, also those the optimizer does not update: the "
            "SPD authors' clip_grad_norm_(model.parameters()), with their embeddings, head and "
            "predecessor layers; costs their gradients), trained (the optimizer's parameters: "
            "emmental), auto (SPD all, the others trained)",
            "choices": ("auto", "all", "trained"),
        },
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast for the forward passes"})
    device: str = field(
        default="auto",
        metadata={"help": "auto (CUDA if available), cpu or cuda", "choices": ("auto", "cpu", "cuda")},
    )
    threads: int = field(default=0, metadata={"help": "torch CPU threads per process (0 = torch's default)"})
    deterministic: bool = field(
        default=False, metadata={"help": "deterministic algorithms (bitwise reproducible resume on CPU)"}
    )
    save_every: int = field(
        default=0, metadata={"help": "also checkpoint every N optimizer steps (0 = epoch ends)"}
    )
    log_every: int = field(default=10, metadata={"help": "log loss/sparsity/p every N optimizer steps"})
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    group_by_length: bool = field(
        default=True,
        metadata={
            "help": "batches of sentences of similar length (sorted within windows of --group-window "
            "batches, batches shuffled): far less padding; --no-group-by-length draws batches at random"
        },
    )
    group_window: int = field(default=50, metadata={"help": "batches per length-sorting window"})
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "directory of the teacher-output cache (default ~/.cache/spd/teacher); 'none' runs "
            "the teacher live at every step"
        },
    )
    teacher_cache_dtype: str = field(
        default="float16",
        metadata={
            "help": "storage dtype of cached hidden states and attention maps (logits: float32)",
            "choices": ("float16", "bfloat16", "float32"),
        },
    )
    attention: str = field(
        default="auto",
        metadata={
            "help": "auto: SDPA attention wherever no attention map is needed (evaluation, training "
            "without the attention loss), eager only for the attention loss; eager: eager everywhere",
            "choices": ("auto", "eager"),
        },
    )
    sparse_kernels: str = field(
        default="auto",
        metadata={
            "help": "auto: masked layers run the sparse kernels whenever the committed pattern is fixed "
            "between mask updates and below the measured crossover density, also while movement scores "
            "train; fixed-only: not while scores train; never: always the dense masked product",
            "choices": ("auto", "fixed-only", "never"),
        },
    )
    trainable: str = field(
        default="auto",
        metadata={
            "help": "which parameters train: auto (the method's reference: SPD encoder layers only; "
            "movement/magnitude all but the embeddings; fine-tuning all), all, no-embeddings, encoder",
            "choices": ("auto", "all", "no-embeddings", "encoder"),
        },
    )
    fast_dropout: bool = field(
        default=True,
        metadata={
            "help": "the model's dropout modules run spd_kernels' CPU dropout kernel (counter-based, "
            "seeded from torch's generator: reproducible and resumable); --no-fast-dropout keeps "
            "torch's dropout"
        },
    )
    resume: str = field(
        default="auto",
        metadata={
            "help": "auto: continue from output_dir's checkpoint if there is one; never: start over; "
            "must: fail without a checkpoint",
            "choices": RESUME_MODES,
        },
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.grad_accum < 1 or self.eval_batch_size < 1:
            raise ValueError(
                f"batch_size, grad_accum, eval_batch_size must be >= 1, got "
                f"{self.batch_size}, {self.grad_accum}, {self.eval_batch_size}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.resume not in RESUME_MODES:
            raise ValueError(f"resume must be one of {RESUME_MODES}, got {self.resume!r}")
        if self.group_window < 1:
            raise ValueError(f"group_window must be >= 1, got {self.group_window}")


@dataclass
class Phase:
    """One learning-rate cycle.

    ``build(previous_model, teacher)`` returns the model this phase trains (called again on
    resume to rebuild the structure before the checkpoint's tensors are loaded)."""

    name: str
    epochs: int
    lr: float
    distill: DistillConfig
    build: Callable[[Optional[nn.Module], Optional[nn.Module]], nn.Module]
    pruning: Optional[PruningConfig] = None
    graft: Optional[GraftConfig] = None
    best_dir: str = "best"
    produces_teacher: bool = False  # the best model of this phase becomes the teacher
    freeze_scores: bool = False  # masks fixed: score binarizers pass everything, scores not trained
    trainable: str = "all"  # which parameters train under --trainable auto (see models.apply_trainable)
    clip_all: bool = False  # --clip-scope auto: the clipping norm covers every parameter (SPD)


def _no_decay(name: str) -> bool:
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def build_optimizer(model: nn.Module, lr: float, weight_decay: float, score_lr: float) -> torch.optim.AdamW:
    """AdamW with three groups: decayed weights, undecayed biases/LayerNorm, scores (own LR)."""
    groups: Dict[str, List[nn.Parameter]] = {"decay": [], "no_decay": [], "scores": []}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if n.endswith("scores"):
            groups["scores"].append(p)
        elif _no_decay(n):
            groups["no_decay"].append(p)
        else:
            groups["decay"].append(p)
    spec = [
        {"params": groups["decay"], "lr": lr, "weight_decay": weight_decay, "base_lr": lr},
        {"params": groups["no_decay"], "lr": lr, "weight_decay": 0.0, "base_lr": lr},
        {"params": groups["scores"], "lr": score_lr, "weight_decay": 0.0, "base_lr": score_lr},
    ]
    return torch.optim.AdamW([g for g in spec if g["params"]], lr=lr, foreach=True)


class MetricsLog:
    """Append-only JSONL (main process), plus TensorBoard scalars when available."""

    def __init__(self, path: str, enabled: bool):
        self.path, self.enabled = path, enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(os.path.dirname(path), "tb"))
            except Exception:  # tensorboard not installed: JSONL only
                self.tb = None

    def offset(self) -> int:
        return os.path.getsize(self.path) if self.enabled and os.path.exists(self.path) else 0

    def truncate(self, offset: int) -> None:
        """Drop lines written after the checkpoint being resumed (they will be re-logged)."""
        if self.enabled and os.path.exists(self.path):
            with open(self.path, "r+b") as f:
                f.truncate(offset)

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.tb is not None and "step" in record:
            tag = record.get("phase", "")
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(f"{tag}/{k}", v, record["global_step"])
            for k, v in (record.get("eval") or {}).items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(f"{tag}/eval_{k}", v, record["global_step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    data: EncodedSplit,
    task: TaskInfo,
    batch_size: int,
    device,
    bf16: bool = False,
    attention: str = "sdpa",
) -> Dict[str, float]:
    """Task metrics and mean loss of ``model`` on ``data``; batches sorted by length (less
    padding), predictions put back in order; ``attention`` implementation (no maps needed)."""
    was = model.training
    model.eval()
    impl_ctx = (
        attention_implementation(model, attention) if hasattr(model, "config") else contextlib.nullcontext()
    )
    lens = (data.offsets[1:] - data.offsets[:-1]).tolist()
    order = sorted(range(len(data)), key=lambda i: lens[i])
    preds: List[Any] = [None] * len(data)
    loss_sum = 0.0
    ctx = (
        torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    try:
        with impl_ctx:
            for a in range(0, len(order), batch_size):
                idx = order[a : a + batch_size]
                b = {k: v.to(device) for k, v in data.collate(idx).items()}
                with ctx:
                    logits = model(
                        input_ids=b["input_ids"],
                        attention_mask=b["attention_mask"],
                        token_type_ids=b["token_type_ids"],
                    ).logits.float()
                if task.regression:
                    p = logits[:, 0]
                    loss_sum += float(((p - b["labels"].float()) ** 2).sum())
                else:
                    p = logits.argmax(-1)
                    loss_sum += float(torch.nn.functional.cross_entropy(logits, b["labels"], reduction="sum"))
                for i, v in zip(idx, p.cpu().tolist()):
                    preds[i] = v
    finally:
        model.train(was)
    out = compute_metrics(task.metrics, preds, data.labels.tolist()) if len(data) else {}
    out["loss"] = loss_sum / max(len(data), 1)
    if not task.regression and len(data):
        # share of the most predicted class: 1.0 means the model answers one class for all
        out["top_class_share"] = max(np.bincount(np.asarray(preds, dtype=np.int64))) / len(preds)
        check = collapse_check(preds, data.labels.tolist(), task.num_labels, task.label_names)
        out["macro_f1"] = check["macro_f1"]
        out["collapse"] = check
    return out


def is_collapsed(metrics: Optional[Dict[str, Any]]) -> bool:
    """Whether an evaluation's collapse guard flagged it (False for regression / unknown)."""
    return bool(((metrics or {}).get("collapse") or {}).get("flagged"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def attention_for(dcfg: DistillConfig, attention: str = "auto") -> str:
    """SDPA unless the attention loss needs the maps (eager; maps before dropout unless
    the config asks for Hugging Face's post-dropout maps); ``attention="eager"`` everywhere."""
    if dcfg.needs_attentions:
        return "eager" if dcfg.attn_maps_after_dropout else ATTN_NO_DROPOUT
    return "sdpa" if attention == "auto" else "eager"


def setup_distillation(
    model: nn.Module, teacher: Optional[nn.Module], dcfg: DistillConfig, impl: str, grafting: bool
) -> None:
    """Freeze the teacher, install the output hooks before any grafting swap, and set the
    attention implementation ``impl`` on both models (grafted teacher layers read their own
    config, so the teacher runs the same implementation)."""
    if teacher is not None:
        teacher.eval()
        for p_ in teacher.parameters():
            p_.requires_grad_(False)
    if dcfg.needs_hidden or dcfg.needs_attentions or grafting:
        ensure_output_capture(model)
        if teacher is not None:
            ensure_output_capture(teacher)
    set_attention_implementation(model, impl)
    if teacher is not None:
        set_attention_implementation(teacher, impl)


def norm_only_parameters(
    model: nn.Module, grafter: Optional[Grafter], trainable: List[torch.Tensor]
) -> List[nn.Parameter]:
    """The frozen parameters of ``model`` and of the grafted teacher layers, whose gradients
    the SPD authors' clipping norm includes (``clip_grad_norm_(model.parameters())`` over a
    model that holds the predecessor layers, with only the successor layers optimised)."""
    seen = {id(q) for q in trainable}
    out: List[nn.Parameter] = []
    params = list(model.parameters())
    if grafter is not None:
        params += [q for layer in grafter.teacher_layers for q in layer.parameters()]
    for q in params:
        if id(q) not in seen and q.is_floating_point():
            seen.add(id(q))
            out.append(q)
    return out


MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def batch_loss(
    model: nn.Module,
    batch: Optional[Dict[str, torch.Tensor]],
    dcfg: DistillConfig,
    n_global: float,
    *,
    teacher: Optional[nn.Module] = None,
    teacher_out=None,
    regression: bool = False,
    grafter: Optional[Grafter] = None,
    choices: Optional[List[bool]] = None,
    reg: Optional[torch.Tensor] = None,
    world_size: int = 1,
    device=None,
) -> Tuple[torch.Tensor, Dict[str, float], Any]:
    """The training loss of one micro-batch, shared by :class:`Trainer` and
    :class:`spd.hf.DistillationTrainer`.

    ``batch`` holds input_ids, attention_mask, token_type_ids (optional) and labels, or is
    None for a process with no examples this step. The teacher's outputs are ``teacher_out``
    (e.g. from the cache) or computed here from ``teacher`` without gradients; the student
    runs with the layers ``choices`` grafted (``grafter``). The per-example distillation loss
    is summed and divided by ``n_global``, the examples of the whole optimizer step (all
    micro-batches, all processes), and ``reg`` (soft movement's L1 term, passed for one
    micro-batch of the step) is added with weight ``1 / world_size``. Returns the loss, each
    term's contribution as floats and the student's outputs (None without a batch)."""
    loss = torch.zeros((), device=device)
    parts_out: Dict[str, float] = {}
    s_out = None
    if batch is not None:
        inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}
        out_kwargs = {"output_hidden_states": dcfg.needs_hidden, "output_attentions": dcfg.needs_attentions}
        t_out = teacher_out
        if t_out is None and dcfg.needs_teacher:
            with torch.no_grad():
                t_out = teacher(**inputs, **out_kwargs)
        graft_ctx = grafter.grafted(choices) if grafter is not None else contextlib.nullcontext()
        with graft_ctx:
            s_out = model(**inputs, **out_kwargs)
        per, parts = distillation_loss(
            s_out, t_out, batch["labels"], batch["attention_mask"], dcfg, regression
        )
        loss = per.sum() / n_global
        parts_out = {k: float(v.detach().sum()) / n_global for k, v in parts.items()}
    if reg is not None:
        # added once per step overall: each process carries 1/world of it
        loss = loss + reg / world_size
        parts_out["l1"] = float(reg.detach()) / world_size
    return loss, parts_out, s_out


class Trainer:
    """Runs a list of phases on one task (see the module docstring)."""

    def __init__(
        self,
        config: TrainConfig,
        info: DistInfo,
        task: TaskInfo,
        splits: Dict[str, EncodedSplit],
        tokenizer,
        fingerprint: Dict[str, Any],
    ):
        self.cfg = config
        self.info = info
        self.task = task
        self.splits = splits
        self.tokenizer = tokenizer
        self.fingerprint = dict(fingerprint)
        self.out = config.output_dir
        if info.is_main:
            os.makedirs(self.out, exist_ok=True)
        self.log = MetricsLog(os.path.join(self.out, METRICS), info.is_main)
        self.best: Dict[str, float] = {}  # best_dir -> best validation metric
        self.best_step: Dict[str, int] = {}  # best_dir -> global step it was saved at
        self.history: List[Dict[str, Any]] = []
        self.global_step = 0

    # ------------------------------------------------------------------ helpers
    def _autocast(self):
        if not self.cfg.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16)

    def _batch(self, split: EncodedSplit, idx: List[int]) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.info.device) for k, v in split.collate(idx).items()}

    def evaluate(self, model: nn.Module, split: str = "validation") -> Dict[str, float]:
        """Metrics of ``model`` alone (no grafting) on a split."""
        attention = "sdpa" if self.cfg.attention == "auto" else "eager"
        return evaluate_model(
            model,
            self.splits[split],
            self.task,
            self.cfg.eval_batch_size,
            self.info.device,
            self.cfg.bf16,
            attention,
        )

    def evaluate_teacher(self, teacher: nn.Module, split: str) -> Dict[str, float]:
        """The teacher's metrics: a frozen teacher is evaluated once per (teacher, split) and its
        scores kept beside its cached outputs."""
        if self.cfg.teacher_cache == "none":
            return self.evaluate(teacher, split)
        return cached_evaluation(
            teacher, self.splits[split], lambda: self.evaluate(teacher, split), self.cfg.teacher_cache
        )

    def attention_for(self, dcfg: DistillConfig) -> str:
        return attention_for(dcfg, self.cfg.attention)

    def teacher_targets(self, teacher: nn.Module, dcfg: DistillConfig) -> Optional[TeacherCache]:
        """The cache of the teacher's training-split outputs this phase's loss needs (built
        on a miss), or None when --teacher-cache none."""
        if self.cfg.teacher_cache == "none":
            return None
        cache = TeacherCache(
            teacher,
            self.splits["train"],
            needed_fields(dcfg.needs_hidden, dcfg.needs_attentions),
            root=self.cfg.teacher_cache,
            dtype=self.cfg.teacher_cache_dtype,
            batch_size=self.cfg.eval_batch_size,
        )
        barrier = None
        if self.info.enabled:
            import torch.distributed as dist

            barrier = dist.barrier
        return cache.prepare(self.info.is_main, barrier, progress=self.cfg.progress and self.info.is_main)

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(
        self,
        phase_index: int,
        phase: Phase,
        step: int,
        total: int,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        pruner: Optional[Pruner],
        grafter: Optional[Grafter],
        p: float,
    ) -> None:
        rng_meta, rng_t = ckpt.capture_rng()
        # every rank's torch generator (dropout differs per rank); python/numpy are not
        # consumed per rank, rank 0's stand for all
        all_torch = gather_tensor(torch.get_rng_state(), self.info)
        if not self.info.is_main:
            return
        tensors: Dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
        opt_meta, opt_t = ckpt.optimizer_to_flat(opt)
        tensors.update(opt_t)
        tensors.update(rng_t)
        for r, s in enumerate(all_torch):
            tensors[f"rng/torch_rank/{r}"] = s
        if grafter is not None:
            tensors.update({f"graft/{k}": v for k, v in grafter.state_dict().items()})
        state = {
            "fingerprint": self.fingerprint,
            "phase_index": phase_index,
            "phase": phase.name,
            "step": step,
            "total_steps": total,
            "global_step": self.global_step,
            "p": p,
            "pruner": pruner.state_dict() if pruner is not None else None,
            "optimizer": opt_meta,
            "rng": rng_meta,
            "best": self.best,
            "best_step": self.best_step,
            "history": self.history,
            "metrics_offset": self.log.offset(),
        }
        ckpt.save_checkpoint(os.path.join(self.out, CHECKPOINT), state, tensors)

    def load_resume_state(self) -> Optional[Tuple[dict, Dict[str, torch.Tensor]]]:
        path = os.path.join(self.out, CHECKPOINT)
        if self.cfg.resume == "never" or not os.path.exists(path):
            if self.cfg.resume == "must":
                raise FileNotFoundError(f"--resume must: no checkpoint at {path}")
            if self.cfg.resume == "never" and self.info.is_main:
                for f in (CHECKPOINT, METRICS, RESULTS):
                    if os.path.exists(os.path.join(self.out, f)):
                        os.remove(os.path.join(self.out, f))
            return None
        state, tensors = ckpt.load_checkpoint(path)
        ckpt.check_fingerprint(state["fingerprint"], self.fingerprint, path)
        if self.info.is_main:
            print(
                f"resuming from {path}: phase {state['phase']}, step {state['step']}/{state['total_steps']}",
                file=sys.stderr,
            )
        return state, tensors

    def _restore(
        self,
        state: dict,
        tensors: Dict[str, torch.Tensor],
        opt: Optional[torch.optim.Optimizer],
        pruner: Optional[Pruner],
        grafter: Optional[Grafter],
    ) -> None:
        if opt is not None:
            ckpt.optimizer_from_flat(opt, state["optimizer"], tensors)
        if pruner is not None and state.get("pruner") is not None:
            pruner.load_state_dict(state["pruner"])
        if grafter is not None:
            g = ckpt.split_prefix(tensors, "graft")
            if not g:
                raise ValueError("checkpoint has no grafting state but this phase grafts")
            grafter.load_state_dict(g)
        self.restore_rng(state, tensors)
        self.best = dict(state.get("best") or {})
        self.best_step = {k: int(v) for k, v in (state.get("best_step") or {}).items()}
        self.history = list(state.get("history") or [])
        self.global_step = int(state["global_step"])
        self.log.truncate(int(state.get("metrics_offset", 0)))

    def restore_rng(self, state: dict, tensors: Dict[str, torch.Tensor]) -> None:
        ckpt.restore_rng(state["rng"], tensors)
        per_rank = ckpt.split_prefix(tensors, "rng/torch_rank")
        if per_rank:
            if str(self.info.rank) not in per_rank or len(per_rank) != self.info.world_size:
                raise ValueError(
                    f"checkpoint was written by {len(per_rank)} processes, "
                    f"this run has {self.info.world_size}"
                )
            torch.set_rng_state(per_rank[str(self.info.rank)])

    def load_model_state(self, model: nn.Module, tensors: Dict[str, torch.Tensor], what: str) -> None:
        state = ckpt.split_prefix(tensors, "model")
        load_state_strict(model, {k: v.to(self.info.device) for k, v in state.items()}, what)

    # ------------------------------------------------------------------ one phase
    def run_phase(
        self,
        phase_index: int,
        phase: Phase,
        model: nn.Module,
        teacher: Optional[nn.Module],
        resume: Optional[Tuple[dict, Dict[str, torch.Tensor]]] = None,
    ) -> nn.Module:
        cfg, info = self.cfg, self.info
        train = self.splits["train"]
        if len(train) == 0:
            raise ValueError("the training split is empty")
        world_batch = info.world_size * cfg.grad_accum
        if cfg.batch_size % world_batch:
            raise ValueError(
                f"batch_size {cfg.batch_size} must be divisible by processes x grad_accum = {world_batch}"
            )
        spe = steps_per_epoch(len(train), cfg.batch_size)
        total = phase.epochs * spe
        if total < 1:
            raise ValueError(f"phase {phase.name} has no steps (epochs={phase.epochs})")
        warmup = int(round(cfg.warmup_ratio * total))
        dcfg = phase.distill
        if dcfg.needs_teacher and teacher is None:
            raise ValueError(f"phase {phase.name} distils but no teacher is available")

        note = apply_label_mapping(model, self.task)  # saved models say what their outputs mean
        if note and info.is_main:
            print(note, file=sys.stderr)
        model.to(info.device).train()
        use_fast_dropout(model, cfg.fast_dropout)
        masked = masked_linears(model)
        for m in masked.values():
            m.sparse_path = "never" if cfg.sparse_kernels == "never" else "auto"
            m.sparse_with_trained_scores = cfg.sparse_kernels == "auto"
        apply_trainable(model, phase.trainable if cfg.trainable == "auto" else cfg.trainable)
        if phase.freeze_scores:
            for m in masked.values():
                m.threshold = -math.inf  # the committed mask alone decides
                if m.scores is not None:
                    m.scores.requires_grad_(False)
        pruner = None
        if phase.pruning is not None and phase.pruning.method != "none":
            pruner = Pruner(masked, phase.pruning, total)
        grafter = None
        if phase.graft is not None:
            grafter = Grafter(
                model, teacher, seed=cfg.seed * 7919 + phase_index, teacher_mode=phase.graft.teacher_mode
            )
        if teacher is not None:
            teacher.to(info.device)
        setup_distillation(model, teacher, dcfg, self.attention_for(dcfg), grafter is not None)
        cache = self.teacher_targets(teacher, dcfg) if dcfg.needs_teacher else None
        score_lr = phase.pruning.score_lr if phase.pruning is not None else phase.lr
        opt = build_optimizer(model, phase.lr, cfg.weight_decay, score_lr)
        trainable = [p_ for g in opt.param_groups for p_ in g["params"]]
        clip_all = cfg.clip_scope == "all" or (cfg.clip_scope == "auto" and phase.clip_all)
        # parameters whose gradients only enter the clipping norm (never updated)
        norm_only = norm_only_parameters(model, grafter, trainable) if clip_all else []
        for q in norm_only:
            q.requires_grad_(True)

        start = 0
        if resume is not None:
            state, tensors = resume
            self._restore(state, tensors, opt, pruner, grafter)
            start = int(state["step"])

        bar = None
        if cfg.progress and info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=start, desc=phase.name, dynamic_ncols=True, leave=True)
        p = 1.0
        t0 = time.time()
        order_seed = cfg.seed * 31 + phase_index
        train_lengths = train.lengths
        pad_tokens = all_tokens = real_tokens = 0
        order_epoch = -1
        for step in range(start, total):
            epoch, in_epoch = divmod(step, spe)
            if epoch != order_epoch:  # a pure function of (seed, epoch, lengths): once an epoch
                order_epoch = epoch
                order = epoch_order(
                    len(train),
                    order_seed,
                    epoch,
                    train_lengths if cfg.group_by_length else None,
                    cfg.batch_size,
                    cfg.group_window,
                )
            if pruner is not None:
                pruner.update(step)
            choices = None
            if grafter is not None:
                p = phase.graft.probability(step, total)
                choices = grafter.sample(p)
            factor = lr_factor(step, total, warmup)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * factor

            micro = step_indices(order, in_epoch, cfg.batch_size, cfg.grad_accum, info.world_size, info.rank)
            n_global = min(cfg.batch_size, len(train) - in_epoch * cfg.batch_size)
            loss_val = 0.0
            parts_sum: Dict[str, float] = {}
            for j, idx in enumerate(micro):
                reg = pruner.regularization(step) if (pruner is not None and j == 0) else None
                if not idx and reg is None:
                    continue
                b, t_out = None, None
                if idx:
                    b = self._batch(train, idx)
                    pad, tot = padding_share(train_lengths, [idx])
                    pad_tokens, all_tokens = pad_tokens + pad, all_tokens + tot
                    real_tokens += tot - pad
                    if cache is not None:
                        t_out = cache.targets(idx, b["input_ids"].shape[1], info.device)
                with self._autocast():
                    loss, parts, _ = batch_loss(
                        model,
                        b,
                        dcfg,
                        n_global,
                        teacher=teacher,
                        teacher_out=t_out,
                        regression=self.task.regression,
                        grafter=grafter,
                        choices=choices,
                        reg=reg,
                        world_size=info.world_size,
                        device=info.device,
                    )
                for k, v in parts.items():
                    parts_sum[k] = parts_sum.get(k, 0.0) + v
                if loss.requires_grad:  # all layer positions grafted from the frozen teacher: no grad
                    loss.backward()
                loss_val += float(loss.detach())
            logging_now = bool(cfg.log_every) and ((step + 1) % cfg.log_every == 0 or step + 1 == total)
            # the sparsity this step's forward pass ran at (score masks move with the step)
            fwd_sparsity = model_sparsity(masked) if (logging_now and masked) else 0.0
            all_reduce_gradients(trainable + norm_only, info)
            grad_norm = None
            if cfg.max_grad_norm > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    [q for q in trainable + norm_only if q.grad is not None], cfg.max_grad_norm
                )
            opt.step()
            opt.zero_grad(set_to_none=True)
            for q in norm_only:
                q.grad = None
            self.global_step += 1
            done = step + 1

            if cfg.log_every and (done % cfg.log_every == 0 or done == total):
                loss_all = all_reduce_sum(loss_val, info)
                # the same keys on every process (one may have had no examples this step)
                keys = [
                    k
                    for k, w in (
                        ("ce", dcfg.alpha_ce),
                        ("logit", dcfg.alpha_logit),
                        ("hidden", dcfg.alpha_hidden),
                        ("attn", dcfg.alpha_attn),
                    )
                    if w > 0
                ]
                if pruner is not None and pruner.config.method == "soft-movement":
                    keys.append("l1")
                parts_all = {k: all_reduce_sum(parts_sum.get(k, 0.0), info) for k in keys}
                sparsity = fwd_sparsity
                rec = {
                    "phase": phase.name,
                    "step": done,
                    "global_step": self.global_step,
                    "epoch": epoch,
                    "loss": loss_all,
                    "lr": phase.lr * factor,
                    "sparsity": sparsity,
                    "p": p,
                    **{f"loss_{k}": v for k, v in parts_all.items()},
                    "padding": pad_tokens / all_tokens if all_tokens else 0.0,
                    # the clipping norm of this step, before clipping
                    **({"grad_norm": float(grad_norm)} if grad_norm is not None else {}),
                    "tokens": real_tokens,
                    "time_s": round(time.time() - t0, 3),
                }
                if cache is not None:  # examples served from the cache since the last record
                    rec["teacher_cache_hits"], cache.hits = cache.hits, 0
                pad_tokens = all_tokens = real_tokens = 0
                self.log.write(rec)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_all:.4f}", sparsity=f"{sparsity:.3f}", p=f"{p:.2f}")
            if bar is not None:
                bar.update(1)

            if done % spe == 0:
                self._end_of_epoch(phase_index, phase, done, total, model, pruner, epoch)
                self._save_checkpoint(phase_index, phase, done, total, model, opt, pruner, grafter, p)
            elif cfg.save_every and done % cfg.save_every == 0:
                self._save_checkpoint(phase_index, phase, done, total, model, opt, pruner, grafter, p)
        if bar is not None:
            bar.close()
        for q in norm_only:
            q.requires_grad_(False)
        return model

    def _end_of_epoch(self, phase_index, phase, done, total, model, pruner, epoch) -> None:
        masked = masked_linears(model)
        sparsity = model_sparsity(masked) if masked else 0.0
        # a pruning phase's model counts only once it has reached the final sparsity; an
        # evaluation that cannot be selected is not run
        eligible = pruner is None or done - 1 >= pruner.ramp_end
        rec = {
            "phase": phase.name,
            "phase_index": phase_index,
            "epoch": epoch,
            "step": done,
            "global_step": self.global_step,
            "sparsity": sparsity,
            "eligible": eligible,
        }
        if eligible:
            rec["eval"] = self.evaluate(model, "validation")
        self.history.append(rec)
        self.log.write(rec)
        if not eligible:
            return
        main = rec["eval"].get(self.task.main_metric, float("nan"))
        # a model that answers (nearly) one class never displaces one that does not
        collapsed = is_collapsed(rec["eval"])
        prev = self._best_collapsed(phase.best_dir)
        better = phase.best_dir not in self.best or (
            (prev and not collapsed) or (prev == collapsed and main > self.best[phase.best_dir])
        )
        if better:
            self.best[phase.best_dir] = main
            self.best_step[phase.best_dir] = self.global_step
            if self.info.is_main:
                save_model(model, self.tokenizer, os.path.join(self.out, phase.best_dir))
                if collapsed:
                    print(
                        f"note: {phase.best_dir}/ (step {self.global_step}, validation "
                        f"{self.task.main_metric} {main:.4f}) is near the majority class: "
                        f"{collapse_text(rec['eval']['collapse'])}",
                        file=sys.stderr,
                    )

    def _best_collapsed(self, best_dir: str) -> bool:
        """Whether the evaluation that chose ``best_dir`` was flagged by the collapse guard."""
        step = self.best_step.get(best_dir)
        for h in self.history:
            if step is not None and h.get("global_step") == step and "eval" in h:
                return is_collapsed(h["eval"])
        return False

    # ------------------------------------------------------------------ all phases
    def run(
        self, phases: List[Phase], teacher: Optional[nn.Module] = None
    ) -> Tuple[nn.Module, Optional[nn.Module]]:
        """Run ``phases`` (resuming from the checkpoint when there is one); returns the last
        model and the teacher."""
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed_everything(self.cfg.seed)
        resume = self.load_resume_state()
        r_phase = resume[0]["phase_index"] if resume else -1
        if resume is not None and not 0 <= r_phase < len(phases):
            raise ValueError(f"checkpoint phase index {r_phase} is outside this run's {len(phases)} phases")
        model: Optional[nn.Module] = None
        for i, phase in enumerate(phases):
            if i < r_phase:
                if phase.produces_teacher:
                    teacher = self.load_teacher(phase)
                continue
            if i == r_phase:
                state, tensors = resume
                # rebuild the structure of every phase up to this one, then load the tensors
                m = None
                for ph in phases[: i + 1]:
                    m = ph.build(m, teacher)
                model = m.to(self.info.device)
                self.load_model_state(model, tensors, os.path.join(self.out, CHECKPOINT))
                if state["step"] >= state["total_steps"]:  # the phase had finished
                    self._restore(state, tensors, None, None, None)
                    if phase.produces_teacher:
                        teacher = self.load_teacher(phase)
                    continue
                model = self.run_phase(i, phase, model, teacher, resume=(state, tensors))
            else:
                model = phase.build(model, teacher)
                model = self.run_phase(i, phase, model, teacher)
            if phase.produces_teacher:
                teacher = self.load_teacher(phase)
        self.log.close()
        return model, teacher

    def load_teacher(self, phase: Phase) -> nn.Module:
        from .models import load_model

        path = os.path.join(self.out, phase.best_dir)
        if self.info.enabled:
            import torch.distributed as dist

            dist.barrier()  # the main process has written it
        teacher, _ = load_model(path)
        return teacher.to(self.info.device).eval()

    def finish(self, model: nn.Module, teacher: Optional[nn.Module], extra: Dict[str, Any]) -> Dict[str, Any]:
        """Evaluate the best and the final model on validation and test; write final/ and
        results.json (main process). Returns the results."""
        from .models import load_model

        masked = masked_linears(model)
        last = self.history[-1] if self.history else None
        # the last end-of-epoch evaluation saw this very model: reuse its validation metrics
        final_val = (
            last["eval"]
            if last is not None and last.get("global_step") == self.global_step and "eval" in last
            else self.evaluate(model, "validation")
        )
        final = {
            "validation": final_val,
            "test": self.evaluate(model, "test"),
            "sparsity": model_sparsity(masked) if masked else 0.0,
        }
        best_dir = os.path.join(self.out, "best")
        if self.info.enabled:
            import torch.distributed as dist

            dist.barrier()
        if self.best_step.get("best") == self.global_step:
            best = final  # the best model is the final one: evaluated once
        elif os.path.isdir(best_dir) and is_saved_model(best_dir):
            best_model, _ = load_model(best_dir)
            best_model.to(self.info.device)
            bm = masked_linears(best_model)
            best = {
                "validation": self.evaluate(best_model, "validation"),
                "test": self.evaluate(best_model, "test"),
                "sparsity": model_sparsity(bm) if bm else 0.0,
            }
        else:
            best = final
        results = {
            "task": self.task.name,
            "metric": self.task.main_metric,
            "best": best,
            "final": final,
            "history": self.history,
            **extra,
        }
        if self.task.report:
            results["data"] = self.task.report
        if not self.task.regression:
            # the guard's verdict on the reported (best) model, from its validation predictions
            results["collapse"] = best["validation"].get("collapse")
        if teacher is not None:
            results["teacher"] = {
                "validation": self.evaluate_teacher(teacher, "validation"),
                "test": self.evaluate_teacher(teacher, "test"),
            }
        if self.info.is_main:
            for what, m in (
                ("the best model", best["validation"]),
                ("the final model", final["validation"] if final is not best else None),
                ("the teacher", (results.get("teacher") or {}).get("validation")),
            ):
                if is_collapsed(m):
                    print(
                        f"warning: collapse: {what} answers (nearly) one class on validation: "
                        f"{collapse_text(m['collapse'])}",
                        file=sys.stderr,
                    )
            save_model(model, self.tokenizer, os.path.join(self.out, "final"))
            ckpt.atomic_write_json(os.path.join(self.out, RESULTS), results)
        return results


__all__ = [
    "Phase",
    "TrainConfig",
    "Trainer",
    "attention_for",
    "batch_loss",
    "build_optimizer",
    "evaluate_model",
    "is_collapsed",
    "seed_everything",
    "setup_distillation",
]
