"""The curves behind a robustness number: accuracy against ε (security curve) and against attack iterations
(convergence), with the checks the field's checklist asks of them (Carlini et al. 2019, "On Evaluating Adversarial
Robustness").

- **Security curve** (`--curve eps`): one minimum-norm attack (FMN, `dsnet.attacks.minimum_norm`) gives every
  point's smallest adversarial perturbation r_i, so the accuracy at every ε is the share of points with r_i > ε
  (0 for a point misclassified already; a point for which no adversarial input was found stays robust at every ε).
  It must reach 0 (an unbounded attack that leaves points standing is not finding the boundary), and it may not lie
  above a fixed-ε attack on the same points: the evaluation's own PGD at ε, and the sanity sweep's PGD at 0.5, 1, 2
  and 4 ε. Written as `curve_eps.csv` (`eps`, `accuracy`, ascending ε; one row per breakpoint) and `curve_eps.png`.
- **Convergence** (`--curve steps`): PGD (the evaluation's, with its step) and APGD-CE (the reference's, whose step
  adapts to its budget) at 10, 20, 50, 100 and 200 iterations, and PGD at the last count with restarts, all on the
  same points. An accuracy that still falls by more than `CONVERGENCE_TOLERANCE` when the iterations double (or with
  restarts) means the number at the paper's budget is still moving. Written as `curve_steps.csv` (`attack`,
  `steps`, `restarts`, `accuracy`) and `curve_steps.png`, the paper's PGD-20 marked.

Both are computed after the metrics, stored in `eval_state.json` as they finish (a rerun reuses them when their
settings and the evaluation's content are the same) and go into `report.json` and `report.md`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsnet.evaluation.sanity import FAILED, PASSED, SKIPPED, SanityCheck

__all__ = ["SecurityCurve", "ConvergencePoint", "ConvergenceCurve", "CURVE_FILES", "CURVE_TOLERANCE",
           "CONVERGENCE_TOLERANCE", "security_curve", "convergence_curve", "check_security_curve",
           "check_convergence", "fixed_eps_points", "curve_markdown", "write_curve_files", "save_figure",
           "accuracy_figure", "draw_security_curves", "security_curve_of"]

logger = logging.getLogger("dsnet.evaluation.evaluator")

CURVE_FILES = ("curve_eps.csv", "curve_eps.png", "curve_steps.csv", "curve_steps.png")
"""The files the curves add to an evaluation folder."""

CURVE_TOLERANCE = 0.01
"""How far (in accuracy) the security curve may lie above a fixed-ε attack on the same points before the check fails:
one percentage point, for points a minimum-norm search of a fixed budget misses that PGD finds."""

CONVERGENCE_TOLERANCE = 0.01
"""The largest accuracy drop (one percentage point) that doubling the iterations, or restarts, may still bring."""


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


# ------------------------------------------------------------------------------------------- security curve
@dataclass
class SecurityCurve:
    """Every point's smallest adversarial perturbation, and the accuracy against ε they give.

    Attributes:
        norm: the threat model's norm.
        eps: the evaluation's ε (marked on the curve).
        sizes: (n,) per point, in the report's point order: 0 for a point misclassified already, the FMN distance,
            or inf where none was found.
        attack: the FMN settings.
        unconfirmed: points FMN found whose adversarial input the model then classified correctly (left robust).
        runtime_s: wall time.
        queries: forward and backward images (`dsnet.attacks.queries`).
    """

    norm: str
    eps: float
    sizes: list[float]
    attack: dict[str, Any]
    unconfirmed: int = 0
    runtime_s: float = 0.0
    queries: dict[str, Any] = field(default_factory=dict)

    def accuracy_at(self, eps: float, first: int | None = None) -> float:
        """The share of points (of the first `first`, or all) whose smallest adversarial perturbation is > `eps`."""
        sizes = self.sizes[:first] if first is not None else self.sizes
        return sum(size > eps for size in sizes) / len(sizes) if sizes else math.nan

    def points(self) -> list[tuple[float, float]]:
        """(ε, accuracy) at ε = 0 and at every distinct finite size: the whole step curve, ascending ε."""
        levels = sorted({0.0, *(size for size in self.sizes if math.isfinite(size))})
        return [(level, self.accuracy_at(level)) for level in levels]

    @property
    def zero_eps(self) -> float | None:
        """The smallest ε at which no point is robust, or None when some point was never broken."""
        if not self.sizes or any(math.isinf(size) for size in self.sizes):
            return None
        return max(self.sizes)

    @property
    def median_size(self) -> float:
        """The median smallest perturbation of the points classified correctly (inf where more than half stand)."""
        sizes = sorted(size for size in self.sizes if size > 0)
        return sizes[len(sizes) // 2] if sizes else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "eps": self.eps, "attack": dict(self.attack), "sizes": [_plain(s) for s in self.sizes],
                "unconfirmed": self.unconfirmed, "runtime_s": self.runtime_s, "queries": dict(self.queries),
                "zero_eps": self.zero_eps, "accuracy_at_eps": self.accuracy_at(self.eps),
                "median_size": _plain(self.median_size), "never_broken": sum(math.isinf(s) for s in self.sizes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SecurityCurve:
        return cls(data["norm"], float(data["eps"]), [_number(s) for s in data["sizes"]], dict(data["attack"]),
                   int(data.get("unconfirmed", 0)), float(data.get("runtime_s", 0.0)), dict(data.get("queries", {})))


def _plain(value: float) -> float | str:
    """A number for JSON: inf as the string "inf" (JSON has no infinity)."""
    return "inf" if math.isinf(value) else (None if math.isnan(value) else value)  # type: ignore[return-value]


def _number(value: Any) -> float:
    return math.inf if value == "inf" else (math.nan if value is None else float(value))


def security_curve(evaluation: Any, state: Any) -> SecurityCurve:
    """FMN on the evaluation's points (stored in `state` for a rerun)."""
    from dsnet.attacks.minimum_norm import FMN, minimum_norms
    from dsnet.attacks.queries import count_queries

    plan, config = evaluation.plan, evaluation.plan.config
    attack = FMN(norm=plan.suite.norm, steps=config.fmn_steps, seed=config.seed)
    key = {"attack": attack.config(), "batch_size": config.batch_size}
    stored = state.extra("curve_eps", key)
    if stored is not None:
        return SecurityCurve.from_dict(stored)
    t0 = time.perf_counter()
    with count_queries(evaluation.loaded.model) as count:
        sizes, unconfirmed = minimum_norms(evaluation.loaded.model, attack, evaluation.images, evaluation.labels,
                                           clean=evaluation.clean, batch_size=config.batch_size,
                                           progress=evaluation.bar(attack.label))
    runtime = time.perf_counter() - t0
    curve = SecurityCurve(plan.suite.norm, plan.eps, [float(s) for s in sizes.tolist()], attack.config(), unconfirmed,
                          runtime, count.totals().to_dict(int(evaluation.clean.sum())))
    state.record_extra("curve_eps", key, curve.to_dict())
    if evaluation.ctx.is_main:
        zero = f"reaches 0 at ε = {curve.zero_eps:.4g}" if curve.zero_eps is not None else \
            f"never reaches 0 ({curve.to_dict()['never_broken']} points never broken)"
        logger.info("security curve (%s): %s at ε = %.4g, %s; %.1f s", attack.label,
                    _pct(curve.accuracy_at(plan.eps)), plan.eps, zero, runtime)
    return curve


