"""One code path for 1..n processes: detect `torchrun`, set up the process group, reduce across ranks.

Without torchrun's environment variables everything here is a no-op on a single process, so the trainer
and the evaluator never branch on whether they run distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistributedContext", "setup_distributed", "teardown_distributed", "all_reduce_sum", "resolve_device"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' -> the local CUDA device when there is one, else the CPU; 'cuda' -> the local rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup_distributed(device: str = "auto") -> DistributedContext:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK and joins the process group (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, resolved)


def teardown_distributed() -> None:
    """Leaves the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over all ranks in place (no-op on one process) and returns it."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
