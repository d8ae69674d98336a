"""`dsnet compare`: several evaluations side by side, only where their numbers mean the same thing.

A column of a comparison is one metric. Two numbers belong in one column only when they were measured under the same
threat model, at the same ε, on the same points (the digest of the evaluated images and labels, which `dsnet eval`
records): otherwise the comparison is refused, naming what differs, because a table is read across rows. The
result is a Markdown table (printed, and `compare.md`), a LaTeX table in the style of RobustBench's
`get_leaderboard_latex` (`compare.tex`), and one PNG with the security curves of the reports that have one
(`compare_curves.png`, from `dsnet eval --curve eps`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsnet.errors import ConfigError

__all__ = ["Comparison", "compare_reports", "read_report", "COMPARE_FILES"]

COMPARE_FILES = ("compare.md", "compare.tex", "compare_curves.png")
COMPARE_WRITER = "dsnet compare"

_ORDER = ("clean", "fgsm", "fgsm_textbook", "pgd", "cw_inf", "cw_l2", "apgd", "fmn", "autoattack", "worst_case")
_HEADERS = {"clean": "Clean", "worst_case": "Worst case", "autoattack": "AutoAttack"}


def read_report(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The `report.json` at `path` (the file, or the evaluation folder that holds it).

    Raises:
        ConfigError: no report there, or not one of `dsnet eval`.
    """
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path} holds no report.json; pass the folder `dsnet eval` wrote, or its report.json")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read {file} ({error}); pass a report.json of `dsnet eval`") from None
    if not isinstance(report, dict) or not str(report.get("format", "")).startswith("dsnet-eval-report"):
        raise ConfigError(f"{file} is not a report of `dsnet eval`")
    return file, report


def _same_measurement(reports: list[tuple[Path, dict[str, Any]]]) -> None:
    """Refuses reports of different threat models, ε or points, naming each difference."""
    def signature(report: dict[str, Any]) -> dict[str, Any]:
        threat = report.get("threat_model") or {}
        return {"threat model": threat.get("name"), "ε": threat.get("eps"), "dataset": report.get("dataset"),
                "split": report.get("split"), "n": report.get("n"),
                "points": (report.get("data") or {}).get("sha256")}

    first_path, first = reports[0]
    reference = signature(first)
    for path, report in reports[1:]:
        mine = signature(report)
        different = [f"{key} {mine[key]!r} (vs {reference[key]!r})" if key != "points" else
                     "other evaluated images or labels" for key in reference
                     if not _equal(mine[key], reference[key])]
        if different:
            raise ConfigError(f"{path} was measured otherwise than {first_path}: {'; '.join(different)}; a column "
                              "holds numbers of one threat model, ε and set of points only (evaluate both on the same "
                              "points, e.g. with the same --n-examples or --subset)")


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@dataclass
class Comparison:
    """What `compare_reports` wrote and returns.

    Attributes:
        markdown: the Markdown table.
        latex: the LaTeX table.
        files: the files written.
        curves: how many security curves the PNG shows.
    """

    markdown: str
    latex: str
    files: list[Path]
    curves: int


def _labels(reports: list[tuple[Path, dict[str, Any]]], given: list[str] | None) -> list[str]:
    if given is not None:
        if len(given) != len(reports):
            raise ConfigError(f"--labels names {len(given)} evaluations but {len(reports)} were given")
        return list(given)
    names = [report["model"]["name"] for _, report in reports]
    return [name if names.count(name) == 1 else f"{name} ({path.parent.name})"
            for name, (path, report) in zip(names, reports)]


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                          ("ε", r"$\epsilon$"), ("∞", r"$\infty$")):
        text = text.replace(char, escaped)
    return text