def fixed_eps_points(evaluation: Any, sweep: Sequence[tuple[float, float]] | None) -> list[dict[str, Any]]:
    """The fixed-ε attacks on the evaluation's points the curve is checked against: each attack run at the
    evaluation's ε (on all points), and the sanity sweep's PGD (on its first points)."""
    n = evaluation.selection.n
    points = [{"label": o.label, "eps": evaluation.plan.eps, "accuracy": o.accuracy, "first": n}
              for o in evaluation.outcomes if o.name not in ("clean", "fmn") and o.flags.numel() == n]
    if sweep:
        first = min(evaluation.plan.config.sanity_n, n)
        points += [{"label": "PGD-20 (sweep)", "eps": eps, "accuracy": accuracy, "first": first}
                   for eps, accuracy in sweep]
    return points


def check_security_curve(curve: SecurityCurve | None, fixed: Sequence[dict[str, Any]]) -> SanityCheck:
    """The curve reaches 0, and lies at or below every fixed-ε attack on the same points (within `CURVE_TOLERANCE`)."""
    title = "the security curve reaches 0 and is not above the fixed-ε attacks"
    if curve is None:
        return SanityCheck("security_curve", title, SKIPPED, "no security curve was asked for (--curve eps).")
    above = []
    for point in fixed:
        ours = curve.accuracy_at(point["eps"], point["first"])
        if ours > point["accuracy"] + CURVE_TOLERANCE:
            above.append(f"{_pct(ours)} at ε = {point['eps']:.4g} where {point['label']} leaves {_pct(point['accuracy'])}")
    details = {"zero_eps": curve.zero_eps, "never_broken": curve.to_dict()["never_broken"], "above": above,
               "tolerance": CURVE_TOLERANCE, "compared_with": [dict(p) for p in fixed]}
    problems = []
    if curve.zero_eps is None:
        problems.append(f"it never reaches 0: {details['never_broken']} point(s) resisted the unbounded attack "
                        "(masked gradients, or too few --fmn-steps)")
    if above:
        problems.append(f"it lies above a fixed-ε attack ({'; '.join(above)}): the minimum-norm search missed points "
                        "that attack breaks; raise --fmn-steps")
    if problems:
        return SanityCheck("security_curve", title, FAILED, "; ".join(problems) + ".", details)
    compared = f", at or below the {len(fixed)} fixed-ε results on the same points" if fixed else ""
    return SanityCheck("security_curve", title, PASSED,
                       f"accuracy reaches 0 at ε = {curve.zero_eps:.4g}{compared}.", details)


