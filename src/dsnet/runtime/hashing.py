"""Hashes that tie results to what produced them: weights, evaluated points, files.

Reports record the SHA-256 of the weights they evaluated, resume files record the hash of the data and model
they belong to, and exports record the hash of the weights file, so that nothing is ever applied to, or claimed
for, something else.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are hashed: `dsnet -h` and file digests need none of it
    import torch
    import torch.nn as nn

__all__ = ["tensors_sha256", "state_dict_sha256", "file_sha256", "code_sha256", "model_code_sha256"]


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """A SHA-256 of named tensors (names, shapes, dtypes and bytes), in the given order."""
    import torch

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


def code_sha256(path: str | Path) -> str:
    """The SHA-256 of a Python file's code: its syntax tree without docstrings, so that an edited comment, docstring
    or layout keeps the digest and any change to what runs changes it (the bytes, for a file that does not parse)."""
    data = Path(path).read_bytes()
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return hashlib.sha256(data).hexdigest()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, include_attributes=False).encode()).hexdigest()


def _source_file(obj: Any) -> Path | None:
    try:
        source = inspect.getsourcefile(obj)
    except (TypeError, OSError):
        return None
    return Path(source).resolve() if source and Path(source).is_file() else None


def _display_name(path: Path) -> str:
    """dsnet's own files as `dsnet/<path in the package>`, anything else as its absolute path."""
    package = Path(__file__).resolve().parents[1]
    try:
        return "dsnet/" + path.relative_to(package).as_posix()
    except ValueError:
        return str(path)


def model_code_sha256(model: nn.Module, extra_files: Iterable[str | Path] = ()) -> dict[str, str]:
    """The code digest (`code_sha256`) of every source file that defines how `model` computes, outside torch itself.

    That is the file of each module class in `model.modules()` (our zoo's family files, or a user's network
    defined in another file than the factory that builds it), the file of each forward hook registered on them,
    and `extra_files` (a factory's own file). torch's code is covered by its version, recorded beside. A stored
    result made with other code, same weights or not, is then known to be someone else's number.

    Returns:
        display name (`dsnet/models/dsnet.py`, or an absolute path) -> code digest, sorted by name.
    """
    import torch

    torch_dir = Path(torch.__file__).resolve().parent
    objects: list[Any] = []
    for module in model.modules():
        objects.append(type(module))
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            objects.extend(hooks.values())
    files = {path for path in (_source_file(obj) for obj in dict.fromkeys(objects)) if path is not None}
    files |= {Path(f).resolve() for f in extra_files if Path(f).is_file()}
    files = {path for path in files if torch_dir not in path.parents}
    return {name: code_sha256(path) for name, path in sorted((_display_name(p), p) for p in files)}
