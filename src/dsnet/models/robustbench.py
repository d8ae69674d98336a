"""RobustBench's CIFAR entries of the four families dsnet builds, and where RobustBench keeps their checkpoints.

The table (`robustbench_entries.json`, beside this file) maps each RobustBench CIFAR-10/100 entry built by
DMWideResNet, RobustWideResNet, RobustBench's robust_resnet (WRN-A4) or its robustarch WRN (RaWRN) to our model name
and to the numbers RobustBench lists for it. `--checkpoint robustbench:NAME --model-dir DIR` then finds the file
where RobustBench's `load_model(NAME, model_dir=DIR, dataset=..., threat_model=...)` stores it,
`DIR/<dataset>/<threat model>/<NAME>.pt`, and builds the model the entry names: a user evaluates a published model
by its RobustBench name, with the claim beside our number in the report.

Nothing is downloaded here (RobustBench fetches from Google Drive with gdown, outside dsnet): a missing file is a
one-line error that says how to get it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsnet.errors import CheckpointError, ConfigError

__all__ = ["RobustBenchEntry", "robustbench_entries", "find_entry", "resolve_checkpoint", "ROBUSTBENCH_PREFIX",
           "DEFAULT_MODEL_DIR", "robustbench_table"]

ROBUSTBENCH_PREFIX = "robustbench:"
"""How `--checkpoint` names a RobustBench entry: robustbench:NAME, or robustbench:DATASET/THREAT_MODEL/NAME."""

DEFAULT_MODEL_DIR = "models"
"""RobustBench's default `model_dir` (./models)."""

_TABLE = Path(__file__).with_name("robustbench_entries.json")


@dataclass(frozen=True)
class RobustBenchEntry:
    """One RobustBench entry.

    Attributes:
        dataset: "cifar10" or "cifar100".
        threat_model: "Linf", "L2" or "corruptions" (RobustBench's folder names).
        name: RobustBench's model name, e.g. "Wang2023Better_WRN-28-10".
        model: our registered architecture, built with the dataset's class count.
        claim: what RobustBench lists: clean and robust accuracy in percent, the metric (AutoAttack or
            corruptions), eps, whether extra data was used, the architecture, venue and link.
        loadable: False for an entry that wraps the network in more than dsnet builds (an ensemble, an ODE head).
        note: why an entry is not loadable.
        reference_activation: "Swish" where the entry builds DeepMind's hand-written Swish (the same function as
            our SiLU).
    """

    dataset: str
    threat_model: str
    name: str
    model: str
    claim: dict[str, Any] = field(default_factory=dict)
    loadable: bool = True
    note: str = ""
    reference_activation: str = ""

    @property
    def key(self) -> str:
        """dataset/threat_model/name: unique, as RobustBench's folders are."""
        return f"{self.dataset}/{self.threat_model}/{self.name}"

    def checkpoint_path(self, model_dir: str | Path = DEFAULT_MODEL_DIR) -> Path:
        """Where RobustBench's `load_model` keeps this entry's checkpoint under `model_dir`."""
        return Path(model_dir) / self.dataset / self.threat_model / f"{self.name}.pt"

    def download_hint(self, model_dir: str | Path) -> str:
        """The RobustBench call that downloads the file to `checkpoint_path(model_dir)`."""
        return (f"python -c \"from robustbench.utils import load_model; load_model('{self.name}', "
                f"model_dir='{model_dir}', dataset='{self.dataset}', threat_model='{self.threat_model}')\"")


@functools.cache
def robustbench_entries() -> tuple[RobustBenchEntry, ...]:
    """Every entry of the table, in RobustBench's order (CIFAR-10 Linf, L2, corruptions; CIFAR-100)."""
    rows = json.loads(_TABLE.read_text(encoding="utf-8"))["entries"]
    return tuple(RobustBenchEntry(**row) for row in rows)


def find_entry(spec: str, dataset: str | None = None) -> RobustBenchEntry:
    """The entry `spec` names: NAME, or DATASET/THREAT_MODEL/NAME where a name is in several tables.

    Args:
        spec: with or without the "robustbench:" prefix.
        dataset: the dataset asked for (--dataset), which narrows a name in both CIFAR-10 and CIFAR-100.

    Raises:
        ConfigError: no entry of that name (with close names), or several (with the full names to choose from), or
            one that dsnet cannot build.
    """
    from dsnet.registry import suggest

    text = spec[len(ROBUSTBENCH_PREFIX):] if spec.startswith(ROBUSTBENCH_PREFIX) else spec
    entries = robustbench_entries()
    if "/" in text:
        matches = [e for e in entries if e.key.lower() == text.lower()]
    else:
        matches = [e for e in entries if e.name.lower() == text.lower()]
    if dataset is not None and len(matches) > 1:
        matches = [e for e in matches if e.dataset == dataset] or matches
    if not matches:
        close = suggest(text, sorted({e.name for e in entries}), n=3)
        hint = f"{close} " if close.startswith("did you mean") else ""
        raise ConfigError(f"no RobustBench entry {text!r} among the {len(entries)} dsnet can build; {hint}"
                          "(`dsnet models --robustbench` lists them)")
    if len(matches) > 1:
        raise ConfigError(f"RobustBench has {text!r} in {len(matches)} tables; name one: "
                          + ", ".join(f"robustbench:{e.key}" for e in matches))
    entry = matches[0]
    if not entry.loadable:
        raise ConfigError(f"RobustBench's {entry.key} is {entry.note}")
    return entry


def resolve_checkpoint(spec: str, model_dir: str | Path | None, dataset: str | None,
                       model_name: str | None) -> tuple[RobustBenchEntry, Path]:
    """The entry and its checkpoint file for `--checkpoint robustbench:...`, checked against --dataset and --model.

    Raises:
        ConfigError: an unknown entry, or a --dataset or --model that contradicts it.
        CheckpointError: the file is not where RobustBench keeps it (the message gives the command that puts it
            there).
    """
    entry = find_entry(spec, dataset)
    if dataset is not None and dataset != entry.dataset:
        raise ConfigError(f"RobustBench's {entry.name} is a {entry.dataset} model, not a {dataset} one; leave "
                          "--dataset out or name another entry")
    if model_name is not None and model_name != entry.model:
        raise ConfigError(f"RobustBench's {entry.name} is a {entry.model}, not a {model_name}; leave --model out")
    model_dir = Path(model_dir if model_dir is not None else DEFAULT_MODEL_DIR)
    path = entry.checkpoint_path(model_dir)
    if not path.is_file():
        raise CheckpointError(f"RobustBench's {entry.key} is not at {path}; download it there with "
                              f"{entry.download_hint(model_dir)} (or pass the --model-dir it is in)")
    return entry, path


def robustbench_table(markdown: bool = True) -> str:
    """The table: entry, our model, and RobustBench's claim, as markdown (README) or aligned text (`dsnet models`)."""
    header = ["Dataset", "Threat model", "RobustBench entry", "dsnet model", "Clean %", "Robust %", "Extra data"]
    rows = []
    for e in robustbench_entries():
        model = f"`{e.model}`" if markdown else e.model
        robust = f"{e.claim['robust']:.2f}" + (" (corruptions)" if e.claim.get("metric") == "corruptions" else "")
        rows.append([e.dataset, e.threat_model, e.name, model if e.loadable else f"{model} inside; not loadable",
                     f"{e.claim['clean']:.2f}", robust, "yes" if e.claim.get("additional_data") else "no"])
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows])
