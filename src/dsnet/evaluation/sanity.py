"""Sanity checks that flag gradient masking (Carlini et al. 2019; Croce & Hein 2020, `flags_doc.md`).

Each check is a pure function of numbers the evaluation already has and returns a `SanityCheck` that is
passed, failed or skipped, with one sentence saying why:

- `check_ordering`: stronger attacks must not leave more points robust: AA ≤ PGD ≤ FGSM ≤ clean, and every
  attack ≤ clean. A single-step attack beating a multi-step one is the classic sign of masked gradients.
- `check_eps_sweep`: PGD accuracy must fall as ε grows and reach about 0 at a large ε (0.5 lets PGD paint any
  image); a plateau above 0 means the gradient does not lead anywhere.
- `check_square`: the black-box Square attack must not lower AutoAttack's accuracy after the white-box attacks
  by more than 0.2 % (AutoAttack's own threshold).
- `check_perturbations`: every adversarial point lies in the ε-ball (of the threat model's norm) and in [0, 1],
  with no NaN.
- `check_pgd_vs_margin`: PGD on cross-entropy must break most of the points that the margin-loss attacks (CW∞,
  AutoAttack) break. It needs no extra attack, so it works with the ε sweep off: a model whose softmax saturates
  (logits scaled up) gives PGD zero gradients while the margin losses still lead somewhere, and a model whose
  gradients vanish everywhere (an input rounded to the 8-bit grid) leaves the breaking to AutoAttack's black-box
  Square, which PGD cannot follow either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SanityCheck",
    "check_ordering",
    "check_eps_sweep",
    "check_square",
    "check_perturbations",
    "check_pgd_vs_margin",
    "MARGIN_ATTACKS",
    "PGD_MARGIN_SHARE",
    "ORDERING_CHAIN",
    "SQUARE_THRESHOLD",
    "SWEEP_EPS_FACTORS",
    "SWEEP_LARGE_EPS",
]

ORDERING_CHAIN = ("clean", "fgsm", "pgd", "autoattack")
"""Metrics that must be non-increasing in this order (those that were run)."""

SQUARE_THRESHOLD = 0.002
"""Largest accuracy drop Square may add after the white-box attacks (AutoAttack's check uses 0.2 %)."""

SWEEP_EPS_FACTORS = (0.5, 1.0, 2.0, 4.0)
"""Multiples of the preset ε in the sweep."""

SWEEP_LARGE_EPS = 0.5
"""The large L∞ ε at the end of the sweep, where accuracy must be about 0 (each threat model has its own:
`ThreatModel.sweep_large_eps`)."""

MARGIN_ATTACKS = ("cw_inf", "cw_l2", "autoattack")
"""Attacks whose losses are margins (CW's, APGD-T's DLR) or that need no gradient (Square, inside AutoAttack)."""

PGD_MARGIN_SHARE = 0.5
"""Least share of the points broken by a margin-loss attack that PGD must break as well."""

PGD_MARGIN_MIN_POINTS = 3
"""Fewer points broken by the margin attacks than this say nothing either way."""

PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"


@dataclass(frozen=True)
class SanityCheck:
    """The outcome of one check.

    Attributes:
        name: short identifier ("ordering", "eps_sweep", "square", "perturbation_bounds").
        title: what the check tests, in words.
        status: "passed", "failed" or "skipped".
        message: one sentence with the numbers behind the status.
        details: the numbers, for machines.
    """

    name: str
    title: str
    status: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "status": self.status, "message": self.message,
                "details": dict(self.details)}


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def check_ordering(accuracy: Mapping[str, float], labels: Mapping[str, str]) -> SanityCheck:
    """AA ≤ PGD ≤ FGSM ≤ clean (for those run), and every attack ≤ clean.

    Args:
        accuracy: metric name ("clean", "fgsm", "pgd", "cw_inf", "autoattack", ...) -> accuracy in [0, 1].
        labels: metric name -> display label ("Natural", "PGD-20", ...).
    """
    title = "accuracy does not increase with attack strength (AA ≤ PGD ≤ FGSM ≤ clean)"
    label = lambda name: labels.get(name, name)  # noqa: E731
    attacks = [name for name in accuracy if name != "clean"]
    if "clean" not in accuracy or not attacks:
        return SanityCheck("ordering", title, SKIPPED, "no attack was run, so there is nothing to compare.")
    problems = []
    chain = [name for name in ORDERING_CHAIN if name in accuracy]
    for weaker, stronger in zip(chain, chain[1:]):
        if accuracy[stronger] > accuracy[weaker]:
            problems.append(f"{label(stronger)} {_pct(accuracy[stronger])} > {label(weaker)} {_pct(accuracy[weaker])}")
    for name in attacks:
        if name not in chain and accuracy[name] > accuracy["clean"]:
            problems.append(f"{label(name)} {_pct(accuracy[name])} > {label('clean')} {_pct(accuracy['clean'])}")
    order = " ≥ ".join(f"{label(name)} {_pct(accuracy[name])}" for name in chain)
    details = {"chain": chain, "accuracy": dict(accuracy)}
    if problems:
        return SanityCheck("ordering", title, FAILED,
                           f"a stronger attack left more points robust ({'; '.join(problems)}): a sign of gradient "
                           "masking, or of a weak attack configuration.", {**details, "violations": problems})
    others = [name for name in attacks if name not in chain]
    tail = f"; {', '.join(label(n) for n in others)} ≤ {label('clean')}" if others else ""
    return SanityCheck("ordering", title, PASSED, f"{order}{tail}.", details)


