"""Checking a value against a type annotation, converting only where the conversion is unambiguous.

Shared by the recipe loader (`dsnet.config`) and the model registry (constructor arguments), so that
`width=abc`, `epochs=1.5` and `attention_betas=[0.5, 0.9, 0.1]` fail in the same words wherever they are given.
ε and step sizes are floats in pixel units; the literal `8/255` is accepted wherever a float is expected.
"""

from __future__ import annotations

import re
import types
import typing
from typing import Any

from dsnet.errors import ConfigError

__all__ = ["coerce_value", "to_float", "FRACTION", "EXPONENT"]

FRACTION = re.compile(r"^\s*([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)\s*$")
# YAML 1.1 (PyYAML) reads 1e-3 and 2.0e5 as strings: a float needs a dot and a signed exponent there.
EXPONENT = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+\s*$")


def to_float(value: Any, key: str) -> float:
    """`value` as a float: a number, a numeric string, or a fraction such as "8/255"; ConfigError otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        match = FRACTION.match(value)
        try:
            return float(match.group(1)) / float(match.group(2)) if match else float(value)
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{key} must be a number (like 0.031 or 8/255), got {value!r}")


def coerce_value(value: Any, annotation: Any, key: str) -> Any:
    """Checks `value` against a field annotation, converting where the conversion is unambiguous.

    Raises:
        ConfigError: naming `key` and the expected type.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce_value(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key} has a bad value {value!r}")
    if annotation is float:
        return to_float(value, key)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if origin is tuple:
        items = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if items and items[-1] is not Ellipsis and len(value) != len(items):
            raise ConfigError(f"{key} must be a list of {len(items)} values, got {len(value)}: {list(value)!r}")
        if items and items[-1] is Ellipsis:
            return tuple(coerce_value(v, items[0], key) for v in value)
        return tuple(coerce_value(v, a, key) for v, a in zip(value, items))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value