# ---------------------------------------------------------------------------------------------- convergence
@dataclass
class ConvergencePoint:
    """One attack at one budget: PGD or APGD, its iterations and restarts, and its accuracy on the points."""

    attack: str
    label: str
    steps: int
    restarts: int
    accuracy: float
    robust: int
    runtime_s: float = 0.0
    queries: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "label": self.label, "steps": self.steps, "restarts": self.restarts,
                "accuracy": self.accuracy, "robust": self.robust, "runtime_s": self.runtime_s,
                "queries": dict(self.queries)}


@dataclass
class ConvergenceCurve:
    """Accuracy against iterations, with the paper's PGD-20 (the evaluation's PGD) for reference."""

    points: list[ConvergencePoint]
    reference: dict[str, Any] | None = None

    def series(self, attack: str, restarts: int = 1) -> list[ConvergencePoint]:
        return sorted((p for p in self.points if p.attack == attack and p.restarts == restarts), key=lambda p: p.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"points": [p.to_dict() for p in self.points], "reference": self.reference,
                "tolerance": CONVERGENCE_TOLERANCE}


def convergence_curve(evaluation: Any, state: Any) -> ConvergenceCurve:
    """PGD and APGD at every `--curve-steps` count and PGD with `--curve-restarts` (each stored as it finishes)."""
    from dsnet.attacks.apgd import APGD
    from dsnet.attacks.queries import count_queries
    from dsnet.evaluation.threat_models import build_attacks

    plan, config, loaded = evaluation.plan, evaluation.plan.config, evaluation.loaded
    norm = plan.suite.norm
    eot = {"eot": config.eot} if config.eot > 1 else {}
    budgets: list[tuple[str, int, int]] = []
    if norm in ("Linf", "L2"):  # no PGD of our own in L1
        budgets += [("pgd", k, 1) for k in config.curve_steps]
    budgets += [("apgd", k, 1) for k in config.curve_steps]
    if norm in ("Linf", "L2") and config.curve_restarts > 1:
        budgets.append(("pgd", max(config.curve_steps), config.curve_restarts))
    points = []
    for name, steps, restarts in budgets:
        if name == "pgd":
            attack = build_attacks(plan.preset.name, loaded.trained_with, ["pgd"],
                                   {"pgd": {"steps": steps, "restarts": restarts, "seed": config.seed, **eot}},
                                   threat_model=plan.suite, eps=config.eps)["pgd"]
        else:
            attack = APGD(eps=plan.eps, steps=steps, norm=norm, seed=config.seed, **eot)
        key = {"attack": attack.config(), "batch_size": config.batch_size}
        stored = state.extra(f"curve_steps:{name}-{steps}x{restarts}", key)
        if stored is not None:
            points.append(ConvergencePoint(**stored))
            continue
        t0 = time.perf_counter()
        with count_queries(loaded.model) as count:
            run = attack.evaluate(loaded.model, evaluation.images, evaluation.labels, clean=evaluation.clean,
                                  batch_size=config.batch_size, progress=evaluation.bar(attack.label))
        point = ConvergencePoint(name, attack.label, steps, restarts, run.accuracy, int(run.flags.sum()),
                                 time.perf_counter() - t0, count.totals().to_dict(int(evaluation.clean.sum())))
        state.record_extra(f"curve_steps:{name}-{steps}x{restarts}", key, point.to_dict())
        if evaluation.ctx.is_main:
            logger.info("convergence: %s %s", point.label, _pct(point.accuracy))
        points.append(point)
    reference = next(({"label": o.label, "steps": o.config.get("steps"), "accuracy": o.accuracy}
                      for o in evaluation.outcomes if o.name == "pgd"), None)
    return ConvergenceCurve(points, reference)


