"""Who wrote which file of a folder, so that no dsnet command replaces a file that it did not write itself.

A run folder can hold the files of several commands: `dsnet train` writes checkpoints and `config.yaml`, `dsnet eval`
its reports, `dsnet export` the exported weights and a RobustBench claim, `dsnet analyze` its figures. Any of them
pointed at a folder with a name that is already taken (`dsnet export --out-dir RUN --name last`, `dsnet eval
--out-dir .` beside a `report.md` of the user's) would replace a file that cost hours, or that a person wrote.

So each command reserves the names it writes in the folder's manifest, `.dsnet-files.json`, before it writes them,
and may replace an existing file only when the manifest names that command as its writer:

- a name reserved by another command is refused, whether the file exists yet or not (a name such as `epoch-*.pt`
  is reserved as a pattern: an export called `epoch-0003` would be overwritten by the next epoch);
- an existing file that nobody reserved (the user's own, or a file of an older dsnet) is refused;
- a file reserved with its SHA-256 (an exported model, a claim the user may fill in by hand) is refused when it
  was changed since: the changes are somebody's work.

A refusal is one line that names the file, its writer and what to do, raised before anything is written. The
manifest is rewritten atomically under an `flock` of the folder itself, so processes writing into one folder at
once (a training run and an export of its checkpoint) do not lose each other's entries.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dsnet.errors import OverwriteError
from dsnet.runtime.files import write_atomic, write_text_atomic
from dsnet.runtime.hashing import file_sha256

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["FolderFiles", "MANIFEST_NAME", "MANIFEST_FORMAT", "write_owned"]

MANIFEST_NAME = ".dsnet-files.json"
MANIFEST_FORMAT = "dsnet-files/1"


def _is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")


class FolderFiles:
    """The manifest of one folder: which dsnet command writes which of its files.

        files = FolderFiles(out_dir)
        files.reserve(["report.json", "report.md"], "dsnet eval", hint="choose another --out-dir")
        ...  # write them

    Args:
        folder: the folder; its manifest is `<folder>/.dsnet-files.json`. Names are relative to it (a claim in
            `model_info/cifar10/Linf/NAME.json` is reserved under that relative name).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME

    # ------------------------------------------------------------------------------------------- reading
    def entries(self) -> dict[str, dict[str, Any]]:
        """name or pattern -> {"by": writer, "sha256": optional digest}; empty without a manifest.

        Raises:
            OverwriteError: the manifest cannot be read (nothing can be known to be safe to replace).
        """
        if not self.path.is_file():
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OverwriteError(f"cannot read {self.path} ({error}), which records which dsnet command wrote which "
                                 f"file of {self.folder}; restore it, or write into another folder") from None
        if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT or not isinstance(raw.get("files"), dict):
            raise OverwriteError(f"{self.path} is not a dsnet file manifest; restore it, or write into another folder")
        return {str(k): dict(v) for k, v in raw["files"].items() if isinstance(v, dict)}

    def writer_of(self, name: str, entries: Mapping[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
        """The entry that reserves `name`: its own, or a pattern that matches it; None when nobody reserved it."""
        entries = self.entries() if entries is None else entries
        if name in entries:
            return entries[name]
        for key, entry in entries.items():
            if _is_pattern(key) and fnmatch.fnmatchcase(name, key):
                return entry
        return None

    # ------------------------------------------------------------------------------------------- writing
    def check(self, names: Iterable[str], writer: str, *, hint: str, adopt: bool = False) -> None:
        """Raises `OverwriteError` for the first of `names` that `writer` may not write (see the module docstring).

        Args:
            names: file names relative to the folder (patterns allowed: each existing match is checked).
            writer: the command, e.g. "dsnet export".
            hint: what to do instead, the end of the message ("choose another --name or --out-dir").
            adopt: existing files that nobody reserved are `writer`'s (a training run resumed with `--resume`, whose
                checkpoint has shown the folder to be its own; a folder of an older dsnet has no manifest). Files
                reserved by another command are refused all the same.
        """
        entries = self.entries()
        for name in names:
            targets = sorted(p.relative_to(self.folder).as_posix() for p in self.folder.glob(name)) \
                if _is_pattern(name) else [name]
            if not _is_pattern(name):
                self._check_reserved(name, writer, entries, hint)
            for target in targets:
                if adopt and self.writer_of(target, entries) is None:
                    continue
                self._check_one(target, writer, entries, hint)

    def _check_reserved(self, name: str, writer: str, entries: Mapping[str, dict[str, Any]], hint: str) -> None:
        entry = self.writer_of(name, entries)
        if entry is not None and entry.get("by") != writer:
            raise OverwriteError(f"{self.folder / name} is a file of {entry.get('by')} in {self.folder}; {writer} "
                                 f"does not write over it: {hint} (nothing was written)")

    def _check_one(self, name: str, writer: str, entries: Mapping[str, dict[str, Any]], hint: str) -> None:
        path = self.folder / name
        if not path.exists() and not path.is_symlink():
            return
        entry = self.writer_of(name, entries)
        if entry is None:
            raise OverwriteError(f"{path} exists and was not written by {writer}; it is not replaced: {hint} "
                                 "(nothing was written)")
        if entry.get("by") != writer:
            raise OverwriteError(f"{path} was written by {entry.get('by')}; {writer} does not replace it: {hint} "
                                 "(nothing was written)")
        digest = entry.get("sha256")
        if digest and path.is_file() and file_sha256(path) != digest:
            raise OverwriteError(f"{path} was changed since {writer} wrote it; move your version away first, or "
                                 f"{hint} (nothing was written)")

    def reserve(self, names: Iterable[str], writer: str, *, hint: str, adopt: bool = False) -> None:
        """`check`s `names`, then records `writer` as theirs (the manifest is written only when it changes).

        Call it before writing the files: a process killed in between leaves only files the manifest names.
        """
        names = list(names)
        self.check(names, writer, hint=hint, adopt=adopt)
        self._update({name: {"by": writer} for name in names}, keep_digests=True)

    def record_digests(self, files: Mapping[str, str | Path], writer: str) -> None:
        """Records the SHA-256 of files `writer` has just written (name -> path), so that a later change by hand
        is noticed before the file is replaced."""
        self._update({name: {"by": writer, "sha256": file_sha256(path)} for name, path in files.items()},
                     keep_digests=False)

    def _update(self, changes: Mapping[str, dict[str, Any]], *, keep_digests: bool) -> None:
        with self._locked():
            entries = self.entries()
            updated = dict(entries)
            for name, entry in changes.items():
                old = entries.get(name, {})
                if keep_digests and old.get("by") == entry["by"] and "sha256" in old:
                    entry = {**entry, "sha256": old["sha256"]}
                updated[name] = entry
            if updated != entries:
                payload = {"format": MANIFEST_FORMAT, "files": dict(sorted(updated.items()))}
                write_text_atomic(self.path, json.dumps(payload, indent=1) + "\n")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive `flock` of the folder itself while the manifest is read, changed and written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover - not POSIX
            yield
            return
        handle = os.open(self.folder, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            os.close(handle)


def write_owned(path: str | Path, write: Callable[[Any], Any], writer: str, *, hint: str) -> Path:
    """Writes one file atomically (`dsnet.runtime.files.write_atomic`) after reserving its name for `writer` in its
    folder's manifest: a file that another command or a person wrote there is refused, not replaced.

    Args:
        path: the file.
        write: fills the open binary handle.
        writer: the command, e.g. "dsnet analyze".
        hint: what to do instead, for the refusal.
    """
    path = Path(path)
    FolderFiles(path.parent).reserve([path.name], writer, hint=hint)
    return write_atomic(path, write)
