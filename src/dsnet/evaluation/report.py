"""The result of an evaluation, and its two renderings: `report.json` for machines, `report.md` for people.

`EvalReport` holds everything (STYLE.md rule 22): per-point robust flags for every attack, clean, per-attack
and worst-case accuracy, ε, n and how the points were chosen, every attack's settings and seeds, versions,
device, runtimes, AutoAttack's per-stage accuracies and warnings, and the sanity checks. Both files are written
from it, atomically; nothing lives only in a log.

In `report.json` the per-point flags are strings of "0"/"1" (one character per evaluated point, in the order
of `points.indices`; "1" = still classified correctly), so the file stays readable at 10,000 points.

What is particular to the suite evaluated (a threat model's line and headline; the corruptions' table, mean and heat
map) comes from the suite (`dsnet.evaluation.suite.Suite`), so the report itself does not branch on it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dsnet.evaluation.points import PointSelection
from dsnet.evaluation.sanity import SanityCheck
from dsnet.runtime.files import write_text_atomic

if TYPE_CHECKING:
    from dsnet.evaluation.suite import Suite

__all__ = [
    "AttackOutcome",
    "EvalReport",
    "Evidence",
    "REPORT_FORMAT",
    "REPORT_FILES",
    "REPORT_JSON",
    "eps_fraction",
    "claim_eps",
    "flags_to_string",
    "flags_from_string",
    "dumps_json",
]

REPORT_FORMAT = "dsnet-eval-report/1"

REPORT_JSON, REPORT_MD = "report.json", "report.md"
REPORT_FILES = (REPORT_JSON, REPORT_MD)
"""The files `EvalReport.write` writes for every suite (a suite may add its own: `Suite.files`)."""

_SHORT_LABELS = {"clean": "Natural", "autoattack": "AA"}


def eps_fraction(eps: float) -> str:
    """ε as k/255: "8/255" for 8/255, "7.905/255" for 0.031."""
    if not math.isfinite(eps):
        return "-"
    k = eps * 255
    if abs(k - round(k)) < 1e-6:
        return f"{round(k)}/255"
    return f"{k:.4g}/255"


def claim_eps(eps: float) -> str:
    """ε as RobustBench writes it: "8/255" when it is k/255, else the number ("0.031")."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def flags_to_string(flags: torch.Tensor) -> str:
    """(n,) bool -> "0110..." ("1" = robust)."""
    return "".join("1" if flag else "0" for flag in flags.to(torch.bool).tolist())


def flags_from_string(text: str) -> torch.Tensor:
    """"0110..." -> (n,) bool."""
    if set(text) - {"0", "1"}:
        raise ValueError("robust flags must be a string of 0 and 1")
    return torch.tensor([c == "1" for c in text], dtype=torch.bool)


def dumps_json(payload: Any) -> str:
    """JSON with 2-space indents, but lists of numbers on one line (indices, sweeps stay compact)."""
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=True)
    number_list = re.compile(r"\[\s*(-?[\d.eE+-]+(?:,\s*-?[\d.eE+-]+)*)\s*\]")
    return number_list.sub(lambda m: "[" + ", ".join(part.strip() for part in m.group(1).split(",")) + "]", text)


@dataclass
class AttackOutcome:
    """One metric of the evaluation: clean accuracy or one attack.

    Attributes:
        name: "clean" or the attack's registry name.
        label: display name ("Natural", "FGSM", "PGD-20", "CW∞-30", "AutoAttack").
        config: every setting of the attack (see `Attack.config`); empty for clean.
        flags: (n,) bool, True where the point is still classified correctly (clean and under this attack).
        runtime_s: wall time of the attack (from the run that computed it, also after a resume).
        stats: adversarial-point statistics: max_linf, min_value, max_value, nan_count, n_attacked.
        resumed: True when taken from the state file of an earlier, interrupted run.
        extra: attack-specific results (AutoAttack: stage_accuracy, stages_run, warnings).
    """

    name: str
    label: str
    config: dict[str, Any]
    flags: torch.Tensor
    runtime_s: float
    stats: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def robust(self) -> int:
        return int(self.flags.sum().item())

    @property
    def accuracy(self) -> float:
        return self.robust / self.flags.numel() if self.flags.numel() else math.nan

    @property
    def short_label(self) -> str:
        return _SHORT_LABELS.get(self.name, self.label)


