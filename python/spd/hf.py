"""The pruning methods and the distillation losses inside a Hugging Face ``Trainer`` script.

Two classes, built on the same code as the ``spd`` CLI (:mod:`spd.pruning`,
:mod:`spd.schedules`, :mod:`spd.distill`, :mod:`spd.grafting`, :func:`spd.trainer.batch_loss`):

* :class:`PruningCallback` — a ``TrainerCallback``: swaps the encoder linears for
  ``MaskedLinear`` (with movement scores when the method needs them), moves the masks along the
  cubic schedule at every optimizer step (:class:`spd.pruning.Pruner`), adds soft movement's
  L1 term to the model's loss, and at the end of training optionally densifies the model
  (pruned weights become zeros in plain ``nn.Linear`` layers: ``save_pretrained`` /
  ``from_pretrained`` work as for any model) or exports it to the packed sparse kernels.
* :class:`DistillationTrainer` — a ``Trainer`` whose loss is :func:`spd.trainer.batch_loss`
  (hard labels, logit / hidden-state / attention distillation from ``teacher``, SPD's module
  grafting), normalised over the examples of the whole optimizer step as the CLI does, and
  whose optimizer is the CLI's (:func:`spd.trainer.build_optimizer`: movement scores get their
  own learning rate and no weight decay).

When the model is sparsified. The masked layers hold new parameters (and the scores), so they
must exist before the ``Trainer`` builds its optimizer. :class:`PruningCallback` does it in
``on_init_end``, i.e. inside ``Trainer(..., callbacks=[callback])``. A callback added later
(``trainer.add_callback``), or an optimizer built by the script, needs
:func:`prepare_model` first; ``on_train_begin`` raises if it finds the model unprepared.

Movement scores in a plain ``Trainer`` train with the Trainer's learning rate and weight decay;
pass ``optimizers=(create_optimizer(model, args, callback), None)`` (or use
:class:`DistillationTrainer`, with ``teacher=None`` for label-only training) to give them the
method's ``score_lr``.

Checkpoints. A ``Trainer`` checkpoint holds the masks (buffers) and scores (parameters) in
``model.safetensors`` and the optimizer, scheduler and RNG states beside it; the schedule is a
pure function of ``state.global_step`` and the grafting draws are seeded by
``(seed, global_step)``, so ``trainer.train(resume_from_checkpoint=...)`` continues exactly.

``transformers`` is imported on first use of either class (``import spd.hf`` is cheap).
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .distill import DistillConfig
from .grafting import GraftConfig, Grafter
from .methods import (
    METHOD_TRAINABLE,
    PRUNE_METHODS,
    init_scores_from_magnitude,
    method_distill_defaults,
    method_pruning_defaults,
    spd_pruning_config,
)
from .models import apply_trainable, attention_implementation, make_prunable, masked_linears
from .pruning import Pruner, PruningConfig, model_sparsity
from .trainer import attention_for, batch_loss, build_optimizer, setup_distillation

AT_END = ("keep", "densify", "export")


# ---------------------------------------------------------------------- the callback
class _PruningCallback:
    """Prune a Hugging Face model's encoder linears during ``Trainer.train()``.

    Args:
        method: ``magnitude``, ``movement``, ``soft-movement`` or ``spd`` (magnitude with SPD's
            schedule: the authors' 12 intervals, an update after each, no cool-down).
        sparsity: final fraction of pruned weights.
        granularity: ``element``, ``blockN`` or ``blockMxN``.
        schedule: overrides of :class:`spd.pruning.PruningConfig` fields (``warmup_fraction``,
            ``cooldown_fraction``, ``update_every``, ``mask_updates``, ``scope``, ``score_lr``,
            ...) on top of the method's defaults (those of ``spd prune --method``). The
            schedule runs over the Trainer's ``max_steps``.
        at_end: ``keep`` (the masked model), ``densify`` (``nn.Linear`` layers with the zeros
            baked in) or ``export`` (packed ``SparseLinear`` layers) when training ends.
        trainable: which parameters train (:func:`spd.models.apply_trainable`): ``auto`` (the
            method's reference: embeddings frozen; SPD: encoder layers only), ``all``,
            ``no-embeddings``, ``encoder``, or None to leave ``requires_grad`` as it is.
    """

    def __init__(
        self,
        method: str = "magnitude",
        sparsity: float = 0.9,
        granularity: str = "element",
        schedule: Optional[Dict[str, Any]] = None,
        at_end: str = "keep",
        trainable: Optional[str] = "auto",
    ):
        if method not in PRUNE_METHODS:
            raise ValueError(f"method must be one of {PRUNE_METHODS}, got {method!r}")
        if at_end not in AT_END:
            raise ValueError(f"at_end must be one of {AT_END}, got {at_end!r}")
        fields = {**method_pruning_defaults(method), **dict(schedule or {})}
        for bad in ("method", "sparsity", "granularity"):
            if bad in fields:
                raise ValueError(f"pass {bad} as its own argument, not in schedule")
        base = PruningConfig(method="none", sparsity=sparsity, granularity=granularity, **fields)
        self.method = method
        self.config = spd_pruning_config(base, method)
        self.at_end = at_end
        self.trainable = METHOD_TRAINABLE[method] if trainable == "auto" else trainable
        self.pruner: Optional[Pruner] = None
        self._hook = None
        self._step = 0

    # ------------------------------------------------------------------ model surgery
    def prepare(self, model: nn.Module) -> Dict[str, nn.Module]:
        """Swap the encoder linears of ``model`` for MaskedLinear (idempotent: layers that
        already are MaskedLinear, e.g. of a model being resumed, are kept). Returns them."""
        c = self.config
        new = not masked_linears(model)
        layers = make_prunable(model, block=c.block, scores=c.score_mode, score_init=c.score_init)
        if new and c.score_mode is not None and c.score_init_mode == "magnitude":
            init_scores_from_magnitude(layers.values())
        if new and self.trainable is not None:
            apply_trainable(model, self.trainable)
        if self._hook is None and c.method == "soft-movement":
            self._hook = model.register_forward_hook(self._add_regularization)
        return layers

    def _add_regularization(self, module, args, output):
        """Soft movement's ``λ_t · mean σ(S)`` added to the model's own (training) loss."""
        if not module.training or self.pruner is None or getattr(output, "loss", None) is None:
            return output
        reg = self.pruner.regularization(self._step)
        if reg is not None:
            output.loss = output.loss + reg
        return output

    def regularization(self) -> Optional[torch.Tensor]:
        """The L1 term of the current step (soft movement before the ramp ends), else None."""
        return None if self.pruner is None else self.pruner.regularization(self._step)

    # ------------------------------------------------------------------ Trainer events
    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.prepare(model)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            raise ValueError("PruningCallback needs the model (Trainer passes it to callbacks)")
        if not masked_linears(model):
            raise RuntimeError(
                "the model was not sparsified before the optimizer was built: pass the callback to "
                "Trainer(callbacks=[...]) or call spd.hf.prepare_model(model, callback) first"
            )
        layers = self.prepare(model)
        if optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            stale = [n for n, m in layers.items() if m.weight.requires_grad and id(m.weight) not in held]
            if stale:
                raise RuntimeError(
                    f"the optimizer does not hold the masked layers' weights (e.g. {stale[0]}): it was "
                    "built before the model was sparsified; call spd.hf.prepare_model first"
                )
        # the schedule is a pure function of the step: a resumed run needs no other state (a
        # movement method re-commits its final budget once after resuming, which changes nothing)
        self.pruner = Pruner(layers, self.config, max(int(state.max_steps), 1))
        self._step = int(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step = int(state.global_step)
        self.pruner.update(self._step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if model is not None:
            finish_model(model, self.at_end)

    def sparsity(self, model: nn.Module) -> float:
        """Fraction of the masked layers' weights the forward pass drops."""
        layers = masked_linears(model)
        return model_sparsity(layers) if layers else 0.0

    def target_sparsity(self, step: int) -> float:
        """The schedule's sparsity for optimizer step ``step`` (0-based) of ``max_steps``."""
        if self.pruner is None:
            raise RuntimeError("the schedule is known once training has begun")
        return self.pruner.target_sparsity(step)


def finish_model(model: nn.Module, at_end: str = "densify") -> nn.Module:
    """``densify``: every MaskedLinear becomes an ``nn.Linear`` holding the masked weight
    (zeros baked in), so the model's own ``save_pretrained`` writes the pruned weights;
    ``export``: packed ``SparseLinear`` layers for the sparse kernels; ``keep``: nothing."""
    import spd_kernels as sk

    if at_end not in AT_END:
        raise ValueError(f"at_end must be one of {AT_END}, got {at_end!r}")
    if at_end == "densify":
        sk.densify(model)
    elif at_end == "export":
        sk.export(model)
    return model


def prepare_model(model: nn.Module, callback) -> nn.Module:
    """Sparsify ``model`` for ``callback`` now (before building an optimizer yourself)."""
    callback.prepare(model)
    return model


def create_optimizer(model: nn.Module, args, callback=None) -> torch.optim.Optimizer:
    """The CLI's AdamW (decayed weights / undecayed biases and LayerNorm / scores at the
    pruning method's ``score_lr``) from ``TrainingArguments``; the model must be prepared."""
    score_lr = args.learning_rate
    if callback is not None and callback.config.score_mode is not None:
        score_lr = callback.config.score_lr
    return build_optimizer(model, args.learning_rate, args.weight_decay, score_lr)


# ---------------------------------------------------------------------- the trainer
class _DistillationTrainer:
    """A ``transformers.Trainer`` with the ``spd`` CLI's loss and optimizer.

    Args (besides the ``Trainer``'s own):
        teacher: a frozen fine-tuned model of the same architecture (or None: labels only).
        distill: :class:`spd.distill.DistillConfig` (or a dict of its fields); default: SPD's
            loss (hidden + attention + logits) with ``graft``, else the CLI's ``--kd`` loss
            (0.5 labels + 0.5 logits at T = 2) with a teacher, else the labels alone.
        graft: :class:`spd.grafting.GraftConfig` (or a dict): SPD's module grafting, each
            encoder layer position runs the teacher's layer with probability ``1 - p``.
        regression: the task is regression (default: ``config.num_labels == 1``).
        attention: ``auto`` (SDPA unless the attention loss needs the maps) or ``eager``.

    The loss of a micro-batch is :func:`spd.trainer.batch_loss` divided by the examples of the
    whole optimizer step (``num_items_in_batch``, over all processes), soft movement's L1 term
    once per step; gradients therefore add up to the single-process ones under data
    parallelism and gradient accumulation, as in the CLI. Evaluation runs the student alone
    and reports its task loss, so ``compute_metrics`` sees plain logits.
    """

    def __init__(
        self,
        *args,
        teacher: Optional[nn.Module] = None,
        distill: Union[DistillConfig, Dict[str, Any], None] = None,
        graft: Union[GraftConfig, Dict[str, Any], None] = None,
        regression: Optional[bool] = None,
        attention: str = "auto",
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if isinstance(graft, dict):
            graft = GraftConfig(**graft)
        if distill is None:
            method = "spd" if graft is not None else "magnitude"
            distill = method_distill_defaults(method, teacher is not None)
        if isinstance(distill, dict):
            distill = DistillConfig(**distill)
        if distill.needs_teacher and teacher is None:
            raise ValueError("the distillation loss needs a teacher (teacher=...)")
        if graft is not None and teacher is None:
            raise ValueError("grafting needs a teacher (teacher=...)")
        self.teacher = teacher.to(self.args.device) if teacher is not None else None
        self.distill = distill
        self.graft = graft
        model = self.model
        if regression is None:
            regression = getattr(getattr(model, "config", None), "num_labels", 2) == 1
        self.regression = bool(regression)
        self.grafter = Grafter(model, teacher, teacher_mode=graft.teacher_mode) if graft is not None else None
        setup_distillation(model, teacher, distill, attention_for(distill, attention), graft is not None)
        # num_items_in_batch (the examples of the optimizer step) is counted and the loss is
        # already normalised by it: the Trainer must not divide it by the accumulation steps
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True
        if graft is not None and self.args.ddp_find_unused_parameters is None:
            self.args.ddp_find_unused_parameters = True  # grafted-out student layers get no gradient
        self._seen_step: Optional[int] = None
        self._choices = None

    @property
    def pruning_callback(self):
        for cb in self.callback_handler.callbacks:
            if isinstance(cb, _PruningCallback):
                return cb
        return None

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            self.optimizer = create_optimizer(model or self.model, self.args, self.pruning_callback)
        return self.optimizer

    def _step_state(self, step: int):
        """Soft movement's L1 term (first micro-batch of a step only) and the grafting choices
        (one draw per step, seeded by (seed, step))."""
        reg = None
        if step != self._seen_step:
            self._seen_step = step
            cb = self.pruning_callback
            reg = cb.regularization() if cb is not None else None
            if self.grafter is not None:
                p = self.graft.probability(step, max(int(self.state.max_steps), 1))
                self.grafter.generator.manual_seed(int(self.args.seed) * 1_000_003 + step)
                self._choices = self.grafter.sample(p)
        return reg

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:  # evaluation: the student alone, its task loss, SDPA attention
            unwrapped = self.accelerator.unwrap_model(model)
            ctx = attention_implementation(unwrapped, "sdpa") if hasattr(unwrapped, "config") else None
            with ctx or contextlib.nullcontext():
                outputs = model(**inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss
        step = int(self.state.global_step)
        reg = self._step_state(step)
        n = inputs["labels"].shape[0] if num_items_in_batch is None else int(num_items_in_batch)
        world = self.accelerator.num_processes if self.args.average_tokens_across_devices else 1
        loss, parts, outputs = batch_loss(
            model,
            inputs,
            self.distill,
            n,
            teacher=self.teacher,
            regression=self.regression,
            grafter=self.grafter,
            choices=self._choices,
            reg=reg,
            world_size=world,
            device=self.args.device,
        )
        if world > 1:
            loss = loss * world  # DDP averages the gradients; the step's loss is their sum
        if not loss.requires_grad:
            # every layer position grafted from the frozen teacher: no gradient reaches the
            # student (the CLI skips the backward); a leaf lets the Trainer's backward run and
            # leaves every parameter's grad at None, so the optimizer skips them as in the CLI
            loss = loss.detach().requires_grad_()
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------- lazy classes
_CLASSES: Dict[str, type] = {}


def __getattr__(name: str):
    if name not in ("PruningCallback", "DistillationTrainer"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _CLASSES:
        from transformers import Trainer, TrainerCallback

        pruning = name == "PruningCallback"
        bases = (_PruningCallback, TrainerCallback) if pruning else (_DistillationTrainer, Trainer)
        doc = bases[0].__doc__
        _CLASSES[name] = type(name, bases, {"__module__": __name__, "__doc__": doc, "__qualname__": name})
    return _CLASSES[name]


__all__ = [
    "AT_END",
    "DistillationTrainer",  # noqa: F822 (built on first access by __getattr__)
    "PruningCallback",  # noqa: F822
    "create_optimizer",
    "finish_model",
    "prepare_model",
]
