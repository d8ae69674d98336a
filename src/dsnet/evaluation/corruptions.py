"""The common-corruption benchmark as an evaluation suite (`--threat-model corruptions`): CIFAR-10-C / CIFAR-100-C.

Not a threat model: nothing is attacked and there is no ε. Each corruption at each severity is a metric, the
accuracy on the corrupted copies of the evaluated points (`dsnet.data.corruptions` reads them); a point wrong on the
clean image may be right on the corrupted one and counts as such, as RobustBench counts. The report adds the
accuracy table (corruption × severity), the mean over all of them (RobustBench's corruptions accuracy, over the 15
benchmark corruptions at 5 severities) and a heat map, `corruptions.png`.

A stored result is reused only for the same corrupted images: each metric reads its points first and keys its
result by their digest (`Metric.prepare`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsnet.errors import ConfigError, DataError
from dsnet.evaluation.suite import Metric, Preset, Suite
from dsnet.registry import Registry

__all__ = ["CorruptionSuite", "CORRUPTION_SUITE", "CORRUPTIONS_PNG", "corruption_table", "corruption_mean"]

CORRUPTIONS_PNG = "corruptions.png"


def corruption_table(outcomes: Iterable[Any]) -> dict[str, dict[int, float]]:
    """corruption -> severity -> accuracy, for the corruption metrics among `outcomes` (in their order)."""
    table: dict[str, dict[int, float]] = {}
    for outcome in outcomes:
        corruption, severity = outcome.config.get("corruption"), outcome.config.get("severity")
        if corruption is not None and severity is not None:
            table.setdefault(corruption, {})[int(severity)] = outcome.accuracy
    return table


def corruption_mean(outcomes: Iterable[Any]) -> float:
    """The mean accuracy over every corruption and severity among `outcomes` (RobustBench's corruptions accuracy)."""
    values = [acc for row in corruption_table(outcomes).values() for acc in row.values()]
    return sum(values) / len(values) if values else math.nan


def _presets() -> Registry[Preset]:
    from dsnet.data.corruptions import CORRUPTIONS, SEVERITIES

    presets: Registry[Preset] = Registry("corruption preset", hint="--preset standard")
    presets.add("standard", Preset(
        "standard", float("nan"),
        "the common corruptions of Hendrycks & Dietterich (ICLR 2019): CIFAR-10-C / CIFAR-100-C, 15 corruptions "
        "at severities 1 to 5, accuracy on each and the mean over all 75 (RobustBench's corruptions track)",
        corruptions=CORRUPTIONS, severities=SEVERITIES))
    return presets


@dataclass(frozen=True)
class CorruptionSuite(Suite):
    """The common corruptions (see the module docstring)."""

    name: str = "corruptions"
    symbol: str = "common corruptions"
    presets: Registry[Preset] = field(default_factory=_presets)
    default_preset: str = "standard"
    leaderboard_eps: Mapping[str, float] = field(default_factory=lambda: {"cifar10": math.nan, "cifar100": math.nan})
    no_checks_note: str = "Not applicable: corruptions are not attacks, so there are no gradients to mask."
    files: tuple[str, ...] = (CORRUPTIONS_PNG,)

    # --------------------------------------------------------------------------------------------- settings
    def metric_names(self, requested: Iterable[str] | None, preset: Preset) -> tuple[str, ...]:
        from dsnet.data.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

        valid = ["clean", *CORRUPTIONS, *EXTRA_CORRUPTIONS]
        return tuple(self.requested_names(requested, preset.corruptions, valid, "corruption"))

    def validate(self, config: Any, preset: Preset, problems: Any) -> None:
        if config.eps is not None:
            problems.add("--eps does not apply to the corruptions threat model")
        if config.overrides:
            problems.add("attack overrides do not apply to the corruptions threat model")
        if config.curves:
            problems.add("--curve needs a threat model with attacks (Linf, L2, L1), not the corruptions")
        if config.eot > 1 or config.autoattack_version is not None:
            problems.add("--eot and --autoattack-version apply to attacks, not to the corruptions")
        if config.severities is not None:
            bad = [s for s in config.severities if s not in preset.severities]
            if bad or not config.severities:
                problems.add(f"--severities must be among {', '.join(map(str, preset.severities))}, got "
                             f"{', '.join(map(str, config.severities)) or 'none'}")

    def severities(self, config: Any, preset: Preset) -> tuple[int, ...]:
        """The severities to evaluate, sorted (the preset's when none are given)."""
        return tuple(sorted(set(preset.severities if config.severities is None else config.severities)))

    # --------------------------------------------------------------------------------------------- evaluation
    def metrics(self, evaluation: Any) -> list[Metric]:
        from dsnet.data.corruptions import corruption_set_for

        plan = evaluation.plan
        entry = corruption_set_for(evaluation.loaded.dataset)
        return [self._metric(evaluation, entry.name, corruption, severity)
                for corruption in plan.metric_names for severity in plan.severities]

    @staticmethod
    def _metric(evaluation: Any, set_name: str, corruption: str, severity: int) -> Metric:
        """The accuracy on the corrupted copies of the selected points; the points are read once, in `prepare`, and
        their digest decides whether a stored result is theirs."""
        from dsnet.attacks.metrics import AttackRun, clean_flags
        from dsnet.data.corruptions import load_corrupted
        from dsnet.runtime.hashing import tensors_sha256

        inputs: dict[str, torch.Tensor] = {}

        def prepare() -> dict[str, Any]:
            corrupted = load_corrupted(evaluation.loaded.dataset, evaluation.data_dir, corruption, severity,
                                       evaluation.selection.indices, test_size=evaluation.selection.total,
                                       download=not evaluation.ctx.distributed, progress=evaluation.ctx.is_main)
            labels = corrupted.labels.to(evaluation.ctx.device)
            if not torch.equal(labels, evaluation.labels):
                wrong = int((labels != evaluation.labels).sum())
                raise DataError(f"{corrupted.name}: {wrong} of {labels.numel()} labels differ from the clean test "
                                "set's; the corrupted files do not belong to this dataset")
            inputs["images"] = corrupted.images
            return {"inputs_sha256": tensors_sha256([("images", corrupted.images), ("labels", corrupted.labels)])}

        def compute() -> AttackRun:
            images = inputs.pop("images").to(evaluation.ctx.device)
            return AttackRun(clean_flags(evaluation.loaded.model, images, evaluation.labels,
                                         batch_size=evaluation.plan.config.batch_size,
                                         progress=evaluation.bar(f"{corruption} {severity}")))

        return Metric(f"{corruption}_s{severity}", f"{corruption} {severity}",
                      {"set": set_name, "corruption": corruption, "severity": severity}, compute, prepare=prepare)

    # ------------------------------------------------------------------------------------------------- report
    def threat_line(self, report: Any) -> str:
        return f"- threat model: common corruptions, preset **{report.preset}**"

    def json_section(self, report: Any) -> dict[str, Any]:
        table = corruption_table(report.outcomes)
        return {"corruptions": {"accuracy": {c: {str(k): v for k, v in row.items()} for c, row in table.items()},
                                "mean": corruption_mean(report.outcomes)}}

    def markdown_section(self, report: Any) -> list[str]:
        table, mean = corruption_table(report.outcomes), corruption_mean(report.outcomes)
        severities = sorted({k for row in table.values() for k in row})
        lines = [f"**Mean corruption accuracy: {100 * mean:.2f} %** over {len(table)} corruptions × "
                 f"{len(severities)} severities (clean: {100 * report.outcome('clean').accuracy:.2f} %).", "",
                 "| Corruption | " + " | ".join(f"severity {k}" for k in severities) + " | mean |",
                 "|---|" + "---:|" * (len(severities) + 1)]
        for corruption, row in table.items():
            values = [row[k] for k in severities if k in row]
            cells = " | ".join(f"{100 * row[k]:.2f}" if k in row else "-" for k in severities)
            lines.append(f"| {corruption} | {cells} | {100 * sum(values) / len(values):.2f} |")
        means = [[row[k] for row in table.values() if k in row] for k in severities]
        lines.append("| **mean** | " + " | ".join(f"{100 * sum(m) / len(m):.2f}" for m in means)
                     + f" | **{100 * mean:.2f}** |")
        lines += ["", "Accuracy in % on the corrupted copies of the same n test points; `corruptions.png` draws "
                  "this table.", "", "## Every metric", ""]
        return lines

    def write_files(self, report: Any, out_dir: Path) -> tuple[Path, ...]:
        table = corruption_table(report.outcomes)
        if not table:
            return ()
        return (_heatmap(table, out_dir / CORRUPTIONS_PNG, f"{report.model['name']} on {report.dataset}-C"),)

    def headline(self, report: Any) -> str:
        return f"mean corruption accuracy {100 * corruption_mean(report.outcomes):.2f}%"

    def summary(self, report: Any) -> list[str]:
        rows = corruption_table(report.outcomes)
        width = max((len(name) for name in rows), default=10)
        severities = sorted({k for row in rows.values() for k in row})
        lines = [f"{'corruption'.ljust(width)}  " + "  ".join(f"s{k}".rjust(6) for k in severities)]
        for name, row in rows.items():
            lines.append(f"{name.ljust(width)}  " + "  ".join(f"{100 * row[k]:6.2f}" for k in sorted(row)))
        lines.append(f"clean {100 * report.outcome('clean').accuracy:.2f}%, mean corruption accuracy "
                     f"{100 * corruption_mean(report.outcomes):.2f}%; n = {report.n}; report: "
                     f"{report.out_dir / 'report.md'}")
        return lines

    def leaderboard_numbers(self, report: Mapping[str, Any]) -> dict[str, Any]:
        from dsnet.data.corruptions import CORRUPTIONS, SEVERITIES

        accuracy = report.get("accuracy") or {}
        corruptions = (report.get("corruptions") or {}).get("accuracy") or {}
        missing = [f"{c} {k}" for c in CORRUPTIONS for k in SEVERITIES if str(k) not in corruptions.get(c, {})]
        if missing:
            raise ConfigError(f"the report lacks {len(missing)} of the 75 corruption results (e.g. {missing[0]}); "
                              "the leaderboard's number is the mean over all 15 corruptions at severities 1 to 5")
        mean = f"{100 * report['corruptions']['mean']:.2f}"
        return {"eps": None, "clean_acc": f"{100 * accuracy['clean']:.2f}", "reported": mean,
                "corruptions_acc": mean}


CORRUPTION_SUITE = CorruptionSuite()
"""The one corruption benchmark (`--threat-model corruptions`)."""


def _heatmap(table: dict[str, dict[int, float]], path: Path, title: str) -> Path:
    """A corruption × severity heat map of accuracy, written atomically (as every file of a report); drawn by the
    Agg backend on a bare `Figure`, so no pyplot state or display is involved."""
    from matplotlib.figure import Figure

    from dsnet.runtime.files import write_atomic

    severities = sorted({k for row in table.values() for k in row})
    values = [[100 * row.get(k, math.nan) for k in severities] for row in table.values()]
    figure = Figure(figsize=(1.1 * len(severities) + 3, 0.38 * len(table) + 1.4))
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    axes.set_xticks(range(len(severities)), [str(k) for k in severities])
    axes.set_yticks(range(len(table)), list(table))
    axes.set_xlabel("severity")
    axes.set_title(title)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            axes.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=7,
                      color="white" if value < 60 else "black")
    figure.colorbar(image, ax=axes, label="accuracy (%)")
    figure.tight_layout()
    return write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=120))
