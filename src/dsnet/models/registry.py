"""The model registry: `create_model(name, num_classes=10, **overrides)` and `list_models()`.

A registered model is a variant: a builder (the architecture class, or a function that configures one) plus the
constructor arguments that make this variant, and a `ModelInfo` with the facts about it (paper, expected
parameter count from SPEC.md, its display label). Variants never subclass:

    register_model("wrn34_10", WideResNet, ModelInfo(family="wide_resnet", ...), depth=34, widen_factor=10)

`create_model` merges the caller's overrides over the variant's arguments (None values are dropped, so a
command-line default of None never replaces a model's own default). Because a variant's arguments are data,
`check_model_arguments` can say which argument a recipe misspelt or mistyped before anything is built, and
`miniature_arguments` can shrink any model to the size of its family's registered tiny variant.

Each family registers its variants in its own file (`register_model(...)` calls); the registry imports every module
of `dsnet.models` on first use, so a new family is one new file.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from dsnet.registry import Registry, suggest

__all__ = [
    "ModelInfo",
    "ModelEntry",
    "MODELS",
    "register_model",
    "create_model",
    "list_models",
    "model_info",
    "check_model_arguments",
    "miniature_arguments",
]

@dataclass(frozen=True)
class ModelInfo:
    """What we know about a registered model.

    Attributes:
        family: the architecture family ("dsnet", "resnet", "wide_resnet", ...).
        paper: short citation of the paper that defines it.
        expected_params: parameter count for 10 classes that the tests check (None where SPEC gives none).
        note: one line on what we chose where the definition is ours.
        tiny: a tiny variant for tests and smoke runs, hidden from `dsnet models` by default.
        label: the name tables and figures show ("WRN-34-10"); default the registered name.
    """

    family: str
    paper: str = ""
    expected_params: int | None = None
    note: str = ""
    tiny: bool = False
    label: str = ""


class ModelEntry:
    """A registered variant: `entry(num_classes=10, **overrides)` builds it.

    Args:
        name: the registered name.
        builder: the architecture class (or a function configuring one), called with `num_classes` and keywords.
        info: the facts about the variant.
        defaults: the constructor arguments that make this variant.
    """

    def __init__(self, name: str, builder: Callable[..., nn.Module], info: ModelInfo, defaults: dict[str, Any]) -> None:
        self.name = name
        self.builder = builder
        self.info = info
        self.defaults = dict(defaults)
        self.__doc__ = f"{info.label or name}: {builder.__name__}({', '.join(f'{k}={v!r}' for k, v in defaults.items())})"

    def __call__(self, num_classes: int = 10, **overrides: Any) -> nn.Module:
        return self.builder(num_classes=num_classes, **{**self.defaults, **overrides})

    @property
    def label(self) -> str:
        return self.info.label or self.name

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword arguments (without `num_classes`), in signature order."""
        target = self.builder.__init__ if inspect.isclass(self.builder) else self.builder
        params = dict(inspect.signature(target).parameters)
        return {k: p for k, p in params.items() if k not in ("self", "num_classes")}

    def annotations(self) -> dict[str, Any]:
        """The builder's resolved argument annotations (empty where they cannot be resolved)."""
        target = self.builder.__init__ if inspect.isclass(self.builder) else self.builder
        try:
            return typing.get_type_hints(target)
        except Exception:  # noqa: BLE001 - an annotation that cannot be evaluated only loses the type check
            return {}

    def __repr__(self) -> str:
        return f"ModelEntry({self.name!r}, {self.builder.__name__}, {self.defaults!r})"


MODELS: Registry[ModelEntry] = Registry("model", hint="run `dsnet models` for the list", package="dsnet.models",
                                        order=("dsnet4", "dsnet6", "dsnet_small", "dsnet_tiny"))


def register_model(name: str, builder: Callable[..., nn.Module], info: ModelInfo, **defaults: Any) -> ModelEntry:
    """Registers the variant `builder(**defaults)` under `name` and returns its entry.

    Args:
        name: lowercase snake_case name, unique.
        builder: the architecture class (or a function), taking `num_classes` and keyword arguments.
        info: paper, expected parameter count, label, whether it is a tiny test variant.
        **defaults: the arguments that make this variant.
    """
    entry = ModelEntry(name, builder, info, defaults)
    MODELS.add(name, entry, meta=info)
    return entry


def create_model(name: str, num_classes: int = 10, **overrides: object) -> nn.Module:
    """Builds a registered model.

    Args:
        name: a name from `list_models()`, e.g. "dsnet4" or "wrn34_10".
        num_classes: size of the classifier output.
        **overrides: constructor arguments merged over the variant's; None values are dropped.

    Returns:
        An `nn.Module` mapping (B, 3, H, W) images in [0, 1] to (B, num_classes) logits.

    Raises:
        UnknownNameError: `name` is not registered (the message lists close matches).
    """
    entry = MODELS.get(name)
    return entry(num_classes=num_classes, **{k: v for k, v in overrides.items() if v is not None})


def list_models(pattern: str | None = None, include_tiny: bool = False) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern ("dsnet*")."""
    return [n for n in MODELS.names(pattern) if include_tiny or not MODELS.meta(n).tiny]


def model_info(name: str) -> ModelInfo:
    """The `ModelInfo` registered with `name`."""
    return MODELS.meta(name)


def check_model_arguments(name: str, kwargs: dict[str, Any]) -> list[str]:
    """What is wrong with `kwargs` as constructor arguments of model `name`, one message per problem.

    An unknown argument gets the closest valid names; a value of the wrong type gets the argument and the type
    its constructor expects. Values are only checked where the annotation says int, float, bool or str.
    """
    from dsnet.coerce import coerce_value

    entry = MODELS.get(name)
    params = entry.parameters()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    valid = [k for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    hints = entry.annotations()
    problems = []
    for key, value in kwargs.items():
        if key not in params:
            if takes_any:
                continue
            hint = suggest(key, valid, n=2)
            hint = f"{hint} " if hint.startswith("did you mean") else ""
            problems.append(f"{key!r} is not an argument of {entry.builder.__name__}; {hint}valid: {', '.join(valid)}")
            continue
        if key in hints and value is not None:
            try:
                coerce_value(value, hints[key], key)
            except ValueError as error:
                problems.append(str(error))
    return problems


def miniature_arguments(name: str) -> dict[str, Any]:
    """The arguments that shrink model `name` to the size of its family's tiny variant (same builder).

    The tiny variant's own arguments replace the full model's, while the full model's other arguments stay (a
    SAT model keeps its SiLU). A tiny variant maps to itself.

    Raises:
        ConfigError: no tiny variant with the same builder is registered.
    """
    from dsnet.errors import ConfigError

    entry = MODELS.get(name)
    if entry.info.tiny:
        return {}
    for other in MODELS.names():
        tiny = MODELS.get(other)
        if tiny.info.tiny and tiny.builder is entry.builder:
            return dict(tiny.defaults)
    raise ConfigError(f"model {name!r} has no registered tiny variant of {entry.builder.__name__}; register one "
                      "(ModelInfo(..., tiny=True)) or use --scale paper")
