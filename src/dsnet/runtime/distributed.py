"""One code path for 1..n processes: detect `torchrun`, set up the process group, shard work, reduce across ranks.

Without torchrun's environment variables everything here is a no-op on a single process, so the trainer
and the evaluator never branch on whether they run distributed.

What keeps n processes equal to one process with the same global batch: every rank starts from rank 0's
weights (DDP broadcasts them), gradients are averaged (DDP), BatchNorm normalises over the global batch
(`convert_sync_batchnorm`; torch's `SyncBatchNorm` on GPU, `CPUSyncBatchNorm` over gloo on CPU), and
`replica_divergence` checks at every epoch end that weights, attention and BN buffers agree on all ranks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistributedContext",
    "setup_distributed",
    "teardown_distributed",
    "all_reduce_mean",
    "all_reduce_sum",
    "all_reduce",
    "gather_objects",
    "barrier",
    "shard_positions",
    "resolve_device",
    "CPUSyncBatchNorm",
    "convert_sync_batchnorm",
    "broadcast_buffers",
    "replica_divergence",
    "local_rank_zero_first",
]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank, the number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_process_group: bool = False
    """This call joined the process group, so the run that made it leaves it (`teardown_distributed`)."""

    @property
    def is_main(self) -> bool:
        """Rank 0 alone prints, shows progress and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """'auto' -> the local CUDA device when there is one, else the CPU; 'cuda' -> the local rank's GPU.

    Raises:
        ConfigError: naming `option` (the setting the user gave), when the device does not exist here.
    """
    from dsnet.errors import ConfigError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option} {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise ConfigError(f"{option} {name} asks for {device}, but this machine has "
                          f"{torch.cuda.device_count()} visible GPU(s); use {option} auto or cpu")
    return device


def setup_distributed(device: str = "auto", option: str = "train.device") -> DistributedContext:
    """Reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK and joins the process group (NCCL on GPU, gloo on CPU).

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N".
        option: how the user set `device` ("train.device", "--device"), for the error message.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank, option)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    joined = False
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
        joined = True
    return DistributedContext(rank, world_size, local_rank, resolved, joined)


def teardown_distributed() -> None:
    """Leaves the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sums a tensor over all ranks in place (no-op on one process) and returns it."""
    return all_reduce(tensor, "sum")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduces a tensor over all ranks in place with "sum", "max" or "min" (no-op on one process)."""
    if _group_size() > 1:
        ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
        dist.all_reduce(tensor, op=ops[op])
    return tensor


def all_reduce_mean(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Averages each tensor over all ranks in place, with one collective for the whole list (no-op on one process)."""
    size = _group_size()
    if size > 1 and tensors:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
    return tensors


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; a one-element list on one process."""
    if _group_size() <= 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier() -> None:
    """Waits for every rank (no-op on one process)."""
    if _group_size() > 1:
        dist.barrier()


def shard_positions(n: int, rank: int, world_size: int, block: int = 1) -> torch.Tensor:
    """The positions 0..n-1 that `rank` of `world_size` processes works on.

    Blocks of `block` consecutive positions are dealt round-robin: block b goes to rank b % world_size. The
    ranks' positions partition range(n), and each rank's positions come in whole blocks, so with `block` equal
    to the batch size every rank forms exactly the batches a single process would form.

    Args:
        n: number of points.
        rank: this process's rank, 0 <= rank < world_size.
        world_size: number of processes.
        block: positions per block.

    Returns:
        (m,) int64 positions, increasing.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    if block < 1 or n < 0:
        raise ValueError(f"need n >= 0 and block >= 1, got n={n}, block={block}")
    positions = torch.arange(n)
    return positions[(positions // block) % world_size == rank]


@contextlib.contextmanager
def local_rank_zero_first(ctx: DistributedContext) -> Iterator[None]:
    """Runs the body on each machine's local rank 0 before the other ranks (e.g. a dataset download into a shared
    folder, which n concurrent downloads would garble); a no-op on one process."""
    if ctx.distributed and ctx.local_rank != 0:
        dist.barrier()
    yield
    if ctx.distributed and ctx.local_rank == 0:
        dist.barrier()


def _group_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the incoming gradients over ranks (every rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training-mode statistics cover the batches of all ranks, for gloo (CPU) process groups.

    torch's `SyncBatchNorm` runs on GPUs only. This one computes the global mean and then the global variance
    with two differentiable all-reduces (whose backward sums the gradients over ranks), so a 2-process step
    equals a 1-process step on the concatenated batch up to float rounding. Eval mode, and training on a single
    process, are plain `F.batch_norm`. Same parameters, buffers and state-dict keys as `nn.BatchNorm2d`.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and _group_size() > 1):
            return super().forward(input)
        all_reduce = _AllReduceSum.apply
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        local_count = torch.full((1,), float(x.numel() // x.shape[1]), device=x.device)
        totals = all_reduce(torch.cat([x.sum(dims), local_count]))
        count = totals[-1].detach()
        mean = totals[:-1] / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.square().sum(dims)) / count
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                n = float(count)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        return out.to(input.dtype)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm layer by one that normalises over the global batch (GPU: torch's SyncBatchNorm,
    CPU: `CPUSyncBatchNorm`). Parameters and buffers are shared with the old layers, so optimisers and state-dict
    keys are unaffected. Call it before building optimisers; it returns the model (a new one only if the model
    itself is a BatchNorm layer)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert_cpu(model)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats, device=torch.device("meta"))
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(out, name, getattr(module, name))
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out


def broadcast_buffers(model: nn.Module) -> None:
    """Copies rank 0's buffers (BN running statistics) to every rank (no-op on one process).

    DDP broadcasts buffers before a forward pass; doing it at the end of an epoch as well means that validation
    and the checkpoint see the same statistics on every rank even without synchronised BatchNorm.
    """
    if _group_size() > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def replica_divergence(model: nn.Module) -> float:
    """The largest relative difference between ranks of a per-tensor fingerprint (sum and sum of squares, in
    float64) of every parameter and floating-point buffer: 0.0 when all replicas agree, and on one process."""
    if _group_size() <= 1:
        return 0.0
    tensors = [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    fingerprint = torch.stack([torch.stack([t.detach().double().sum(), t.detach().double().square().sum()])
                               for t in tensors]).flatten()
    gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fingerprint)
    scale = gathered[0].abs().clamp_min(1.0)
    return max(float(((g - gathered[0]).abs() / scale).max()) for g in gathered)