def check_eps_sweep(sweep: Sequence[tuple[float, float]] | None, n: int, *, reason_skipped: str = "",
                    tolerance_points: int = 1, zero_threshold: float = 0.01) -> SanityCheck:
    """PGD accuracy falls as ε grows and is about 0 at the largest ε.

    Args:
        sweep: (ε, accuracy) pairs in increasing ε, the last at a large ε; None when the sweep did not run.
        n: number of points in the sweep.
        reason_skipped: why the sweep did not run (for the message).
        tolerance_points: an increase by at most this many points (of n) between neighbouring ε is noise.
        zero_threshold: "about 0": accuracy at the largest ε must be at most max(this, one point).
    """
    title = "PGD accuracy falls as ε grows and reaches ~0 at a large ε"
    if not sweep:
        return SanityCheck("eps_sweep", title, SKIPPED, reason_skipped or "the ε sweep was not run.")
    tolerance = tolerance_points / max(n, 1)
    limit = max(zero_threshold, 1 / max(n, 1))
    values = ", ".join(f"{_pct(acc)} at ε={eps:.4g}" for eps, acc in sweep)
    details = {"n": n, "sweep": [{"eps": eps, "accuracy": acc} for eps, acc in sweep], "tolerance": tolerance,
               "zero_threshold": limit}
    rises = [(a, b) for a, b in zip(sweep, sweep[1:]) if b[1] > a[1] + tolerance]
    largest_eps, last = sweep[-1]
    problems = []
    if rises:
        problems.append("accuracy rises with ε (" + "; ".join(
            f"{_pct(a[1])} at {a[0]:.4g} -> {_pct(b[1])} at {b[0]:.4g}" for a, b in rises) + ")")
    if last > limit:
        problems.append(f"{_pct(last)} of points survive ε={largest_eps:.4g}, which should break all")
    if problems:
        return SanityCheck("eps_sweep", title, FAILED,
                           f"PGD on {n} points: {values}; {' and '.join(problems)}: a sign of gradient masking.",
                           details)
    return SanityCheck("eps_sweep", title, PASSED,
                       f"PGD on {n} points: {values}; accuracy falls with ε and is ≤ {_pct(limit)} at the largest.",
                       details)


def check_square(stage_accuracy: Mapping[str, float] | None, stages_run: Sequence[str] | None) -> SanityCheck:
    """Square must not lower AutoAttack's robust accuracy after the white-box attacks by more than 0.2 %.

    Args:
        stage_accuracy: "clean", then each AutoAttack stage in order, mapped to the accuracy after it.
        stages_run: the stages that actually ran (Square is skipped when no robust point is left).
    """
    title = "Square (black-box) is no stronger than the white-box attacks"
    if not stage_accuracy:
        return SanityCheck("square", title, SKIPPED, "AutoAttack was not run.")
    stages = list(stage_accuracy)
    if "square" not in stages:
        return SanityCheck("square", title, SKIPPED, "this AutoAttack version has no Square stage.")
    if "square" not in (stages_run or ()):
        return SanityCheck("square", title, SKIPPED,
                           "Square did not run: the white-box attacks left no robust point.")
    before = stage_accuracy[stages[stages.index("square") - 1]]
    after = stage_accuracy["square"]
    drop = before - after
    details = {"before_square": before, "after_square": after, "drop": drop, "threshold": SQUARE_THRESHOLD}
    if drop > SQUARE_THRESHOLD:
        return SanityCheck("square", title, FAILED,
                           f"Square lowered robust accuracy from {_pct(before)} to {_pct(after)} after the white-box "
                           f"attacks (> {_pct(SQUARE_THRESHOLD)}): gradients are likely masked; try adaptive attacks.",
                           details)
    return SanityCheck("square", title, PASSED,
                       f"Square changed robust accuracy by {_pct(drop)} after the white-box attacks "
                       f"({_pct(before)} -> {_pct(after)}), within {_pct(SQUARE_THRESHOLD)}.", details)


_STAT_OF_NORM = {"Linf": ("max_linf", "||δ||∞"), "L2": ("max_l2", "||δ||₂"), "L1": ("max_l1", "||δ||₁")}