def check_convergence(curve: ConvergenceCurve | None) -> SanityCheck:
    """For PGD and APGD: the accuracy at the most iterations is within `CONVERGENCE_TOLERANCE` of the accuracy at
    half of them (or fewer), and restarts do not lower PGD's by more either."""
    title = "the attacks have converged (doubling the iterations, or restarts, changes accuracy by at most 1 point)"
    if curve is None:
        return SanityCheck("convergence", title, SKIPPED, "no convergence curve was asked for (--curve steps).")
    problems, compared = [], []
    for attack in ("pgd", "apgd"):
        series = curve.series(attack)
        if len(series) < 2:
            continue
        last = series[-1]
        earlier = [p for p in series if 2 * p.steps <= last.steps] or series[:-1]
        before = earlier[-1]
        compared.append(f"{before.label} {_pct(before.accuracy)} → {last.label} {_pct(last.accuracy)}")
        if before.accuracy - last.accuracy > CONVERGENCE_TOLERANCE:
            problems.append(f"{last.label} is {_pct(before.accuracy - last.accuracy)} below {before.label}")
    plain = curve.series("pgd")
    for point in curve.points:
        if point.attack == "pgd" and point.restarts > 1 and plain:
            single = next((p for p in plain if p.steps == point.steps), None)
            if single is not None:
                compared.append(f"{point.label} {_pct(point.accuracy)}")
                if single.accuracy - point.accuracy > CONVERGENCE_TOLERANCE:
                    problems.append(f"{point.label} is {_pct(single.accuracy - point.accuracy)} below "
                                    f"{single.label}")
    details = {"tolerance": CONVERGENCE_TOLERANCE, "compared": compared, "problems": problems}
    if not compared:
        return SanityCheck("convergence", title, SKIPPED, "fewer than two iteration counts were run.", details)
    if problems:
        return SanityCheck("convergence", title, FAILED,
                           f"accuracy still falls with more iterations ({'; '.join(problems)}): the numbers at a "
                           "smaller budget overstate robustness; report the converged value.", details)
    return SanityCheck("convergence", title, PASSED, f"{'; '.join(compared)}.", details)


# ------------------------------------------------------------------------------------------------- rendering
def curve_markdown(security: SecurityCurve | None, convergence: ConvergenceCurve | None) -> list[str]:
    """The report's sections for the curves."""
    lines: list[str] = []
    if security is not None:
        eps = security.eps
        levels = sorted({0.25 * eps, 0.5 * eps, eps, 2 * eps, 4 * eps})
        zero = (f"accuracy reaches 0 at ε = {security.zero_eps:.4g}" if security.zero_eps is not None else
                f"accuracy never reaches 0: {security.to_dict()['never_broken']} point(s) were never broken")
        lines += ["## Security curve", "",
                  f"{security.attack.get('steps')} iterations of FMN ({security.norm}) on every point; {zero}; the "
                  f"median smallest perturbation of the correctly classified points is "
                  f"{_size(security.median_size)}. The evaluation's ε = {eps:.4g} is marked **bold**. Full curve: "
                  "`curve_eps.csv`, `curve_eps.png`.", "",
                  "| ε | " + " | ".join(f"**{lvl:.4g}**" if lvl == eps else f"{lvl:.4g}" for lvl in levels) + " |",
                  "|---|" + "---:|" * len(levels),
                  "| accuracy (%) | " + " | ".join(f"{100 * security.accuracy_at(lvl):.2f}" for lvl in levels) + " |",
                  ""]
        if security.unconfirmed:
            lines += [f"{security.unconfirmed} point(s) found by FMN were classified correctly when checked again "
                      "(left robust).", ""]
    if convergence is not None:
        steps = sorted({p.steps for p in convergence.points if p.restarts == 1})
        lines += ["## Convergence", "",
                  "Accuracy (%) against attack iterations on the same points" + (
                      f"; the evaluation's {convergence.reference['label']}: "
                      f"{100 * convergence.reference['accuracy']:.2f}" if convergence.reference else "") + ".", "",
                  "| attack | " + " | ".join(str(k) for k in steps) + " |", "|---|" + "---:|" * len(steps)]
        for attack, label in (("pgd", "PGD"), ("apgd", "APGD-CE")):
            series = {p.steps: p for p in convergence.series(attack)}
            if series:
                lines.append(f"| {label} | " + " | ".join(f"{100 * series[k].accuracy:.2f}" if k in series else "–"
                                                         for k in steps) + " |")
        for point in convergence.points:
            if point.restarts > 1:
                lines.append(f"| {point.label} | " + " | ".join(f"{100 * point.accuracy:.2f}" if k == point.steps
                                                                else "" for k in steps) + " |")
        lines += ["", "Files: `curve_steps.csv`, `curve_steps.png`.", ""]
    return lines


