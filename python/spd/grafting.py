"""Progressive module grafting (SPD, Huang et al. 2022).

During SPD's second stage each encoder layer position of the student runs the student's own
(pruned) layer with probability ``p`` and the teacher's dense layer otherwise; the teacher's
layers are frozen, so gradients reach the student's layers through whichever teacher layers
sit above them. ``p`` rises to 1 along :func:`spd.schedules.graft_probability`; evaluation
always uses the student alone (no grafting).

The per-step choice is drawn from a dedicated, seeded ``torch.Generator`` whose state is saved
in the checkpoint, so a resumed run draws the same layers, and every data-parallel rank (same
seed, same step) draws the same layers without communicating.

The swap is done in place on the student's ``ModuleList`` for the duration of one forward
(:meth:`Grafter.grafted`), so the student's parameter names and state dict never change.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Sequence

import torch
from torch import nn

from .models import encoder_layers
from .schedules import GRAFT_SCHEDULES, graft_probability


@dataclass
class GraftConfig:
    schedule: str = field(
        default="constant",
        metadata={
            "help": "how p (probability that a layer position uses the student's layer) rises to 1 "
            "during SPD's second stage: constant (p0, then 1 in stage 3), linear (p0 -> 1) or mixed "
            "(p0 for the first 'graft_hold' fraction, then linear to 1)",
            "choices": GRAFT_SCHEDULES,
        },
    )
    p0: float = field(
        default=0.8,
        metadata={
            "help": "grafting probability at the start of stage 2 (the SPD authors' --replacing_rate "
            "0.8, held constant: their scheduler's slope defaults to 0)"
        },
    )
    hold: float = field(default=0.5, metadata={"help": "mixed schedule: fraction of stage 2 held at p0"})
    teacher_mode: str = field(
        default="train",
        metadata={
            "help": "mode of the teacher layers grafted into the student: train (dropout on, as in the "
            "SPD authors' code, where they are the student model's own predecessor layers) or eval",
            "choices": ("train", "eval"),
        },
    )
    final_stage: str = field(
        default="continue",
        metadata={
            "help": "stage 3 (fixed masks): continue grafting at the p stage 2 ended with (the SPD "
            "authors' code keeps p = 0.8 through its second LR cycle) or off (the student alone)",
            "choices": ("continue", "off"),
        },
    )

    def __post_init__(self) -> None:
        graft_probability(0, 1, self.schedule, self.p0, self.hold)  # validates
        if self.teacher_mode not in ("train", "eval"):
            raise ValueError(f"graft teacher_mode must be 'train' or 'eval', got {self.teacher_mode!r}")
        if self.final_stage not in ("continue", "off"):
            raise ValueError(f"graft final_stage must be 'continue' or 'off', got {self.final_stage!r}")

    def final_p(self) -> float:
        """The probability stage 2 ends with (constant: p0; linear and mixed reach 1)."""
        return self.p0 if self.schedule == "constant" else 1.0

    def probability(self, step: int, total_steps: int) -> float:
        return graft_probability(step, total_steps, self.schedule, self.p0, self.hold)


class Grafter:
    """Swaps teacher layers into the student's encoder for one forward pass.

    Args:
        student, teacher: models of the same architecture (same number of encoder layers);
            the teacher should be frozen and in eval mode.
        seed: seed of the generator that draws the layer choices.
        teacher_mode: ``train`` runs a grafted teacher layer in the student's mode (dropout on
            while the student trains: the SPD authors' predecessor layers), ``eval`` always in
            eval mode; the teacher's mode is restored after the forward.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, seed: int = 0, teacher_mode: str = "eval"):
        self.layers = encoder_layers(student)
        self.teacher_layers: List[nn.Module] = list(encoder_layers(teacher))
        if len(self.layers) != len(self.teacher_layers):
            raise ValueError(
                f"student has {len(self.layers)} encoder layers, teacher {len(self.teacher_layers)}; "
                "grafting needs the same depth"
            )
        if teacher_mode not in ("train", "eval"):
            raise ValueError(f"teacher_mode must be 'train' or 'eval', got {teacher_mode!r}")
        self.teacher_mode = teacher_mode
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def sample(self, p: float) -> List[bool]:
        """One draw per layer position: True = the student's layer (probability ``p``)."""
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"grafting probability must lie in [0, 1], got {p}")
        u = torch.rand(self.num_layers, generator=self.generator)
        return (u < p).tolist()  # u in [0, 1): p = 1 always the student, p = 0 always the teacher

    @contextmanager
    def grafted(self, use_student: Sequence[bool]) -> Iterator[None]:
        """Within the context the student's layer ``i`` is replaced by the teacher's where
        ``use_student[i]`` is False."""
        if len(use_student) != self.num_layers:
            raise ValueError(f"need {self.num_layers} layer choices, got {len(use_student)}")
        own = list(self.layers)
        modes = [t.training for t in self.teacher_layers]
        try:
            for i, keep in enumerate(use_student):
                if not keep:
                    t = self.teacher_layers[i]
                    # train: the grafted layer runs as the student's own layer would (dropout
                    # when the student trains), as in the SPD authors' model
                    t.train(own[i].training if self.teacher_mode == "train" else False)
                    self.layers[i] = t
            yield
        finally:
            for i, layer in enumerate(own):
                self.layers[i] = layer
            for t, mode in zip(self.teacher_layers, modes):
                t.train(mode)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])


__all__ = ["GraftConfig", "Grafter"]
