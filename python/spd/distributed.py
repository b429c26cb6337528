"""Data parallelism for ``torchrun`` and ``accelerate launch``.

Both launchers set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` reads them and joins the process group (``nccl`` on
CUDA, ``gloo`` on CPU). Gradients are averaged by :func:`all_reduce_gradients` — one flat
all-reduce per optimizer step, after gradient accumulation — instead of wrapping the model in
``DistributedDataParallel``: SPD's grafting leaves different student layers unused from step
to step, and the per-example loss normalisation by the *global* batch (see
:mod:`spd.distill`) makes the sum of the ranks' gradients exactly the single-process
gradient, which DDP's averaging would not give for uneven last batches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, List

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched with WORLD_SIZE > 1; pick the device.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1)) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def all_reduce_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Sum the gradients of ``params`` over all ranks.

    A parameter that has a gradient on some rank gets the sum (a missing gradient counts as
    zero); one that has no gradient on any rank (a student layer grafted out this step) keeps
    ``grad = None``, so AdamW skips it exactly as it would in a single process."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=info.device)
    dist.all_reduce(has, op=dist.ReduceOp.MAX)
    grads: List[torch.Tensor] = []
    for p, h in zip(params, has.tolist()):
        if not h:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off : off + n].view_as(g))
        off += n


def all_reduce_sum(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def gather_tensor(t: torch.Tensor, info: DistInfo) -> List[torch.Tensor]:
    """All ranks' copies of a same-shape tensor (for saving every rank's RNG state)."""
    if not info.enabled:
        return [t]
    src = t.to(info.device)
    out = [torch.empty_like(src) for _ in range(info.world_size)]
    dist.all_gather(out, src)
    return [o.cpu() for o in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistInfo",
    "all_reduce_gradients",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "gather_tensor",
    "init_distributed",
]
