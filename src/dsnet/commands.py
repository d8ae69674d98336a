"""Subcommands other than `models`, each a pair of (add arguments, run) around a library function."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["COMMANDS"]

Handler = Callable[[argparse.Namespace], int]

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}
