"""spd: movement pruning and Sparse Progressive Distillation on top of spd_kernels."""

__version__ = "0.1.0"
