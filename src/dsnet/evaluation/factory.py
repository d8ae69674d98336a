"""Building a user's own model: `--model-factory FILE.py:FUNCTION` or `package.module:FUNCTION`.

The factory is any callable that returns an `nn.Module` mapping (B, 3, H, W) images to logits; `--model-kwargs`
(a JSON object) are its keyword arguments. A file is imported under a private module name, so two factories in
files of the same name do not collide, and its SHA-256 goes into the report, so a result names the exact code that
built the model. Every way this can go wrong (no such file, no such function, arguments the factory does not take,
the factory raising or calling `sys.exit`, something that is not a module) is a one-line `ConfigError` that quotes
the real exception.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from dsnet.errors import ConfigError
from dsnet.runtime.hashing import file_sha256

__all__ = ["ModelFactory", "parse_model_kwargs", "load_factory"]


@dataclass(frozen=True)
class ModelFactory:
    """Where a user's model comes from.

    Attributes:
        spec: as given, `FILE.py:FUNCTION` or `package.module:FUNCTION`.
        kwargs: the factory's keyword arguments.
        file: the source file the factory lives in (None for a built-in).
        file_sha256: that file's SHA-256.
    """

    spec: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    file_sha256: str | None = None

    def record(self) -> dict[str, Any]:
        """What the report says about the model's origin."""
        return {"kind": "factory", "factory": self.spec, "kwargs": dict(self.kwargs), "file": self.file,
                "file_sha256": self.file_sha256}


def parse_model_kwargs(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """`--model-kwargs` as a dict: a JSON object (or a dict already); None is {}.

    Raises:
        ConfigError: text that is not a JSON object.
    """
    if text is None:
        return {}
    if isinstance(text, dict):
        return dict(text)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"--model-kwargs must be a JSON object such as '{{\"depth\": 18}}' ({error.msg} at "
                          f"character {error.pos})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"--model-kwargs must be a JSON object such as '{{\"depth\": 18}}', got {text!r}")
    return value


def _split(spec: str) -> tuple[str, str]:
    where, colon, name = str(spec).rpartition(":")
    if not colon or not where or not name.isidentifier():
        raise ConfigError(f"--model-factory {spec!r}: write FILE.py:FUNCTION or package.module:FUNCTION")
    return where, name


def _import_file(path: Path) -> Any:
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"_dsnet_factory_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--model-factory: {path} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any failure of user code becomes one line
        sys.modules.pop(module_name, None)
        raise ConfigError(f"--model-factory: importing {path} failed: {_quote(error)}") from None
    return module


def _quote(error: BaseException) -> str:
    """The user's exception as one quoted phrase; `sys.exit(code)` (SystemExit) named as such, since it is not an
    error a model factory should end with."""
    if isinstance(error, SystemExit):
        return f"it called sys.exit({error.code!r}), which must not end an evaluation; return the model instead"
    return f"{type(error).__name__}: {error}"


def load_factory(spec: str, kwargs: dict[str, Any] | str | None = None) -> tuple[nn.Module, ModelFactory]:
    """Builds the model of a factory.

    Args:
        spec: `FILE.py:FUNCTION` (a path, relative to the working directory) or `package.module:FUNCTION`.
        kwargs: the factory's keyword arguments (a dict, or JSON text).

    Returns:
        The model and the record of where it came from.

    Raises:
        ConfigError: a missing file or module, a missing function, a factory that raises or returns something
            other than an `nn.Module`.
    """
    where, name = _split(spec)
    arguments = parse_model_kwargs(kwargs)
    file = None
    digest = None
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise ConfigError(f"--model-factory: {path} does not exist (write FILE.py:FUNCTION)")
        module = _import_file(path)
        file, digest = str(path.resolve()), file_sha256(path)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise ConfigError(f"--model-factory: cannot import {where!r} ({error}); for a file, write "
                              "path/to/file.py:FUNCTION") from None
        source = getattr(module, "__file__", None)
        if source and Path(source).is_file():
            file, digest = str(Path(source).resolve()), file_sha256(source)
    factory = getattr(module, name, None)
    if not callable(factory):
        available = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"--model-factory: {where} has no function {name!r}"
                          + (f"; it has {', '.join(available[:12])}" if available else ""))
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        signature = None
    if signature is not None:
        try:
            signature.bind(**arguments)
        except TypeError as error:  # the arguments do not fit: a --model-kwargs problem, not the factory's
            takes = ", ".join(signature.parameters) or "no arguments"
            raise ConfigError(f"--model-factory: {spec} does not take --model-kwargs {json.dumps(arguments)} "
                              f"({error}); it takes {takes}") from None
    try:
        model = factory(**arguments)
    except (Exception, SystemExit) as error:  # noqa: BLE001 - any failure of user code becomes one line
        raise ConfigError(f"--model-factory: {spec} raised {_quote(error)}" if not isinstance(error, SystemExit)
                          else f"--model-factory: {spec}: {_quote(error)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model-factory: {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model, ModelFactory(spec, arguments, file, digest)
