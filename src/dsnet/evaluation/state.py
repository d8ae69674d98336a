"""The resume file of an evaluation: `<out_dir>/eval_state.json`.

It is rewritten atomically after every finished attack (and after the ε sweep) with that attack's per-point
flags, settings, statistics and runtime. A rerun reads it and skips what is finished, but only when everything the
numbers depend on is the same, by content rather than by name: the digest of the exact images and labels
evaluated (not the folder they came from), the weights, the model's code (the digests of the files that define it,
a user's factory among them, and the versions of dsnet and torch), the normalisation, the dataset, split, points,
threat model, ε, preset, training objective, batch size and seed. Any difference is refused with the list of
differences, unless the rerun asks to restart; an attack whose stored settings (or, for a corruption, the digest of
its corrupted images) differ from the ones it would run with now is refused the same way. Nothing stored is ever
mixed with numbers of other content.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from dsnet.errors import ConfigError
from dsnet.evaluation.report import dumps_json
from dsnet.runtime.files import write_text_atomic
from dsnet.runtime.records import plain

__all__ = ["EvalState", "STATE_FORMAT", "STATE_NAME"]

logger = logging.getLogger(__name__)

STATE_FORMAT = "dsnet-eval-state/1"
STATE_NAME = "eval_state.json"


_MEANING = {
    "data_sha256": "the images and labels of the evaluated points",
    "points_sha256": "which points of the split",
    "weights_sha256": "the weights",
    "inputs_sha256": "the corrupted images",
    "versions": "the versions of dsnet and torch",
    "math": "--math; None is IEEE fp32",
}
"""What a key that holds a digest stands for, in messages."""


def _short(value: Any) -> Any:
    """A SHA-256 shortened to 12 characters for messages; anything else as it is."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    return value


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Every top-level difference as "key: saved X, now Y" (digests shortened and explained); the model's code per
    file, so the message names the file that changed."""
    out: list[str] = []
    for key in sorted(set(saved) | set(now)):
        old, new = saved.get(key), now.get(key)
        if plain(old) == plain(new):
            continue
        if key == "model_code" and isinstance(old, dict) and isinstance(new, dict):
            for name in sorted(set(old) | set(new)):
                if old.get(name) != new.get(name):
                    was = "absent" if name not in old else _short(old[name])
                    is_now = "absent" if name not in new else _short(new[name])
                    out.append(f"model code {name}: saved {was}, now {is_now}")
            continue
        meaning = f" ({_MEANING[key]})" if key in _MEANING else ""
        out.append(f"{key}{meaning}: saved {_short(old)!r}, now {_short(new)!r}")
    return out


class EvalState:
    """Finished attacks of one evaluation, kept on disk so an interrupted evaluation can resume.

    Args:
        path: the state file; None keeps the state in memory only (nothing to resume).
        settings: what must match for a resume (see the module docstring).
        results: attack name -> {"config", "flags", "runtime_s", "stats", "extra"} of finished attacks.
        sweep: the ε sweep's result, once run.
        resumed: whether anything was read from an earlier run.
        extras: name -> {"config", "value"} of other finished computations (the curves, the clean spread).
    """

    def __init__(self, path: Path | None, settings: dict[str, Any], results: dict[str, dict[str, Any]] | None = None,
                 sweep: dict[str, Any] | None = None, resumed: bool = False,
                 extras: dict[str, dict[str, Any]] | None = None) -> None:
        self.path = path
        self.settings = plain(settings)
        self.results = results or {}
        self.sweep = sweep
        self.resumed = resumed
        self.extras = extras or {}

    @classmethod
    def check(cls, path: Path, settings: dict[str, Any]) -> None:
        """Refuses an earlier evaluation in `path` whose stored settings differ from `settings` in any key that
        `settings` has (the rest is checked by `open`, once known).

        Raises:
            ConfigError: as `open`.
        """
        raw = cls._read(path)
        if raw is not None:
            saved = {k: v for k, v in raw.get("settings", {}).items() if k in settings}
            cls._refuse_differences(path, saved, plain(settings))

    @staticmethod
    def _read(path: Path | None) -> dict[str, Any] | None:
        if path is None or not path.exists():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the evaluation state {path} ({error}); rerun with --restart to start "
                              "over") from None
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            raise ConfigError(f"{path} is not a dsnet evaluation state; rerun with --restart or choose another "
                              "--out-dir")
        return raw

    @staticmethod
    def _refuse_differences(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
        different = _differences(saved, now)
        if different:
            raise ConfigError(
                f"{path.parent} holds an evaluation with other settings or content ({'; '.join(different)}); rerun "
                "with --restart to discard it, or choose another --out-dir"
            )

    @classmethod
    def open(cls, path: Path | None, settings: dict[str, Any], *, restart: bool = False) -> EvalState:
        """The state saved at `path`, checked against `settings`, or a fresh one.

        Raises:
            ConfigError: the file holds an evaluation with other settings or content (and `restart` is False), or is not
                an evaluation state.
        """
        raw = None if restart else cls._read(path)
        if raw is None:
            return cls(path, settings)
        now = plain(settings)
        cls._refuse_differences(path, raw.get("settings", {}), now)
        state = cls(path, now, dict(raw.get("results", {})), raw.get("sweep"), resumed=bool(raw.get("results")),
                    extras=dict(raw.get("extras") or {}))
        if state.resumed:
            logger.info("resuming the evaluation in %s: finished %s", path.parent, ", ".join(state.results))
        return state

    def finished(self, name: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The stored result of `name`, or None if it has not finished.

        Raises:
            ConfigError: it finished with other settings than `config`.
        """
        result = self.results.get(name)
        if result is None:
            return None
        different = _differences(result.get("config", {}), plain(config))
        if different:
            raise ConfigError(
                f"{name} in {self.path} was run with other settings ({'; '.join(different)}); rerun with --restart "
                "to discard the earlier results, or choose another --out-dir"
            )
        return result

    def record(self, name: str, result: dict[str, Any]) -> None:
        """Stores a finished attack and saves the file."""
        self.results[name] = plain(result)
        self.save()

    def extra(self, name: str, config: dict[str, Any]) -> Any:
        """The stored value of computation `name` when it was made with `config`, else None (it is computed again
        and replaced: a curve of other settings is never reused)."""
        stored = self.extras.get(name)
        if stored is None or _differences(stored.get("config", {}), plain(config)):
            return None
        return stored.get("value")

    def record_extra(self, name: str, config: dict[str, Any], value: Any) -> None:
        """Stores a finished computation (made with `config`) and saves the file."""
        self.extras[name] = plain({"config": config, "value": value})
        self.save()

    def record_sweep(self, sweep: dict[str, Any]) -> None:
        """Stores the ε sweep and saves the file."""
        self.sweep = plain(sweep)
        self.save()

    def save(self) -> None:
        """Writes the file atomically; nothing without a path."""
        if self.path is None:
            return
        payload = {"format": STATE_FORMAT, "settings": self.settings, "results": self.results, "sweep": self.sweep,
                   "extras": self.extras}
        write_text_atomic(self.path, dumps_json(payload) + "\n")