def _size(value: float) -> str:
    return "∞ (most points were never broken)" if math.isinf(value) else f"{value:.4g}"


def write_curve_files(security: SecurityCurve | None, convergence: ConvergenceCurve | None,
                      fixed: Sequence[dict[str, Any]], out_dir: Path) -> tuple[Path, ...]:
    """The curves' CSV and PNG files (atomically)."""
    from dsnet.runtime.files import write_text_atomic

    written: list[Path] = []
    if security is not None:
        rows = ["eps,accuracy"] + [f"{eps:.8g},{acc:.6f}" for eps, acc in security.points()]
        path = out_dir / "curve_eps.csv"
        write_text_atomic(path, "\n".join(rows) + "\n")
        written += [path, _plot_security(security, fixed, out_dir / "curve_eps.png")]
    if convergence is not None:
        rows = ["attack,steps,restarts,accuracy"] + [f"{p.attack},{p.steps},{p.restarts},{p.accuracy:.6f}"
                                                       for p in convergence.points]
        path = out_dir / "curve_steps.csv"
        write_text_atomic(path, "\n".join(rows) + "\n")
        written += [path, _plot_convergence(convergence, out_dir / "curve_steps.png")]
    return tuple(written)


def save_figure(figure: Any, path: Path) -> Path:
    """Writes a matplotlib figure as a PNG, atomically."""
    from dsnet.runtime.files import write_atomic

    return write_atomic(path, lambda handle: figure.savefig(handle, format="png", dpi=120, bbox_inches="tight"))


@contextmanager
def accuracy_figure(path: Path, xlabel: str) -> Iterator[Any]:
    """An axis of robust accuracy (%) against `xlabel` to draw on inside the block; saved to `path` after it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    try:
        yield axis
        axis.set_xlabel(xlabel)
        axis.set_ylabel("robust accuracy (%)")
        axis.set_ylim(0, 100)
        axis.legend()
        axis.grid(alpha=0.3)
        save_figure(figure, path)
    finally:
        plt.close(figure)


def draw_security_curves(axis: Any, curves: Sequence[tuple[str, SecurityCurve]]) -> None:
    """Each (label, curve) as a step curve of accuracy (%) against ε, with the first curve's ε marked."""
    for label, curve in curves:
        points = curve.points()
        axis.step([e for e, _ in points], [100 * a for _, a in points], where="post", label=label)
    eps = curves[0][1].eps
    axis.axvline(eps, color="grey", linestyle="--", linewidth=1, label=f"ε = {eps:.4g}")
    axis.set_xlim(left=0)


def _plot_security(curve: SecurityCurve, fixed: Sequence[dict[str, Any]], path: Path) -> Path:
    with accuracy_figure(path, f"ε ({curve.norm})") as axis:
        draw_security_curves(axis, [(f"FMN-{curve.attack.get('steps')}", curve)])
        for point in fixed:
            axis.plot(point["eps"], 100 * point["accuracy"], "x", color="black")
        if fixed:
            axis.plot([], [], "x", color="black", label="fixed-ε attacks")
    return path


def _plot_convergence(curve: ConvergenceCurve, path: Path) -> Path:
    with accuracy_figure(path, "iterations") as axis:
        for attack, label in (("pgd", "PGD"), ("apgd", "APGD-CE")):
            series = curve.series(attack)
            if series:
                axis.plot([p.steps for p in series], [100 * p.accuracy for p in series], "o-", label=label)
        for point in curve.points:
            if point.restarts > 1:
                axis.plot(point.steps, 100 * point.accuracy, "s", label=point.label)
        if curve.reference:
            axis.axhline(100 * curve.reference["accuracy"], color="grey", linestyle="--", linewidth=1,
                         label=f"{curve.reference['label']} (the evaluation's)")
        axis.set_xscale("log")
        ticks = sorted({p.steps for p in curve.points})
        axis.set_xticks(ticks, [str(k) for k in ticks])
        axis.minorticks_off()
    return path


def security_curve_of(report: dict[str, Any]) -> SecurityCurve | None:
    """The security curve of a `report.json`, if it has one."""
    data = (report.get("curves") or {}).get("eps")
    return SecurityCurve.from_dict(data) if data else None
