"""Plain records: JSON-safe values, the differences between two settings, and JSON-lines files.

A resumed training run, a resumed evaluation, AutoAttack's resume state and a reproduce cell all compare what
they were made with against what they are asked to do now, and refuse with the list of differences. They all
use `differences` here, so the messages read the same everywhere: `objective.name: 'at' -> 'trades'`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["plain", "differences", "describe_differences", "read_jsonl", "ARROW", "SAVED_NOW"]


def plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists, keys strings), for comparisons."""
    return json.loads(json.dumps(value))


ARROW = "{key}: {old!r} -> {new!r}"
SAVED_NOW = "{key}: saved {old!r}, now {new!r}"


def differences(old: Any, new: Any, prefix: str = "", ignore: Iterable[str] = (), template: str = ARROW,
                nested: bool = True) -> list[str]:
    """Every leaf where two nested settings differ, as "dotted.key: old -> new", in sorted key order, except that a
    section's `name` comes first (another objective or schedule explains the differences of its parameters).

    Args:
        old: what a folder was made with (dicts nest; anything else is compared as a value).
        new: what is asked for now.
        prefix: prepended to the dotted keys.
        ignore: dotted keys left out of the comparison (settings that cannot change a result).
        template: how one difference reads (`ARROW`, or `SAVED_NOW` for a stored state).
        nested: walk into nested dicts; False compares each top-level value whole.
    """
    skip = set(ignore)
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if path in skip:
            return
        if isinstance(a, dict) and isinstance(b, dict) and (nested or not path):
            for key in sorted(set(a) | set(b), key=lambda k: (str(k) != "name", str(k))):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        elif plain(a) != plain(b):
            out.append(template.format(key=path or "(value)", old=a, new=b))

    walk(old, new, prefix)
    return out


def describe_differences(diffs: list[str], limit: int = 4) -> str:
    """The first `limit` differences joined with "; ", and how many more there are."""
    shown = "; ".join(diffs[:limit])
    return shown + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """The objects of a JSON-lines file, one per line, skipping blank lines and a line cut short by a kill."""
    path = Path(path)
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn last line of a killed writer
        if isinstance(row, dict):
            yield row
