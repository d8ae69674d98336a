"""Hashes that tie results to what produced them: weights, evaluated points, files.

Reports record the SHA-256 of the weights they evaluated, resume files record the hash of the data and model
they belong to, and exports record the hash of the weights file, so that nothing is ever applied to, or claimed
for, something else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

__all__ = ["tensors_sha256", "state_dict_sha256", "file_sha256"]


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A SHA-256 of named tensors (names, shapes, dtypes and bytes), in the given order."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


state_dict_sha256 = tensors_sha256
"""The hash of a state dict's items (`state_dict_sha256(model.state_dict().items())`)."""


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
