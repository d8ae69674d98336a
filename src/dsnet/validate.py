"""One way to validate settings: collect every problem, name each setting, and suggest the name that was meant.

Objectives, schedules, attacks, the collapse guard and the recipe sections all check their values here, so a bad
value reads the same wherever it is given ("eps must be a finite number >= 0, got -0.031") and one error lists
every problem at once. A registered, frozen settings object (`Settings`: an objective, a schedule) is built from
its name and parameters by `build_settings`, which names an unknown parameter with the closest valid one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import MISSING, dataclass, fields
from numbers import Integral, Real
from typing import Any, ClassVar

from dsnet.errors import ConfigError
from dsnet.registry import Registry, suggest

__all__ = ["Problems", "Settings", "build_settings", "check_number", "check_int", "is_number"]


def is_number(value: object) -> bool:
    """A finite real number that is not a bool."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _bound(minimum: float, strict: bool) -> str:
    return f"> {minimum:g}" if strict else f">= {minimum:g}"


class Problems:
    """What is wrong with a set of settings, one message per setting, raised together.

    Args:
        owner: what the settings belong to ("objective 'at'"), the start of the error message.
    """

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    def number(self, name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> bool:
        """`value` must be a finite number >= (or >) `minimum`."""
        if not is_number(value) or value < minimum or (strict and value == minimum):  # type: ignore[operator]
            self.add(f"{name} must be a finite number {_bound(minimum, strict)}, got {value!r}")
            return False
        return True

    def integer(self, name: str, value: object, *, minimum: int) -> bool:
        """`value` must be an integer >= `minimum`."""
        if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
            self.add(f"{name} must be an integer >= {minimum}, got {value!r}")
            return False
        return True

    def require(self, ok: bool, message: str) -> bool:
        """Adds `message` unless `ok` (a condition that no other check of this class expresses)."""
        if not ok:
            self.add(message)
        return ok

    def choice(self, name: str, value: object, choices: Iterable[str]) -> bool:
        """`value` must be one of `choices`."""
        choices = tuple(choices)
        if value not in choices:
            self.add(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
            return False
        return True

    def __bool__(self) -> bool:
        return bool(self.messages)

    def raise_if_any(self) -> None:
        """Raises one `ConfigError` listing every problem (nothing when there is none)."""
        if self.messages:
            prefix = f"{self.owner}: " if self.owner else ""
            raise ConfigError(prefix + "; ".join(self.messages))


def check_number(owner: str, name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    """`value` as a float after checking that it is a finite number >= (or >) `minimum`.

    Raises:
        ConfigError: naming `owner` and the argument `name`.
    """
    problems = Problems(owner)
    problems.number(name, value, minimum=minimum, strict=strict)
    problems.raise_if_any()
    return float(value)


def check_int(owner: str, name: str, value: Any, *, minimum: int) -> int:
    """`value` as an int after checking that it is an integer >= `minimum`.

    Raises:
        ConfigError: naming `owner` and the argument `name`.
    """
    problems = Problems(owner)
    problems.integer(name, value, minimum=minimum)
    problems.raise_if_any()
    return int(value)


@dataclass(frozen=True)
class Settings:
    """Base of the frozen, validated settings objects that registries hold (objectives, schedules).

    A subclass is a frozen dataclass whose fields are its parameters; `_validate` adds a message for each bad one
    (so one error lists them all), then ints given for float parameters become floats and `_resolve` fills in
    parameters whose default depends on others. `config()` is the resolved setting, as written to config.yaml.

    Attributes:
        kind: what the subclasses are, in words ("objective", "schedule").
        name: the registered name.
    """

    kind: ClassVar[str] = "setting"
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems = Problems(f"{self.kind} {self.name!r}")
        self._validate(problems)
        problems.raise_if_any()
        for f in fields(self):  # so config() and comparisons are uniform
            value = getattr(self, f.name)
            if f.type in ("float", "float | None") and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        self._resolve()

    def _validate(self, problems: Problems) -> None:
        """Adds a message for each invalid parameter."""

    def _resolve(self) -> None:
        """Replaces parameters left at None by their resolved values."""

    def config(self) -> dict[str, Any]:
        """The name and every resolved parameter, as plain values (tuples become lists)."""
        out: dict[str, Any] = {"name": self.name}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    # Read-only mapping access to the recipe section (`config.objective["eps"]`, `**config.schedule`): the
    # resolved parameters that a recipe sets, without the fields the caller passes itself (`fixed`).
    fixed: ClassVar[tuple[str, ...]] = ()

    def recipe(self) -> dict[str, Any]:
        """`config()` without the `fixed` fields: the section as a recipe file holds it."""
        return {k: v for k, v in self.config().items() if k not in self.fixed}

    def keys(self) -> list[str]:
        return list(self.recipe())

    def __getitem__(self, key: str) -> Any:
        return self.recipe()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.recipe().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.recipe()


def build_settings(registry: Registry[Any], name: str, *, fixed: Iterable[str] = (), **params: Any) -> Any:
    """Builds the settings class registered as `name` from its parameters.

    Args:
        registry: where the class is registered (its `kind` names it in errors).
        name: the registered name.
        fixed: fields the caller passes itself (a schedule's base_lr and epochs): not the user's to set.
        **params: the parameters; None values are dropped, so a command-line default of None keeps the
            class's own default.

    Raises:
        UnknownNameError: `name` is not registered.
        ConfigError: a parameter is unknown (the closest valid one is suggested), missing or out of range.
    """
    cls = registry.get(name)
    fixed = set(fixed)
    params = {k: v for k, v in params.items() if v is not None}
    valid = [f.name for f in fields(cls) if f.name not in fixed]
    unknown = [k for k in params if k not in valid and k not in fixed]
    if unknown:
        hints = []
        for key in unknown:
            hint = suggest(key, valid, cutoff=0.6)
            hints.append(f"{key!r}" + (f" ({hint})" if hint.startswith("did you mean") else ""))
        raise ConfigError(f"{registry.kind} {name!r} has no parameter {', '.join(hints)}; "
                          f"valid: {', '.join(valid) or '(none)'}")
    missing = [f.name for f in fields(cls) if f.name in valid and f.name not in params
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"{registry.kind} {name!r} needs {', '.join(missing)}")
    return cls(**params)