@dataclass
class Evidence:
    """What backs the numbers beyond the attacks themselves (`dsnet.evaluation.curves`, `.randomness`).

    Attributes:
        security: the security curve (`--curve eps`), or None.
        convergence: the convergence curve (`--curve steps`), or None.
        fixed: the fixed-ε results the security curve is checked against.
        randomness: {"randomized", "probe_difference", and for a randomised model "clean_spread"}.
    """

    security: Any = None
    convergence: Any = None
    fixed: list[dict[str, Any]] = field(default_factory=list)
    randomness: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalReport:
    """Everything an evaluation produced; see the module docstring.

    Attributes:
        checkpoint: the evaluated file.
        model: name, kwargs, num_classes, parameters, weights_sha256, epoch, trained_with (+ source).
        dataset: dataset name.
        split: evaluated split.
        selection: which points, and how they were chosen.
        preset: "paper" or "standard".
        eps: the L∞ radius, in pixel units.
        step_note: one sentence on the PGD/CW step size and why (the training objective).
        outcomes: clean first, then the attacks in the paper's order.
        sanity_checks: the gradient-masking checks.
        eps_sweep: (ε, PGD accuracy) pairs of the sanity sweep, or None.
        eps_sweep_n: points in the sweep.
        seeds: every seed used.
        versions: dsnet, torch, pyautoattack, python.
        device: device, its name, number of processes.
        runtime_s: wall time of this call.
        overrides: attack settings changed from the preset (makes the evaluation "custom").
        out_dir: where the files were written (None when not written).
        threat_model: the suite's name: "Linf", "L2", "L1" or "corruptions".
        eps_override: the ε given instead of the preset's (None when the preset's was used).
        warnings: what a reader of the numbers must know (a model that ignores its input, an unusual ε).
        data: where the points came from and what they were: {"dir": the data folder, "sha256": the digest of the
            evaluated images and labels}, so an export can check that it reproduces these numbers on these points.
        suite: what was measured (a threat model, or the corruptions): its sections of the report.
        evidence: the curves and the randomness probe.
    """

    checkpoint: str
    model: dict[str, Any]
    dataset: str
    split: str
    selection: PointSelection
    preset: str
    eps: float
    step_note: str
    outcomes: list[AttackOutcome]
    sanity_checks: list[SanityCheck]
    eps_sweep: list[tuple[float, float]] | None
    eps_sweep_n: int
    seeds: dict[str, Any]
    versions: dict[str, str]
    device: dict[str, Any]
    runtime_s: float
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    out_dir: Path | None = None
    threat_model: str = "Linf"
    eps_override: float | None = None
    warnings: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    suite: Suite | None = None
    evidence: Evidence = field(default_factory=Evidence)

    # ------------------------------------------------------------------------------------------ numbers
    @property
    def n(self) -> int:
        return self.selection.n

    def outcome(self, name: str) -> AttackOutcome:
        """The outcome of metric `name` ("clean", "pgd", ...)."""
        for outcome in self.outcomes:
            if outcome.name == name:
                return outcome
        raise KeyError(f"no metric {name!r} in this report; it has {', '.join(o.name for o in self.outcomes)}")

    @property
    def worst_case_flags(self) -> torch.Tensor:
        """(n,) bool: robust to every attack run (and correct on the clean input)."""
        flags = torch.ones(self.n, dtype=torch.bool)
        for outcome in self.outcomes:
            flags &= outcome.flags
        return flags

    @property
    def worst_case_accuracy(self) -> float:
        """Points robust to every attack over n, as an exact fraction (not a float32 mean: 11/40 is 0.275)."""
        return int(self.worst_case_flags.sum()) / self.n if self.n else math.nan

    @property
    def accuracy(self) -> dict[str, float]:
        """metric -> accuracy in [0, 1], in the paper's order, then "worst_case"."""
        return {**{o.name: o.accuracy for o in self.outcomes}, "worst_case": self.worst_case_accuracy}

    @property
    def autoattack(self) -> dict[str, Any] | None:
        """AutoAttack's stage accuracies, stages run and warnings, when it was run."""
        for outcome in self.outcomes:
            if outcome.name == "autoattack":
                return dict(outcome.extra)
        return None

    @property
    def failed_checks(self) -> list[SanityCheck]:
        return [check for check in self.sanity_checks if check.status == "failed"]

    @property
    def norm(self) -> str | None:
        """The threat model's norm ("Linf", "L2", "L1"), None for the corruptions."""
        return self.suite.norm  # type: ignore[union-attr]

    # -------------------------------------------------------------------------------------------- JSON
    def to_dict(self, include_points: bool = True) -> dict[str, Any]:
        """The content of `report.json`."""
        attacks = {}
        for o in self.outcomes:
            attacks[o.name] = {
                "label": o.label,
                "accuracy": o.accuracy,
                "robust": o.robust,
                "n": int(o.flags.numel()),
                "runtime_s": o.runtime_s,
                "resumed": o.resumed,
                "settings": dict(o.config),
                "adversarial_stats": dict(o.stats),
                **({"autoattack": dict(o.extra)} if o.extra else {}),
            }
        payload: dict[str, Any] = {
            "format": REPORT_FORMAT,
            "checkpoint": self.checkpoint,
            "model": dict(self.model),
            "dataset": self.dataset,
            "split": self.split,
            "data": dict(self.data),
            "n": self.n,
            "selection": self.selection.to_dict(),
            "threat_model": {"name": self.threat_model, "norm": self.norm,
                             "eps": self.eps if math.isfinite(self.eps) else None,
                             "eps_255": eps_fraction(self.eps) if self.norm == "Linf" else None,
                             "eps_override": self.eps_override,
                             "preset": self.preset, "preset_description": self._preset_note(),
                             "step_note": self.step_note, "custom_overrides": dict(self.overrides)},
            "accuracy": self.accuracy,
            "warnings": list(self.warnings),
            "worst_case": {"accuracy": self.worst_case_accuracy, "robust": int(self.worst_case_flags.sum()),
                           "over": [o.name for o in self.outcomes]},
            "attacks": attacks,
            "autoattack": self.autoattack,
            "sanity_checks": [check.to_dict() for check in self.sanity_checks],
            "eps_sweep": ({"n": self.eps_sweep_n, "points": [{"eps": e, "accuracy": a} for e, a in self.eps_sweep]}
                          if self.eps_sweep else None),
            "curves": {"eps": self.evidence.security.to_dict() if self.evidence.security is not None else None,
                       "steps": (self.evidence.convergence.to_dict() if self.evidence.convergence is not None
                                 else None)},
            "randomness": dict(self.evidence.randomness),
            "corruptions": None,  # filled by the corruption suite's section; the key is always there
            "seeds": dict(self.seeds),
            "versions": dict(self.versions),
            "device": dict(self.device),
            "runtime_s": {"total": self.runtime_s, **{o.name: o.runtime_s for o in self.outcomes}},
        }
        payload.update(self.suite.json_section(self))  # type: ignore[union-attr]
        if include_points:
            payload["points"] = {
                "indices": self.selection.indices.tolist(),
                "robust_flags": {o.name: flags_to_string(o.flags) for o in self.outcomes},
                "worst_case_flags": flags_to_string(self.worst_case_flags),
            }
        return payload

    # ---------------------------------------------------------------------------------------- Markdown
    def to_markdown(self) -> str:
        """The content of `report.md`."""
        model = self.model
        lines = [f"# Robustness of `{model['name']}` on {self.dataset} ({self.split})", ""]
        lines += [
            f"- checkpoint: `{self.checkpoint}`" + (f" (epoch {model['epoch']})" if model.get("epoch") else ""),
            self.suite.threat_line(self),  # type: ignore[union-attr]
            f"- points: n = {self.n}, {self.selection.description}",
            *([f"- step sizes: {self.step_note}"] if self.step_note else []),
            "",
        ]
        if self.warnings:
            lines += [f"**Warning:** {warning}" for warning in self.warnings] + [""]
        spread = self.evidence.randomness.get("clean_spread")
        if spread:
            lines += [f"Clean accuracy over {spread['passes']} passes of the randomised model: "
                      f"{100 * spread['mean']:.2f} ± {100 * spread['std']:.2f} % (from {100 * spread['min']:.2f} to "
                      f"{100 * spread['max']:.2f} %); the attacks below start from one pass.", ""]
        lines += self.suite.markdown_section(self)  # type: ignore[union-attr]
        lines += [
            "| " + " | ".join([o.short_label for o in self.outcomes] + ["Worst case"]) + " |",
            "|" + "---:|" * (len(self.outcomes) + 1),
            "| " + " | ".join([f"{100 * o.accuracy:.2f}" for o in self.outcomes]
                              + [f"{100 * self.worst_case_accuracy:.2f}"]) + " |",
            "",
            "Accuracy in % on the same n points; worst case = points robust to every attack run.",
            *_claim_lines((model.get("source") or {}).get("robustbench")),
            "",
            "## Attacks",
            "",
            "| Metric | Accuracy (%) | Robust / n | Settings | Runtime (s) | Forward / backward per point | "
            "Points / s |",
            "|---|---:|---:|---|---:|---:|---:|",
        ]
        for o in self.outcomes:
            settings = _settings_text(o.config)
            resumed = " (resumed)" if o.resumed else ""
            lines.append(f"| {o.label} | {100 * o.accuracy:.2f} | {o.robust} / {o.flags.numel()} | {settings} | "
                         f"{o.runtime_s:.1f}{resumed} | {_queries_text(o.stats)} | {_rate_text(o.stats)} |")
        lines.append(f"| Worst case | {100 * self.worst_case_accuracy:.2f} | {int(self.worst_case_flags.sum())} / "
                     f"{self.n} | all of the above | | | |")
        lines += ["", "Queries are images through the model per attacked point (counted by hooks on it), forward and "
                      "backward."]
        aa = self.autoattack
        if aa:
            stages = list(aa.get("stage_accuracy", {}))
            lines += ["", "## AutoAttack stages", "",
                      "| " + " | ".join(s.upper() if s != "clean" else "Clean" for s in stages) + " |",
                      "|" + "---:|" * len(stages),
                      "| " + " | ".join(f"{100 * aa['stage_accuracy'][s]:.2f}" for s in stages) + " |", "",
                      f"Stages run: {', '.join(aa.get('stages_run', [])) or 'none'}. Warnings of AutoAttack's checks: "
                      + ("none." if not aa.get("warnings") else "")]
            lines += [f"- {warning}" for warning in aa.get("warnings", [])]
        if self.evidence.security is not None or self.evidence.convergence is not None:
            from dsnet.evaluation.curves import curve_markdown

            lines += ["", *curve_markdown(self.evidence.security, self.evidence.convergence)]
        lines += ["", "## Sanity checks (gradient masking)", ""]
        if not self.sanity_checks:
            lines.append(self.suite.no_checks_note)  # type: ignore[union-attr]
        for check in self.sanity_checks:
            lines.append(f"- **{check.status.upper()}** - {check.title}: {check.message}")
        if self.eps_sweep:
            lines += ["", f"ε sweep (PGD-20, step ε/4, {self.eps_sweep_n} points):", "",
                      "| ε | " + " | ".join(f"{eps:.4g}" for eps, _ in self.eps_sweep) + " |",
                      "|---|" + "---:|" * len(self.eps_sweep),
                      "| accuracy (%) | " + " | ".join(f"{100 * acc:.2f}" for _, acc in self.eps_sweep) + " |"]
        lines += [
            "",
            "## Run",
            "",
            f"- model: {model['name']}{' ' + str(model['kwargs']) if model.get('kwargs') else ''}, "
            f"{model.get('num_classes')} classes, "
            f"{model.get('parameters', 0):,} parameters, weights sha256 {str(model.get('weights_sha256', ''))[:16]}…",
            f"- trained with: {model.get('trained_with')} ({model.get('trained_with_source')})",
            f"- model source: {_source_text(model.get('source') or {})}",
            f"- preset {self.preset}: {self._preset_note()}",
            f"- seeds: {', '.join(f'{k} {v}' for k, v in self.seeds.items())}",
            f"- device: {self.device.get('name')} × {self.device.get('world_size')} process(es), "
            f"{'TF32 (--math tf32)' if self.device.get('math_setting') == 'tf32' else 'IEEE fp32'}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in self.versions.items())}",
            f"- runtime: {self.runtime_s:.1f} s for this call; per metric: "
            + ", ".join(f"{o.short_label} {o.runtime_s:.1f} s" for o in self.outcomes),
            "",
        ]
        return "\n".join(lines)

    def _preset_note(self) -> str:
        presets = self.suite.presets  # type: ignore[union-attr]
        return presets.get(self.preset).description if self.preset in presets else ""

    def write(self, out_dir: str | Path) -> tuple[Path, ...]:
        """Writes `report.json` and `report.md` (and the suite's own files, e.g. the corruptions' heat map) into
        `out_dir`, atomically, and returns their paths."""
        out_dir = Path(out_dir)
        json_path, md_path = out_dir / REPORT_JSON, out_dir / REPORT_MD
        write_text_atomic(json_path, dumps_json(self.to_dict()) + "\n")
        write_text_atomic(md_path, self.to_markdown())
        self.out_dir = out_dir
        curves: tuple[Path, ...] = ()
        if self.evidence.security is not None or self.evidence.convergence is not None:
            from dsnet.evaluation.curves import write_curve_files

            curves = write_curve_files(self.evidence.security, self.evidence.convergence, self.evidence.fixed,
                                       out_dir)
        return (json_path, md_path, *self.suite.write_files(self, out_dir), *curves)  # type: ignore[union-attr]


