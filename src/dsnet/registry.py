"""One small registry class, reused for models, atomic blocks, objectives, attacks, datasets and schedules.

Names are lowercase snake_case. Registering a name twice is an error (a silent overwrite would make a
user's block replace ours without notice). An unknown name raises `UnknownNameError` that lists the
closest registered names, so a typo costs seconds rather than a GPU-day.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from dsnet.errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of objects of one kind.

    Args:
        kind: what the entries are, in words ("model", "atomic block"); used in error messages.
        hint: what a user can run to see the valid names (shown when a name is unknown).
    """

    def __init__(self, kind: str, hint: str | None = None) -> None:
        self.kind = kind
        self.hint = hint
        self._entries: dict[str, T] = {}
        self._meta: dict[str, Any] = {}

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
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self._unknown_message(name)) from None

    def meta(self, name: str) -> Any:
        """The metadata stored with `name`."""
        self.get(name)
        return self._meta[name]

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names in registration order, optionally filtered by a shell-style pattern."""
        names = list(self._entries)
        return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names

    def _unknown_message(self, name: object) -> str:
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        message = f"unknown {self.kind} {name!r}"
        if close:
            message += f"; did you mean {', '.join(repr(c) for c in close)}?"
        else:
            message += f"; valid names: {', '.join(self._entries) or '(none)'}"
        if self.hint:
            message += f" ({self.hint})"
        return message

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
