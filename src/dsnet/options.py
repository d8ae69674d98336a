"""A settings dataclass as the one declaration of a command: its fields become the command-line options and the
keyword parameters of the Python function, with the field's docstring as the help of both.

The evaluation's options used to be written four times (argparse, a copy into `evaluate`, the settings fields and
the docstring). Declared once, as a frozen dataclass whose fields each carry a one-line docstring (the way litgpt's
`args.py` does it), they are read three ways here:

- `field_docs(cls)`: the docstring under each field, read from the class's source;
- `add_arguments(parser, cls)`: one option per field (`model_name` -> `--model-name`, or the `flag` its metadata
  names), with the field's default, a `--no-X` switch for a field that defaults to True, argument groups and
  mutually exclusive options from the metadata, and the docstring as `--help`;
- `keyword_signature(cls, ...)` and `field_doc_block(cls)`: the signature and the Args section of a function that
  takes the fields as keywords, so `help(evaluate)` and IDEs show every parameter.

`option(...)` attaches the command-line details to a field. Only argparse-level code runs here, so building a
parser imports nothing heavy (`dsnet -h` stays fast).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["option", "field_docs", "add_arguments", "namespace_values", "keyword_signature", "field_doc_block"]

_META = "cli"


def option(default: Any = None, *, flag: str | None = None, parse: Callable[[str], Any] | None = None,
           nargs: str | int | None = None, metavar: str | tuple[str, ...] | None = None,
           choices: Iterable[Any] | None = None, group: str | None = None, exclusive: str | None = None,
           required: bool = False, cli: bool = True, factory: Callable[[], Any] | None = None,
           action: str | None = None) -> Any:
    """A dataclass field with its command-line details.

    Args:
        default: the field's default (or `factory` for a mutable one).
        flag: the option's name (default `--` + the field name with dashes).
        parse: argparse's `type=`: turns the text into the value (a bad text is a usage error).
        nargs, metavar, choices: as in argparse.
        group: the argument group the option is listed under in `--help`.
        exclusive: options with the same name here exclude each other.
        required: the option must be given on the command line.
        cli: False for a field that only Python callers set (a nested mapping).
        action: argparse's action ("extend": `--curve eps --curve steps` gathers both).
    """
    meta = {"flag": flag, "parse": parse, "nargs": nargs, "metavar": metavar,
            "choices": tuple(choices) if choices is not None else None, "group": group, "exclusive": exclusive,
            "required": required, "cli": cli, "action": action}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_META: meta})
    return dataclasses.field(default=default, metadata={_META: meta})


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (and of its dataclass bases), joined to one line."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _meta(field: dataclasses.Field) -> dict[str, Any]:
    return dict(field.metadata.get(_META) or {"cli": True})


def _flag(field: dataclasses.Field) -> str:
    return _meta(field).get("flag") or "--" + field.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, exclude: Iterable[str] = ()) -> None:
    """Adds one option per field of dataclass `cls` to `parser` (see the module docstring).

    The parsed values land under the field names; `namespace_values` collects them.
    """
    docs = field_docs(cls)
    skip = set(exclude)
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        meta = _meta(field)
        if not meta.get("cli", True) or field.name in skip:
            continue
        target: Any = parser
        if meta.get("group"):
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        if meta.get("exclusive"):
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group()
            target = exclusive[meta["exclusive"]]
        default = field.default if field.default is not dataclasses.MISSING else None
        help_text = docs.get(field.name, "").replace("%", "%%")
        if field.type in (bool, "bool") and not meta.get("parse"):
            if default is True:  # `--no-sanity` switches a True default off
                flag = meta.get("flag") or "--no-" + field.name.replace("_", "-")
                target.add_argument(flag, dest=field.name, action="store_false", help=help_text)
            else:
                target.add_argument(_flag(field), dest=field.name, action="store_true", help=help_text)
            continue
        if meta.get("action") in ("extend", "append"):
            default = None  # argparse adds to a list it creates; the field's default stands when the flag is absent
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": help_text}
        for key in ("nargs", "metavar", "choices", "required", "action"):
            if meta.get(key):
                kwargs[key] = meta[key]
        if meta.get("parse"):
            kwargs["type"] = meta["parse"]
        elif field.type in (int, "int", "int | None"):
            kwargs["type"] = int
        target.add_argument(_flag(field), **kwargs)


def namespace_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The values of `cls`'s fields in a parsed namespace, as keyword arguments for `cls` (lists become tuples)."""
    values = {}
    for field in dataclasses.fields(cls):
        if hasattr(args, field.name):
            value = getattr(args, field.name)
            if value is None and field.default is not None and field.default is not dataclasses.MISSING:
                continue  # a gathering option that was not given: the field keeps its default
            values[field.name] = tuple(value) if isinstance(value, list) else value
    return values


def keyword_signature(cls: type, leading: Iterable[inspect.Parameter] = (), *, returns: Any = inspect.Signature.empty,
                      exclude: Iterable[str] = ()) -> inspect.Signature:
    """A signature of `leading` parameters, then every field of `cls` as a keyword-only parameter with its type and
    default (a function that takes the fields as `**options` can show them: `function.__signature__ = ...`)."""
    skip = set(exclude) | {p.name for p in leading}
    params = list(leading)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else inspect.Parameter.empty)
        params.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=field.type))
    return inspect.Signature(params, return_annotation=returns)


def field_doc_block(cls: type, *, indent: int = 8, width: int = 116, exclude: Iterable[str] = ()) -> str:
    """The fields of `cls` as the entries of a Google-style Args section ("name: doc"), wrapped."""
    docs = field_docs(cls)
    skip = set(exclude)
    lines = []
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        text = f"{field.name}: {docs.get(field.name, '')}".rstrip()
        wrapped = textwrap.wrap(text, width=width - indent, subsequent_indent="    ")
        lines += [" " * indent + line for line in wrapped]
    return "\n".join(lines)