def _queries_text(stats: dict[str, Any]) -> str:
    """"21 / 20" forward and backward images per attacked point; "-" where nothing was counted (an older state)."""
    queries = stats.get("queries") or {}
    forward, backward = queries.get("forward_per_point"), queries.get("backward_per_point")
    if forward is None:
        return "-"
    return f"{forward:.4g} / {backward:.4g}"


def _rate_text(stats: dict[str, Any]) -> str:
    rate = stats.get("images_per_s")
    return f"{rate:.1f}" if isinstance(rate, (int, float)) else "-"


def _settings_text(config: dict[str, Any]) -> str:
    """A compact one-cell summary of an attack's settings for the Markdown table."""
    if not config:
        return "-"
    keys = ("eps", "step_size", "steps", "restarts", "kappa", "random_start", "eot", "version", "seed")
    parts = []
    for key in keys:
        if key in config:
            value = config[key]
            parts.append(f"{key} {value:.5g}" if isinstance(value, float) else f"{key} {value}")
    if "stages" in config:
        parts.append("stages " + "+".join(config["stages"]))
    return ", ".join(parts)


def _claim_lines(robustbench: dict[str, Any] | None) -> list[str]:
    """What RobustBench lists for the entry the model was loaded as, beside our numbers (which are on n points)."""
    if not robustbench:
        return []
    claim = robustbench.get("claim") or {}
    metric = "AutoAttack" if claim.get("metric") == "AutoAttack" else "corruptions"
    eps = f" at ε = {claim['eps']}" if claim.get("eps") else ""
    return ["", f"RobustBench lists {robustbench.get('entry')} at {claim.get('clean')} % clean and "
                f"{claim.get('robust')} % {metric}{eps} on its own test points."]


def _source_text(source: dict[str, Any]) -> str:
    if not source:
        return "-"
    parts = [str(source.get("kind", "-"))]
    if source.get("factory"):
        parts.append(f"{source['factory']} {source.get('kwargs') or ''}".strip())
    if source.get("class"):
        parts.append(str(source["class"]))
    if source.get("weights"):
        parts.append(str(source["weights"]))
    if source.get("file_sha256"):
        parts.append(f"file sha256 {str(source['file_sha256'])[:16]}…")
    if source.get("normalize"):
        parts.append(f"inputs normalised with mean {source['normalize']['mean']} std {source['normalize']['std']}")
    if source.get("robustbench"):
        parts.append(f"RobustBench entry {source['robustbench']['entry']}")
    if source.get("hub"):
        hub = source["hub"]
        parts.append(f"Hugging Face Hub {hub['repo']} at commit {hub.get('commit')} (asked for {hub['revision']}; "
                     f"files {', '.join(hub['files'])})")
    return ", ".join(parts)
