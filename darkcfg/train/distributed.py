"""``torchrun`` support: one process per device, each training on a shard of every batch.

torchrun sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (and the rendezvous address); with
``WORLD_SIZE > 1`` the process group is opened with ``nccl`` on CUDA and ``gloo`` on CPU.
Gradients are all-reduced by ``DistributedDataParallel`` (an average), so the loss is
multiplied by the world size to get the SUM over the whole batch that Darknet's update
expects: the result equals one process training on the whole batch (up to float
summation order), with batch-norm statistics per process as on Darknet's multi-GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: Optional[str]) -> DistInfo:
    """The process's place in a torchrun job (a 1-process "job" without torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, dev)


def all_reduce_sum(value: float, info: DistInfo) -> float:
    """Sum a Python number over all processes (identity without a process group)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def convert_sync_batchnorm(model: torch.nn.Module) -> int:
    """Swap every layer's Darknet batch norm for ``torch.nn.SyncBatchNorm`` (statistics over all
    processes), sharing the same parameter and statistics tensors so ``.weights`` save unchanged.

    PyTorch's SyncBatchNorm normalises with the biased batch variance and back-propagates the
    exact gradient (Darknet: unbiased variance, its own backward); it runs on GPUs only, and only
    for the AlexeyAB formula.  Returns the number of layers converted.
    """
    from ..layers.conv import DarknetBatchNorm

    count = 0
    for module in model.modules():
        bn = getattr(module, "bn", None)
        if not isinstance(bn, DarknetBatchNorm):
            continue
        if bn.pjreddie:
            raise ValueError("--sync-bn: this cfg uses pjreddie's batch-norm formula, which SyncBatchNorm "
                             "does not compute")
        sync: Any = torch.nn.SyncBatchNorm(bn.weight.numel(), eps=1e-5, momentum=bn.momentum)
        sync.weight, sync.bias = bn.weight, bn.bias
        sync.running_mean, sync.running_var = bn.running_mean, bn.running_var
        setattr(module, "bn", sync.to(bn.weight.device))
        count += 1
    return count
