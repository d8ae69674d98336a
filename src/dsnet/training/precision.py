"""Mixed precision with one code path: an autocast context that does nothing where it does not apply."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

__all__ = ["Precision", "resolve_precision"]


@dataclass(frozen=True)
class Precision:
    """The resolved precision of a run.

    Attributes:
        dtype: the autocast dtype, or None for plain fp32.
        device_type: "cuda" or "cpu".
    """

    dtype: torch.dtype | None
    device_type: str

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def autocast(self) -> contextlib.AbstractContextManager:
        """autocast for bf16/fp16; a null context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype is torch.float16)


def resolve_precision(mode: str, device: torch.device) -> Precision:
    """'auto' is bf16 on a GPU and fp32 on a CPU (CPU autocast is slower than fp32 on most machines)."""
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    return Precision(dtype, device.type)
