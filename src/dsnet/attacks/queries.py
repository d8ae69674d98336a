"""What an attack cost, counted on the model: images sent forward, and images whose gradient came back.

`count_queries(model)` hooks the module an evaluation attacks (as adversarial-library's `run_attack` counts with its
forward and backward counters): a forward pre-hook adds the batch size of every call, and a hook on every output
that needs a gradient adds the batch size each time a gradient flows back into it. The counts are of images, not of
calls, so an attack that runs on a shrinking set of points is charged for what it really computed; divided by the
points attacked they are the queries per point that papers quote (PGD-20 from a random start: 21 forwards and 20
backwards per point, plus the forward that classifies the final point).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = ["QueryCount", "count_queries"]


@dataclass
class QueryCount:
    """Images the model computed forward (`forward`) and backward (`backward`), and in how many calls."""

    forward: int = 0
    backward: int = 0
    forward_calls: int = 0
    backward_calls: int = 0

    def totals(self) -> QueryCount:
        """The counts summed over every process of the group (the counts of this process without one)."""
        from dsnet.runtime.distributed import all_reduce

        values = torch.tensor([self.forward, self.backward, self.forward_calls, self.backward_calls],
                              dtype=torch.int64)
        device = _group_device()
        summed = all_reduce(values.to(device), "sum").cpu().tolist()
        return QueryCount(*[int(v) for v in summed])

    def to_dict(self, points: int) -> dict[str, Any]:
        """The counts, and per attacked point (None when no point was attacked)."""
        return {"forward_images": self.forward, "backward_images": self.backward, "forward_calls": self.forward_calls,
                "backward_calls": self.backward_calls, "points": points,
                "forward_per_point": self.forward / points if points else None,
                "backward_per_point": self.backward / points if points else None}


def _group_device() -> torch.device:
    """Where the process group reduces (the GPU of this rank under NCCL, else the CPU)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _batch_size(value: Any) -> int:
    return int(value.shape[0]) if isinstance(value, torch.Tensor) and value.dim() > 0 else 1


@contextmanager
def count_queries(model: nn.Module) -> Iterator[QueryCount]:
    """Counts every forward and backward pass through `model` inside the block (the hooks are removed after)."""
    count = QueryCount()

    def before(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        count.forward += _batch_size(inputs[0]) if inputs else 1
        count.forward_calls += 1

    def after(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.requires_grad:
            size = _batch_size(output)

            def backward(grad: torch.Tensor) -> None:
                count.backward += size
                count.backward_calls += 1

            output.register_hook(backward)

    handles = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        yield count
    finally:
        for handle in handles:
            handle.remove()
