"""What an evaluation measures, as one interface: a threat model (an ε-ball of a norm and its attacks) or the common
corruptions.

Both are a `Suite`. The evaluator asks its suite which metrics to compute, how (`metrics`), what to check and what
to warn about; the report asks it for its threat-model line, its own sections and files, and the headline; the
export asks it for the leaderboard's number. So nothing in the evaluator, the report or the export branches on which
suite it runs: the norm balls are `dsnet.evaluation.threat_models` (one file each), the corruptions
`dsnet.evaluation.corruptions`.

A `Preset` is a named set of settings of a suite: the attacks and their arguments under a threat model, the
corruptions and severities of the corruption benchmark.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsnet.registry import Registry, unknown_name

if TYPE_CHECKING:
    from dsnet.attacks.metrics import AttackRun
    from dsnet.evaluation.sanity import SanityCheck
    from dsnet.validate import Problems

EvalReport = Any
"""The report a suite fills in (`dsnet.evaluation.report.EvalReport`, which imports this module)."""

__all__ = ["Suite", "Preset", "Metric"]


@dataclass(frozen=True)
class Preset(Mapping[str, Mapping[str, Any]]):
    """A named set of settings of a suite: attack name -> constructor arguments (a read-only mapping).

    Attributes:
        name: the preset's name (`--preset`).
        eps: the radius of every attack, in pixel units (nan for corruptions).
        description: one sentence for reports.
        attacks: attack name -> settings; a `step_size` of `PAIRED_STEP` is resolved per training objective.
        corruptions: for the corruption benchmark, the corruptions evaluated by default.
        severities: for the corruption benchmark, the severities evaluated by default.
    """

    name: str
    eps: float
    description: str
    attacks: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = ()

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return self.attacks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.attacks)

    def __len__(self) -> int:
        return len(self.attacks)


@dataclass
class Metric:
    """One column of the report, before it is computed.

    Attributes:
        name: its key in the report and the state file ("pgd", "fog_s3").
        label: its display name ("PGD-20", "fog 3").
        config: what a stored result must have been made with to be reused.
        compute: computes it.
        done: called once its result is recorded (an attack drops its own resume state).
        prepare: for a metric with inputs of its own (a corruption's images): loads them for `compute` and returns
            their digests, which join `config`, so a stored result is reused only for the same images.
    """

    name: str
    label: str
    config: dict[str, Any]
    compute: Callable[[], AttackRun]
    done: Callable[[], None] = lambda: None
    prepare: Callable[[], dict[str, Any]] | None = None


class Suite(ABC):
    """What an evaluation measures (see the module docstring). Subclasses are frozen dataclasses with these
    attributes: `name` (as RobustBench spells it: "Linf", "corruptions"), `symbol` (for reports), `presets`, and
    `default_preset`, and `leaderboard_eps` (dataset -> the leaderboard's ε; nan where the leaderboard has none).
    """

    name: str
    symbol: str
    presets: Registry[Preset]
    default_preset: str
    leaderboard_eps: Mapping[str, float]
    no_checks_note = "No check applies."
    files: tuple[str, ...] = ()
    """The names of the files this suite's reports add beside report.json (`write_files`)."""

    @property
    def key(self) -> str:
        """The registry name (lowercase)."""
        return self.name.lower()

    @property
    def norm(self) -> str | None:
        """The norm of the ball (None: not an ε-ball)."""
        return None

    def preset(self, name: str | None) -> Preset:
        """The preset called `name`; None for the default.

        Raises:
            UnknownNameError: for an unknown preset, with the valid ones.
        """
        chosen = self.default_preset if name is None else name
        if chosen not in self.presets:
            raise unknown_name(f"{self.name} preset", chosen, self.presets.names())
        return self.presets.get(chosen)

    def out_dir_name(self, preset: str) -> str:
        """The default report folder's name."""
        return f"eval-{self.name}-{preset}"

    # --------------------------------------------------------------------------------------------- settings
    @abstractmethod
    def metric_names(self, requested: Iterable[str] | None, preset: Preset) -> tuple[str, ...]:
        """The metrics to compute after clean accuracy, in report order; None means the preset's defaults.

        Raises:
            UnknownNameError: a name that is not a metric of this suite (the valid ones are listed).
        """

    @staticmethod
    def requested_names(requested: Iterable[str] | None, default: Iterable[str], valid: list[str],
                        kind: str) -> list[str]:
        """The names asked for (the `default` when None; comma-separated items are split), each checked against
        `valid` (an unknown one raises `UnknownNameError` listing them), duplicates and "clean" left out."""
        wanted: list[str] = []
        for item in (default if requested is None else requested):
            wanted += [part.strip() for part in str(item).split(",") if part.strip()]
        for name in wanted:
            if name not in valid:
                raise unknown_name(kind, name, valid)
        return [name for name in dict.fromkeys(wanted) if name != "clean"]

    def validate(self, config: Any, preset: Preset, problems: Problems) -> None:
        """Adds a message for every setting of `config` (an `EvalConfig`) that does not apply to this suite."""

    def radius(self, preset: Preset, eps: float | None) -> float:
        """The ε of the evaluation (nan for a suite without one)."""
        return math.nan

    def severities(self, config: Any, preset: Preset) -> tuple[int, ...]:
        """The corruption severities to evaluate (none for a suite without)."""
        return ()

    # --------------------------------------------------------------------------------------------- evaluation
    @abstractmethod
    def metrics(self, evaluation: Any) -> list[Metric]:
        """The metrics of an evaluation (`dsnet.evaluation.evaluator.Evaluation`), clean accuracy excluded."""

    def sweep(self, evaluation: Any, state: Any, clean: Any) -> list[tuple[float, float]] | None:
        """The ε sweep of the sanity checks, where the suite has one."""
        return None

    def checks(self, evaluation: Any, sweep: list[tuple[float, float]] | None) -> list[SanityCheck]:
        """The gradient-masking checks of the finished metrics."""
        return []

    def step_note(self, evaluation: Any) -> str:
        """One sentence on the attacks' step sizes and why (empty where there are none)."""
        return ""

    def warnings(self, evaluation: Any) -> list[str]:
        """What a reader of this suite's numbers must know."""
        return []

    # ------------------------------------------------------------------------------------------------- report
    @abstractmethod
    def threat_line(self, report: EvalReport) -> str:
        """The report's threat-model line ("- threat model: ...")."""

    def json_section(self, report: EvalReport) -> dict[str, Any]:
        """This suite's own part of `report.json` (merged into it)."""
        return {}

    def markdown_section(self, report: EvalReport) -> list[str]:
        """This suite's own lines of `report.md`, before the table of every metric."""
        return []

    def write_files(self, report: EvalReport, out_dir: Path) -> tuple[Path, ...]:
        """Files of its own that the report writes beside `report.json` (a heat map)."""
        return ()

    @abstractmethod
    def headline(self, report: EvalReport) -> str:
        """The number of the evaluation, in one phrase ("worst case 41.20%")."""

    @abstractmethod
    def summary(self, report: EvalReport) -> list[str]:
        """What `dsnet eval` prints: a table and one line."""

    # ------------------------------------------------------------------------------------------------- claims
    @abstractmethod
    def leaderboard_numbers(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """The fields of a RobustBench claim that hold this suite's numbers, from a `report.json`.

        Raises:
            ConfigError: the report is not at the leaderboard's settings, or lacks its number.
        """
