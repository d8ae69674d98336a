"""One small registry class, reused for models, atomic blocks, objectives, attacks, datasets, threat models,
schedules and presets, and the one "did you mean" helper every name lookup uses.

One mechanism fills every registry: an entry registers itself in the file that defines it (a decorator on a class
or function, a `register_*` call for an entry that is data), and a registry that names its `package` imports every
module of that package before its first lookup. No list names the files, so adding a model, block, objective,
attack, dataset or threat model is one new file in its package (or, from your own code, an import of your file).

Names are lowercase snake_case. Registering a name twice is an error (a silent overwrite would make a
user's block replace ours without notice). An unknown name raises `UnknownNameError` that lists the
closest registered names, so a typo costs seconds rather than a GPU-day.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from dsnet.errors import UnknownNameError

__all__ = ["Registry", "suggest", "unknown_name"]

T = TypeVar("T")


def suggest(name: object, valid: Iterable[str], *, cutoff: float = 0.5, n: int = 3,
            shown: Callable[[str], str] = repr) -> str:
    """"did you mean 'x'?" for the close matches of `name` among `valid`, else "valid: a, b, c".

    This is the one place that guesses what a user meant: every unknown name, key or argument in dsnet (registry
    names, recipe keys and sections, model arguments, objective and schedule parameters) is answered through it.

    Args:
        name: what was given.
        valid: the names that exist.
        cutoff: how close a match must be (difflib's ratio).
        n: at most this many matches.
        shown: how a match is written ("'x'", or a dotted key `train.epochs`).
    """
    valid = list(valid)
    close = difflib.get_close_matches(str(name), valid, n=n, cutoff=cutoff)
    if close:
        return f"did you mean {', '.join(shown(c) for c in close)}?"
    return f"valid: {', '.join(valid) or '(none)'}"


def unknown_name(kind: str, name: object, valid: Iterable[str], hint: str | None = None) -> UnknownNameError:
    """The error for an unknown `kind` name: "unknown attack 'pgdd'; did you mean 'pgd'? valid: ..." (the valid
    names when there are few of them, and where to look)."""
    valid = list(valid)
    message = f"unknown {kind} {name!r}; {suggest(name, valid)}"
    if message.endswith("?") and len(valid) <= 12:
        message += f" valid: {', '.join(valid)}"
    return UnknownNameError(message + (f" ({hint})" if hint else ""))


class Registry(Generic[T]):
    """A named table of objects of one kind.

    Args:
        kind: what the entries are, in words ("model", "atomic block"); used in error messages.
        hint: what a user can run to see the valid names (shown when a name is unknown).
        package: the package whose modules define the entries ("dsnet.attacks"); every module of it is imported
            once, before the first lookup (so importing a package costs nothing until a name is needed). None
            for a registry whose entries live in the module that defines it.
        order: names listed first, in this order, whatever order their modules were imported in; the others
            follow in registration order.
    """

    def __init__(self, kind: str, hint: str | None = None, *, package: str | None = None,
                 order: Iterable[str] = ()) -> None:
        self.kind = kind
        self.hint = hint
        self.package = package
        self._scanned = package is None
        self._order = tuple(order)
        self._entries: dict[str, T] = {}
        self._meta: dict[str, Any] = {}

    def _ready(self) -> dict[str, T]:
        if not self._scanned:
            self._scanned = True  # first: a module that looks a name up while it is imported must not rescan
            package = importlib.import_module(self.package)  # type: ignore[arg-type]
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{self.package}.{module.name}")
        return self._entries

    def register(self, name: str | None = None, *, meta: Any = None) -> Callable[[T], T]:
        """Decorator that registers an object under `name` (default: its `__name__`)."""

        def decorator(obj: T) -> T:
            self.add(name or obj.__name__, obj, meta=meta)  # type: ignore[attr-defined]
            return obj

        return decorator

    def add(self, name: str, obj: T, *, meta: Any = None) -> None:
        """Registers `obj` under `name`; refuses a name that is taken or not snake_case."""
        if not name or name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be lowercase letters, digits and underscores")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered already; pick another name")
        self._entries[name] = obj
        self._meta[name] = meta

    def get(self, name: str) -> T:
        """The object registered under `name`; an unknown name raises `UnknownNameError` with suggestions."""
        entries = self._ready()
        try:
            return entries[name]
        except (KeyError, TypeError):
            raise unknown_name(self.kind, name, entries, self.hint) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def meta(self, name: str) -> Any:
        """The metadata stored with `name`."""
        self.get(name)
        return self._meta[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names (the `order` ones first, then in registration order), optionally filtered by a
        shell-style pattern."""
        entries = self._ready()
        names = [n for n in self._order if n in entries] + [n for n in entries if n not in self._order]
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs, in the order of `names()`."""
        entries = self._ready()
        return [(name, entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._ready()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._ready())
