"""The model registry: `create_model(name, num_classes=10, **overrides)` and `list_models()`.

An entrypoint is a small function that returns a model, registered with `@register_model(...)` and a
`ModelInfo` that carries the facts about it (paper, expected parameter count from SPEC.md). Entrypoints
take `num_classes` and keyword overrides; `create_model` drops overrides that are None, so a command-line
default of None never replaces a model's own default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from dsnet.registry import Registry

__all__ = ["ModelInfo", "MODELS", "register_model", "create_model", "list_models", "model_info"]


@dataclass(frozen=True)
class ModelInfo:
    """What we know about a registered model.

    Attributes:
        family: the architecture family ("dsnet", "resnet", "wide_resnet", ...).
        paper: short citation of the paper that defines it.
        expected_params: parameter count for 10 classes that the tests check (None where SPEC gives none).
        note: one line on what we chose where the definition is ours.
        tiny: a tiny variant for tests and smoke runs, hidden from `dsnet models` by default.
    """

    family: str
    paper: str = ""
    expected_params: int | None = None
    note: str = ""
    tiny: bool = False


MODELS: Registry[Callable[..., nn.Module]] = Registry("model", hint="run `dsnet models` for the list")


def register_model(info: ModelInfo, name: str | None = None) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model entrypoint under its function name (or `name`)."""
    return MODELS.register(name, meta=info)


def create_model(name: str, num_classes: int = 10, **overrides: object) -> nn.Module:
    """Builds a registered model.

    Args:
        name: a name from `list_models()`, e.g. "dsnet4" or "wrn34_10".
        num_classes: size of the classifier output.
        **overrides: constructor arguments merged over the entrypoint's defaults; None values are dropped.

    Returns:
        An `nn.Module` mapping (B, 3, H, W) images in [0, 1] to (B, num_classes) logits.

    Raises:
        UnknownNameError: `name` is not registered (the message lists close matches).
    """
    entrypoint = MODELS.get(name)
    kwargs = {k: v for k, v in overrides.items() if v is not None}
    return entrypoint(num_classes=num_classes, **kwargs)


def list_models(pattern: str | None = None, include_tiny: bool = False) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern ("dsnet*")."""
    return [n for n in MODELS.names(pattern) if include_tiny or not MODELS.meta(n).tiny]


def model_info(name: str) -> ModelInfo:
    """The `ModelInfo` registered with `name`."""
    return MODELS.meta(name)