def compare_reports(paths: list[str | Path], out_dir: str | Path = "compare", labels: list[str] | None = None
                    ) -> Comparison:
    """Puts the evaluations at `paths` side by side (see the module docstring).

    Args:
        paths: `dsnet eval` folders or their `report.json` files, at least two.
        out_dir: where `compare.md`, `compare.tex` and `compare_curves.png` go (created).
        labels: a row name per evaluation (default: the model's name, with its folder where names repeat).

    Raises:
        ConfigError: fewer than two reports, an unreadable one, or reports of different threat models, ε or points.
        OverwriteError: a file of the output folder that `dsnet compare` did not write.
    """
    from dsnet.runtime.files import ensure_writable_folder, write_text_atomic
    from dsnet.runtime.ownership import FolderFiles

    if len(paths) < 2:
        raise ConfigError("dsnet compare needs at least two evaluations")
    reports = [read_report(path) for path in paths]
    _same_measurement(reports)
    names = _labels(reports, labels)
    present = {metric for _, report in reports for metric in (report.get("accuracy") or {})}
    metrics = [m for m in _ORDER if m in present] + sorted(present - set(_ORDER))
    label_of = {}
    for _, report in reports:
        for name, attack in (report.get("attacks") or {}).items():
            label_of.setdefault(name, attack.get("label", name))
    header = ["Model", "Params (M)"] + [_HEADERS.get(m, label_of.get(m, m)) for m in metrics] + ["Failed checks"]
    rows = []
    for name, (_, report) in zip(names, reports):
        accuracy = report.get("accuracy") or {}
        failed = sum(1 for check in report.get("sanity_checks") or [] if check.get("status") == "failed")
        params = (report.get("model") or {}).get("parameters")
        rows.append([name, f"{params / 1e6:.2f}" if params else "–"]
                    + [f"{100 * accuracy[m]:.2f}" if m in accuracy else "–" for m in metrics] + [str(failed)])
    first = reports[0][1]
    threat = first.get("threat_model") or {}
    caption = (f"{first.get('dataset')} ({first.get('split')}), {threat.get('name')} ε = {threat.get('eps'):.4g}, "
               f"the same {first.get('n')} points; accuracy in %")
    markdown = "\n".join([f"{caption}.", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1),
                          *("| " + " | ".join(row) + " |" for row in rows)]) + "\n"
    latex = "\n".join([
        r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}.}}",
        r"\begin{tabular}{l" + "c" * (len(header) - 1) + "}", r"\toprule",
        " & ".join(_latex_escape(h) for h in header) + r" \\", r"\midrule",
        *(" & ".join(_latex_escape(c) for c in row) + r" \\" for row in rows),
        r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"

    out = ensure_writable_folder(out_dir)
    files = FolderFiles(out)
    files.reserve(list(COMPARE_FILES), COMPARE_WRITER, hint="choose another --out-dir")
    written = [write_text_atomic(out / "compare.md", markdown), write_text_atomic(out / "compare.tex", latex)]
    curves = _plot(reports, names, out / "compare_curves.png")
    if curves:
        written.append(out / "compare_curves.png")
    else:  # an earlier comparison's curves must not stand beside this table
        (out / "compare_curves.png").unlink(missing_ok=True)
    return Comparison(markdown, latex, written, curves)


def _plot(reports: list[tuple[Path, dict[str, Any]]], names: list[str], path: Path) -> int:
    """The security curves of the reports that have one, overlaid; how many there were (0: no file)."""
    from dsnet.evaluation.curves import accuracy_figure, draw_security_curves, security_curve_of

    curves = [(name, curve) for name, (_, report) in zip(names, reports)
              if (curve := security_curve_of(report)) is not None]
    if curves:
        with accuracy_figure(path, f"ε ({curves[0][1].norm})") as axis:
            draw_security_curves(axis, curves)
    return len(curves)


def add_arguments(parser: Any) -> None:
    parser.add_argument("evaluations", nargs="+", metavar="DIR",
                        help="folders written by `dsnet eval` (or their report.json), at least two")
    parser.add_argument("--out-dir", default="compare", help="where compare.md, compare.tex and compare_curves.png "
                                                             "go (default: compare)")
    parser.add_argument("--labels", default=None, help="comma-separated row names, one per evaluation")


def run(args: Any) -> int:
    """Prints the Markdown table and lists the files written."""
    labels = [part.strip() for part in args.labels.split(",")] if args.labels else None
    result = compare_reports(args.evaluations, args.out_dir, labels)
    print(result.markdown)
    for path in result.files:
        print(path)
    if not result.curves:
        print("(no security curve in these reports: evaluate with --curve eps to overlay them)")
    return 0