def check_perturbations(stats: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str],
                        eps: float, tolerance: float = 1e-6, *, norm: str | None = "Linf") -> SanityCheck:
    """Every attack's points lie in the ε-ball of `norm` and in [0, 1], and none is NaN.

    Args:
        stats: attack name -> {"max_linf", "max_l2", "max_l1", "min_value", "max_value", "nan_count",
            "n_attacked", and optionally the attack's own "eps"}.
        labels: attack name -> display label.
        eps: the ε of the evaluation (for attacks whose stats carry none).
        tolerance: floating-point slack on the bounds (relative for the L2 and L1 norms, which sum many terms).
        norm: "Linf", "L2" or "L1".
    """
    key, symbol = _STAT_OF_NORM[norm or "Linf"]
    title = "adversarial points lie in the ε-ball and in [0, 1], without NaN"
    checked = {name: s for name, s in stats.items() if s.get("n_attacked")}
    if not checked:
        return SanityCheck("perturbation_bounds", title, SKIPPED, "no point was attacked.")
    problems = []
    for name, s in checked.items():
        if s["nan_count"]:
            problems.append(f"{labels.get(name, name)} produced {s['nan_count']} NaN values")
        bound = s.get("eps", eps)
        slack = tolerance if key == "max_linf" else tolerance * max(1.0, bound) * 10
        if key not in s:
            problems.append(f"{labels.get(name, name)} did not record its {norm} distances")
        elif s[key] > bound + slack:
            problems.append(f"{labels.get(name, name)} moved a point by {symbol} = {s[key]:.6f} > ε = {bound:.6f}")
        if s["min_value"] < -tolerance or s["max_value"] > 1 + tolerance:
            problems.append(f"{labels.get(name, name)} left [0, 1] ({s['min_value']:.4f}..{s['max_value']:.4f})")
    largest = max(s.get(key, float("nan")) for s in checked.values())
    details = {"eps": eps, "norm": norm, key: {name: s.get(key) for name, s in checked.items()}}
    if problems:
        return SanityCheck("perturbation_bounds", title, FAILED, "; ".join(problems) + ".", details)
    return SanityCheck("perturbation_bounds", title, PASSED,
                       f"largest {symbol} {largest:.5f} ≤ ε = {eps:.5f}, all values in [0, 1], no NaN.", details)


def check_pgd_vs_margin(flags: Mapping[str, Any], labels: Mapping[str, str]) -> SanityCheck:
    """PGD (cross-entropy) breaks at least `PGD_MARGIN_SHARE` of the points the margin-loss attacks break.

    Args:
        flags: metric name -> (n,) bool per-point flags (True = still correct); "clean" and "pgd" are needed, and
            at least one of `MARGIN_ATTACKS`.
        labels: metric name -> display label.
    """
    title = "PGD breaks most of the points that the margin-loss attacks break (CE gradients do not vanish)"
    # the margin attacks of this evaluation (CW∞ or CW-L2, and AutoAttack), named as they were run
    margin = [name for name in MARGIN_ATTACKS if name in flags]
    if "pgd" not in flags or "clean" not in flags or not margin:
        return SanityCheck("pgd_vs_margin", title, SKIPPED,
                           "needs PGD and a margin-loss attack (CW∞, CW-L2 or AutoAttack) on the same points.")
    clean = flags["clean"].bool()
    broken_by_margin = clean.clone() & False
    for name in margin:
        broken_by_margin |= clean & ~flags[name].bool()
    broken_by_pgd = clean & ~flags["pgd"].bool()
    m = int(broken_by_margin.sum())
    k = int((broken_by_margin & broken_by_pgd).sum())
    names = " and ".join(labels.get(name, name) for name in margin)
    details = {"margin_attacks": margin, "broken_by_margin": m, "also_broken_by_pgd": k, "share": k / m if m else None,
               "threshold": PGD_MARGIN_SHARE, "min_points": PGD_MARGIN_MIN_POINTS}
    if m < PGD_MARGIN_MIN_POINTS:
        return SanityCheck("pgd_vs_margin", title, SKIPPED,
                           f"{names} broke {m} point(s), too few to compare with {labels.get('pgd', 'PGD')}.", details)
    pgd = labels.get("pgd", "PGD")
    if k < PGD_MARGIN_SHARE * m:
        return SanityCheck("pgd_vs_margin", title, FAILED,
                           f"{pgd} broke only {k} of the {m} points that {names} broke: cross-entropy gradients "
                           "vanish or mislead (a saturated softmax, a non-differentiable input step), a sign of "
                           "gradient masking; trust the margin and black-box attacks, not PGD.", details)
    return SanityCheck("pgd_vs_margin", title, PASSED,
                       f"{pgd} broke {k} of the {m} points that {names} broke ({_pct(k / m)}, at least "
                       f"{_pct(PGD_MARGIN_SHARE)}).", details)
