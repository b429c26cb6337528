"""spd: movement pruning and Sparse Progressive Distillation on top of spd_kernels.

Modules: :mod:`spd.schedules` (cubic sparsity, grafting p, soft-movement τ/λ, LR factor),
:mod:`spd.pruning` (magnitude / movement / soft movement on MaskedLinear), :mod:`spd.distill`
(KD losses), :mod:`spd.grafting` (progressive module grafting), :mod:`spd.data` and
:mod:`spd.metrics` (tasks, tokenisation cache, metrics), :mod:`spd.models` (loading, the
MaskedLinear swap, saving), :mod:`spd.trainer` / :mod:`spd.methods` (the loop and each method as phases),
:mod:`spd.checkpoint` (atomic, unpickle-free checkpoints), :mod:`spd.distributed`, and the
``spd`` command line (:mod:`spd.cli`).
"""

__version__ = "0.1.0"
