"""Numeric precision with one code path: autocast for training, and true fp32 for evaluation.

`Precision` is the training side: an autocast context that does nothing where it does not apply, and a grad
scaler that is active for fp16 only.

`full_fp32()` is the evaluation side. On Ampere-class and newer GPUs torch runs fp32 convolutions in TF32 by
default (cuDNN's `fp32_precision` is "tf32"), and matmuls may be set to TF32 or bf16 by the user; a reported
"fp32" robust accuracy would then be something else. Inside `full_fp32()` every fp32 convolution and matmul runs
in IEEE fp32 (cuDNN, cuBLAS, and oneDNN on CPUs) with autocast off; the caller's settings come back afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Precision", "resolve_precision", "full_fp32", "math_mode", "evaluation_math", "MATH_MODES"]

MATH_MODES = ("fp32", "tf32")
"""The evaluator's fp32 math (`--math`): "fp32" is IEEE fp32 everywhere (the default, what a reported number
means); "tf32" lets NVIDIA GPUs (Ampere and newer) run fp32 convolutions and matmuls on TF32 tensor cores (10-bit
mantissa), faster and slightly different; on a CPU it computes what "fp32" does."""

# The per-backend switches of torch >= 2.9 ("ieee" = true fp32, "tf32", "bf16", "none" = inherit).
_PRECISION_PATHS = ("cuda.matmul", "cudnn.conv", "cudnn.rnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")


def _backend(path: str) -> Any:
    obj: Any = torch.backends
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if hasattr(obj, "fp32_precision") else None


def math_mode() -> dict[str, Any]:
    """The fp32 math settings now in force, for reports: each backend's fp32 precision and the matmul setting."""
    backends = {path: _backend(path) for path in _PRECISION_PATHS}
    if any(b is not None for b in backends.values()):
        # (torch's global getter refuses to answer once the per-backend switches differ, so it is not asked)
        return {path: b.fp32_precision for path, b in backends.items() if b is not None}
    return {"float32_matmul_precision": torch.get_float32_matmul_precision(),  # torch < 2.9: the legacy switches
            "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32}


@contextlib.contextmanager
def full_fp32(device_type: str = "cuda", gpu: str = "ieee") -> Iterator[dict[str, Any]]:
    """IEEE fp32 for every convolution and matmul, and autocast off, inside the block; restored afterwards.

    Args:
        device_type: the autocast device type to switch off.
        gpu: "tf32" lets cuBLAS and cuDNN (only) use TF32 tensor cores instead (`evaluation_math("tf32")`).

    Yields:
        `math_mode()` as it is inside the block (what a report records).
    """
    backends = {path: _backend(path) for path in _PRECISION_PATHS}
    if any(b is not None for b in backends.values()):
        saved = {path: b.fp32_precision for path, b in backends.items() if b is not None}
        legacy = None
    else:
        saved = {}
        legacy = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        saved_matmul = torch.get_float32_matmul_precision()
    try:
        # The new per-backend switches and the legacy flags must not be mixed (torch refuses to read a mix).
        if legacy is None:
            for path, backend in backends.items():
                if backend is not None:
                    backend.fp32_precision = gpu if path.startswith("cud") else "ieee"
        else:
            torch.backends.cuda.matmul.allow_tf32 = gpu == "tf32"
            torch.backends.cudnn.allow_tf32 = gpu == "tf32"
            torch.set_float32_matmul_precision("high" if gpu == "tf32" else "highest")
        with torch.autocast(device_type=device_type, enabled=False):
            yield math_mode()
    finally:
        if legacy is None:
            for path, value in saved.items():
                backends[path].fp32_precision = value
        else:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = legacy
            torch.set_float32_matmul_precision(saved_matmul)


def evaluation_math(mode: str = "fp32", device_type: str = "cuda") -> contextlib.AbstractContextManager:
    """The evaluator's math for `--math` (`MATH_MODES`): `full_fp32`, or the same with TF32 on NVIDIA GPUs.

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in MATH_MODES:
        raise ValueError(f"--math must be one of {', '.join(MATH_MODES)}, got {mode!r}")
    return full_fp32(device_type, gpu="tf32" if mode == "tf32" else "ieee")


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
