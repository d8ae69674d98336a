"""The fast path: channels_last, regional `torch.compile` with a clean eager fallback, and their defaults.

What each piece buys is measured by `benchmarks/throughput.py` (numbers in `benchmarks/RESULTS.md`):

- channels_last: NHWC activations, which oneDNN (CPU) and cuDNN (GPU tensor cores) convolve without reordering;
  on by default on both (`train.channels_last: null`).
- Regional compilation: `torch.compile` of every block that sits in a `Sequential`/`ModuleList` (DS-Net's robust
  modules and reduction blocks, ResNet bottlenecks, WRN blocks), in place. Blocks of the same shape share one
  compiled graph, so DS-Net-4 compiles 5 graphs per mode instead of one graph of 900 operators, and the state
  dict keeps its keys (no `_orig_mod.`). Inductor fuses each block's BN/ReLU/Swish/adds into a few kernels.
  On by default on GPU; off on CPU (`train.compile: auto`), where compiling DS-Net-4 takes minutes.
- Attacks differentiate the input only with the parameters' `requires_grad` switched off
  (`dsnet.attacks.core.frozen_parameters`), so the compiled backward of an attack step skips weight gradients.
- bf16 autocast on GPU: `dsnet.runtime.precision`.

If compilation fails (no C compiler, an unsupported operator), `EagerFallback` logs one warning, restores the
eager blocks and reruns the call, so a run never dies of the optimisation.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "COMPILE_MODES",
    "resolve_channels_last",
    "resolve_compile",
    "compile_regions",
    "uncompile",
    "EagerFallback",
    "ModelHandles",
    "wrap_for_training",
]

logger = logging.getLogger(__name__)

COMPILE_MODES = ("auto", True, False)
COMPILE_BACKEND = "inductor"
"""The torch.compile backend of `compile_regions` (tests swap in a failing one)."""

_CONTAINERS = (nn.Sequential, nn.ModuleList)


def resolve_channels_last(setting: bool | None, device: torch.device) -> bool:
    """None (auto) is on: channels_last is faster on GPUs and, with oneDNN, on CPUs (benchmarks/RESULTS.md)."""
    return True if setting is None else bool(setting)


def resolve_compile(setting: bool | str, device: torch.device) -> bool:
    """'auto' compiles on a GPU only: on a CPU, compiling DS-Net-4 takes minutes (enable it for long runs)."""
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def compile_regions(model: nn.Module, backend: str | None = None, **options: Any) -> list[str]:
    """Compiles, in place, every block that is an element of a `Sequential` or `ModuleList`.

    Blocks outside such containers (a stem conv, the classifier) stay eager; a model without containers is
    compiled whole. Compiled blocks keep their parameters and state-dict keys.

    Args:
        model: the model to speed up; modified in place.
        backend: torch.compile backend (default `COMPILE_BACKEND`, inductor).
        **options: further `torch.compile` arguments (mode, dynamic, ...).

    Returns:
        The qualified names of the compiled blocks ("" for the whole model).
    """
    backend = backend or COMPILE_BACKEND
    # Each block class is one code object whose graphs differ by width, mode and batch size; the default limit of
    # 8 graphs per code object would silently send DS-Net's later variants back to eager.
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), 64))
            break
    regions: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = prefix + name
            if isinstance(module, _CONTAINERS) and not isinstance(child, (nn.ModuleList, nn.ModuleDict)):
                child.compile(backend=backend, **options)
                regions.append(path)
            else:
                visit(child, path + ".")

    visit(model, "")
    if not regions:
        model.compile(backend=backend, **options)
        regions.append("")
    return regions


def uncompile(model: nn.Module) -> None:
    """Undoes `compile_regions` / `nn.Module.compile` on every submodule (there is no public API for it)."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def _is_compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


@contextlib.contextmanager
def _backward_compiled_with_forward() -> Iterator[None]:
    """AOTAutograd compiles a backward graph at its first backward call; compiling it with the forward makes a
    failure surface here, where it can fall back, and not in the trainer's `loss.backward()`."""
    functorch_config = torch._functorch.config
    if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        with functorch_config.patch(force_non_lazy_backward_lowering=True):
            yield
    else:
        yield


class EagerFallback(nn.Module):
    """Calls `model` (whose blocks may be compiled in place); the first call whose compilation fails restores
    the eager blocks, logs one warning and is rerun eagerly, as are all later calls.

    Failures that eager execution reproduces are the model's own and are raised unchanged. A call that failed
    while compiling a later block has already run the earlier blocks once, so in train mode their BN
    statistics see that one batch twice.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.module = model  # `.module`, as DDP names what it wraps (`dsnet.objectives.awp.innermost_module`)
        self.fell_back = False

    @property
    def compiled(self) -> bool:
        return not self.fell_back and _is_compiled(self.module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.fell_back or not _is_compiled(self.module):
            return self.module(*args, **kwargs)
        try:
            with _backward_compiled_with_forward():
                return self.module(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure; eager reproduces real model errors
            uncompile(self.module)
            self.fell_back = True
            out = self.module(*args, **kwargs)
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            logger.warning("torch.compile failed (%s: %s); continuing in eager mode (set train.compile=false to "
                           "skip compiling)", type(error).__name__, first_line[:300])
            return out


@dataclass
class ModelHandles:
    """One model as the trainer uses it, under three names for three jobs.

    Attributes:
        raw: the module itself: its state dict is what checkpoints hold (no `module.` or `_orig_mod.` keys), and the
            weight average and AWP read its parameters.
        fast: `raw` with its blocks compiled (or `raw` itself): validation and the collapse guard run it.
        train: `fast` inside DistributedDataParallel under DDP (or `fast`): the training step calls it.
    """

    raw: nn.Module
    fast: nn.Module
    train: nn.Module


def wrap_for_training(model: nn.Module, compile_setting: bool | str, device: torch.device,
                      distributed: bool, find_unused_parameters: bool = False) -> ModelHandles:
    """The handles of `model`: its blocks compiled in place when `compile_setting` resolves to on (with an eager
    fallback), and DDP around them under a process group (told when some parameters get no gradient,
    `dsnet.models.parameters.parameters_without_gradient`)."""
    fast: nn.Module = model
    if resolve_compile(compile_setting, device):
        try:
            regions = compile_regions(model)
            logger.debug("compiled %d blocks: %s", len(regions), ", ".join(regions))
        except Exception as error:  # noqa: BLE001 - e.g. torch.compile unsupported on this Python
            logger.warning("torch.compile is unavailable (%s); training in eager mode", error)
        fast = EagerFallback(model)
    train = fast
    if distributed:
        from torch.nn.parallel import DistributedDataParallel

        train = DistributedDataParallel(fast, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=find_unused_parameters)
    return ModelHandles(model, fast, train)
