"""``FastDropout``: ``nn.Dropout`` through :func:`spd_kernels.dropout.dropout` (the C++ kernel on
CPU float32 / bfloat16, torch's dropout elsewhere), and the swap of a model's dropout modules."""

from __future__ import annotations

from torch import Tensor, nn

from ..dropout import dropout


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose training forward runs the counter-based CPU kernel. A subclass, so
    code that reads ``module.p`` (Hugging Face passes the attention dropout's ``p`` to SDPA)
    or checks ``isinstance(m, nn.Dropout)`` sees no difference."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, self.inplace)


def use_fast_dropout(model: nn.Module, enabled: bool = True) -> int:
    """Replace every ``nn.Dropout`` of ``model`` by :class:`FastDropout` (``enabled``) or every
    FastDropout by ``nn.Dropout`` (not ``enabled``), in place, keeping ``p``, ``inplace`` and
    the training flag. Returns how many modules were replaced."""
    old, new = (nn.Dropout, FastDropout) if enabled else (FastDropout, nn.Dropout)
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is old
    ]
    for parent, name, child in swaps:
        m = new(child.p, child.inplace)
        m.train(child.training)
        setattr(parent, name, m)
    return len(swaps)
