"""Aggregation: mean ± std over seeds per row, rendered as Markdown and CSV beside the paper's numbers.

Accuracies are shown in percent, as in the paper. The standard deviation is the population one (ddof = 0,
numpy's default) over the seeds that finished; the number of seeds is in every row. The paper's values come
from `dsnet/experiments/paper_results/<grid>.json` (transcribed from the paper; see each file's notes), and
Δ = ours − paper.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from dsnet.errors import DsnetError
from dsnet.experiments.cell_eval import read_cell_report
from dsnet.experiments.grids import GRIDS, METRIC_LABELS, METRICS, STYLES, Cell, count_gflops, count_params
from dsnet.experiments.layout import (
    RECIPE_FILE,
    REPORT_NAME,
    REPRODUCE_WRITER,
    cell_dir,
    eval_dir,
    run_dir,
    tables_dir,
)
from dsnet.runtime.ownership import write_owned
from dsnet.training.metrics import read_metrics

__all__ = [
    "RunRecord",
    "RowSummary",
    "mean_std",
    "load_paper",
    "collect",
    "summarise",
    "render_markdown",
    "csv_rows",
    "write_tables",
    "kendall_tau",
]

logger = logging.getLogger(__name__)

_HINT = "reproduce into another --out-dir"

_DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}
_METRIC_HEADERS = {"linf_to_normal": "L∞ distance of learned weights to the normal run (×100)"}


def mean_std(values: Sequence[float], ddof: int = 0) -> tuple[float, float]:
    """Mean and standard deviation of `values` (nan for none; std 0 for one value when ddof = 0).

    Raises:
        ValueError: ddof is negative.
    """
    if ddof < 0:
        raise ValueError(f"ddof must be >= 0, got {ddof}")
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n - ddof <= 0:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - ddof))


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's τ-a between two score lists (1: same order, −1: reversed); nan for fewer than two items."""
    n = len(a)
    if n != len(b):
        raise ValueError("kendall_tau needs two lists of the same length")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if not pairs:
        return math.nan
    score = sum((1 if (a[i] - a[j]) * (b[i] - b[j]) > 0 else -1 if (a[i] - a[j]) * (b[i] - b[j]) < 0 else 0)
                for i, j in pairs)
    return score / len(pairs)


@dataclass(frozen=True)
class RunRecord:
    """The evaluated accuracies (fractions) of one finished cell, and its attention weights when a DS-Net."""

    cell: Cell
    metrics: dict[str, float]
    attention: list[list[float]] | None = None


@dataclass
class RowSummary:
    """One row of a rendered table: a variant in one (dataset, style), summarised over seeds (percent)."""

    dataset: str
    style: str
    variant: str
    label: str
    panel: str
    seeds: list[int]
    values: dict[str, list[float]]
    params: int | None = None
    extra: dict[str, float] = field(default_factory=dict)
    gflops: float | None = None
    ddof: int = 0

    def stat(self, metric: str) -> tuple[float, float, int]:
        """(mean, std, number of seeds) of `metric` in percent; nan for a metric nobody measured."""
        values = self.values.get(metric, [])
        mean, std = mean_std(values, self.ddof)
        return mean, std, len(values)


def load_paper(grid: str) -> dict[str, Any]:
    """The paper's numbers for `grid` (rows keyed by dataset/style/variant); empty when none are stored."""
    try:
        text = resources.files("dsnet.experiments").joinpath("paper_results", f"{grid}.json").read_text()
    except (FileNotFoundError, OSError):
        return {"rows": [], "notes": []}
    return json.loads(text)


def _paper_rows(paper: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["dataset"], r["style"], r["variant"]): r for r in paper.get("rows", [])}


def _attention_of(folder: Path) -> list[list[float]] | None:
    """The softmaxed attention weights of the selected epoch, from metrics.jsonl."""
    rows = read_metrics(folder)
    chosen = [r for r in rows if r.get("selected")] or rows
    weights = chosen[-1].get("attention_weights") if chosen else None
    return weights if isinstance(weights, list) else None


def collect(cells: Sequence[Cell], out_dir: str | Path, exclude: Collection[str] = ()) -> list[RunRecord]:
    """Reads the evaluation report of every finished cell (unfinished ones, and the run ids in `exclude`, are left
    out)."""
    records = []
    for cell in cells:
        report = eval_dir(out_dir, cell) / REPORT_NAME
        if not report.is_file() or cell.run_id in exclude:
            continue
        try:
            metrics = read_cell_report(report.parent)
        except (DsnetError, KeyError) as error:
            logger.warning("skipping %s: %s", report, error)
            continue
        records.append(RunRecord(cell, metrics, _attention_of(run_dir(out_dir, cell))))
    return records


def _profile_of(cell: Cell, out_dir: Path, flops: bool) -> tuple[int | None, float | None]:
    """(parameters, GFLOPs or None) of the model the cell trained (its stored recipe, else the grid's)."""
    recipe_file = cell_dir(out_dir, cell) / RECIPE_FILE
    model = cell.recipe["model"]
    if recipe_file.is_file():
        import yaml

        model = (yaml.safe_load(recipe_file.read_text()) or {}).get("model", model)
    kwargs = dict(model.get("kwargs") or {})
    try:
        return count_params(model["name"], kwargs), count_gflops(model["name"], kwargs) if flops else None
    except Exception as error:  # a count is a courtesy; never fail a table over it
        logger.debug("no parameter count for %s: %s", cell.run_id, error)
        return None, None


def summarise(records: Sequence[RunRecord], cells: Sequence[Cell], out_dir: str | Path,
              ddof: int = 0) -> list[RowSummary]:
    """Groups records by (dataset, style, variant) in grid order; values become percentages."""
    out_dir = Path(out_dir)
    rows: dict[tuple[str, str, str], RowSummary] = {}
    for cell in cells:  # grid order, so rows appear as in the paper even before every cell finished
        key = (cell.dataset, cell.style, cell.variant.name)
        if key not in rows:
            spec = GRIDS.get(cell.grid) if cell.grid in GRIDS else None
            params, gflops = _profile_of(cell, out_dir, flops=bool(spec and spec.flops))
            rows[key] = RowSummary(cell.dataset, cell.style, cell.variant.name, cell.variant.display,
                                   cell.variant.panel, [], {}, params, ddof=ddof, gflops=gflops)
    for record in records:
        cell = record.cell
        row = rows[(cell.dataset, cell.style, cell.variant.name)]
        row.seeds.append(cell.seed)
        for metric, value in record.metrics.items():
            row.values.setdefault(metric, []).append(100.0 * value)
    _add_attention_distance(records, rows)
    return list(rows.values())


def _add_attention_distance(records: Sequence[RunRecord], rows: dict[tuple[str, str, str], RowSummary]) -> None:
    """Figure 5: L∞ distance of each run's learned weights to the normal-initialised run of the same seed."""
    reference = {(r.cell.dataset, r.cell.style, r.cell.seed): r.attention for r in records
                 if r.cell.variant.name == "dsnet4-init-normal" and r.attention}
    if not reference:
        return
    for record in records:
        ref = reference.get((record.cell.dataset, record.cell.style, record.cell.seed))
        if ref is None or not record.attention or len(ref) != len(record.attention):
            continue
        distance = max(abs(a - b) for row_a, row_b in zip(record.attention, ref) for a, b in zip(row_a, row_b))
        row = rows[(record.cell.dataset, record.cell.style, record.cell.variant.name)]
        row.values.setdefault("linf_to_normal", []).append(100.0 * distance)


# ------------------------------------------------------------------------------------------------ render

def _fmt(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "–"
    if n == 1 or math.isnan(std):
        return f"{mean:.2f}"
    return f"{mean:.2f} ± {std:.2f}"


def _num(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _metrics_for(rows: Sequence[RowSummary], paper: dict[str, Any]) -> list[str]:
    present = {m for r in rows for m in r.values}
    present |= {m for r in paper.get("rows", []) for m in r.get("mean", {})} & present
    order = list(METRICS) + ["linf_to_normal"]
    return [m for m in order if m in present]


def _paper_value(paper_row: dict[str, Any] | None, metric: str) -> tuple[float | None, float | None]:
    if not paper_row:
        return None, None
    return paper_row.get("mean", {}).get(metric), paper_row.get("std", {}).get(metric)


def _improvement(rows: Sequence[RowSummary], metric: str) -> float | None:
    """(best DS-Net − best baseline) / best baseline in percent, as the paper's Improv.(%) row."""
    ours = [r.stat(metric)[0] for r in rows if r.variant.startswith("dsnet") and r.stat(metric)[2]]
    base = [r.stat(metric)[0] for r in rows if not r.variant.startswith("dsnet") and r.stat(metric)[2]]
    if not ours or not base or max(base) == 0:
        return None
    return 100.0 * (max(ours) - max(base)) / max(base)


def render_markdown(grid: str, rows: Sequence[RowSummary], paper: dict[str, Any], *, scale: str = "",
                    n_runs: int = 0, n_cells: int = 0, ddof: int = 0, settings: str = "") -> str:
    """The grid's table(s) in Markdown: one section per (dataset, style), ours beside the paper's."""
    spec = GRIDS.get(grid)
    title = spec.title if spec else grid
    paper_rows = _paper_rows(paper)
    lines = [f"# {title}", ""]
    lines.append(f"Ours: mean ± std over seeds (std with ddof={ddof}), accuracy in %; {n_runs} of {n_cells} runs "
                 f"finished" + (f"; scale `{scale}`" if scale else "") + ". Paper: the published value; "
                 "Δ = ours − paper.")
    lines.append("")
    if settings:
        lines += [settings, ""]
    if grid == "table1":
        lines += _render_table1(rows, paper_rows)
    else:
        sections: dict[tuple[str, str, str], list[RowSummary]] = {}
        for row in rows:
            sections.setdefault((row.panel, row.dataset, row.style), []).append(row)
        for (panel, dataset, style), members in sections.items():
            lines += _render_section(grid, panel, dataset, style, members, paper, paper_rows)
    notes = paper.get("notes") or []
    if notes:
        lines += ["Notes on the paper's numbers:", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _render_section(grid: str, panel: str, dataset: str, style: str, rows: Sequence[RowSummary],
                    paper: dict[str, Any], paper_rows: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    heading = f"## {_DATASET_LABELS.get(dataset, dataset)}, {STYLES[style].label}"
    if panel:
        heading += f" (panel {panel})"
    metrics = _metrics_for(rows, {"rows": [p for k, p in paper_rows.items() if k[:2] == (dataset, style)]})
    with_paper_params = any((paper_rows.get((r.dataset, r.style, r.variant)) or {}).get("params_m") for r in rows)
    with_flops = any(r.gflops is not None for r in rows)
    header = ["Model", "Seeds", "Params (M)"] + (["Paper params (M)"] if with_paper_params else []) + (
        ["GFLOPs"] if with_flops else [])
    for metric in metrics:
        header += [_METRIC_HEADERS.get(metric, METRIC_LABELS.get(metric, metric)), "Paper", "Δ"]
    out = [heading, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        prow = paper_rows.get((row.dataset, row.style, row.variant))
        cells = [row.label, str(len(row.seeds)), _num(row.params / 1e6 if row.params else None, 3)]
        if with_paper_params:
            cells.append(_num(prow.get("params_m") if prow else None))
        if with_flops:
            cells.append(_num(row.gflops))
        for metric in metrics:
            mean, std, n = row.stat(metric)
            p_mean, p_std = _paper_value(prow, metric)
            cells += [_fmt(mean, std, n),
                      "–" if p_mean is None else (_fmt(p_mean, p_std, 2) if p_std is not None else f"{p_mean:.2f}"),
                      _num(mean - p_mean if (p_mean is not None and n) else None, signed=True)]
        out.append("| " + " | ".join(cells) + " |")
    improvement = paper.get("improvement_percent", {}).get(f"{dataset}/{style}")
    if grid in ("table2", "table3", "trades") and any(r.variant.startswith("dsnet") for r in rows):
        cells = ["Improv. (%)", "", ""] + ([""] if with_paper_params else []) + ([""] if with_flops else [])
        for metric in metrics:
            ours = _improvement(rows, metric)
            theirs = (improvement or {}).get(metric)
            cells += [_num(ours, signed=True), _num(theirs), _num(ours - theirs if ours is not None and theirs
                                                                   is not None else None, signed=True)]
        out.append("| " + " | ".join(cells) + " |")
    if grid == "fig6":
        out += _fig6_summary(rows, metrics)
    out.append("")
    return out


def _fig6_summary(rows: Sequence[RowSummary], metrics: Sequence[str]) -> list[str]:
    """Averages over the block combinations of each size, as the paper reports them."""
    out = ["", "| Block space | Runs | " + " | ".join(METRIC_LABELS.get(m, m) for m in metrics) + " |",
           "|" + "---|" * (len(metrics) + 2)]
    for size in (4, 3, 2):
        members = [r for r in rows if (r.variant.count("+") + 1 if "-blocks-" in r.variant else 4) == size]
        cells = [f"{size} blocks", str(sum(len(r.seeds) for r in members))]
        for metric in metrics:
            values = [v for r in members for v in r.values.get(metric, [])]
            mean, std = mean_std(values, rows[0].ddof if rows else 0)
            cells.append(_fmt(mean, std, len(values)))
        out.append("| " + " | ".join(cells) + " |")
    return out


def _rank(values: dict[str, float]) -> dict[str, int]:
    order = sorted(values, key=lambda k: -values[k])
    return {k: i + 1 for i, k in enumerate(order)}


def _render_table1(rows: Sequence[RowSummary], paper_rows: dict[tuple[str, str, str], dict[str, Any]]) -> list[str]:
    st = {r.variant: r for r in rows if r.style == "standard"}
    at = {r.variant: r for r in rows if r.style == "at"}
    names = list(dict.fromkeys(list(st) + list(at)))
    ours_st = {n: st[n].stat("natural")[0] for n in names if n in st and st[n].stat("natural")[2]}
    ours_at = {n: at[n].stat("pgd")[0] for n in names if n in at and at[n].stat("pgd")[2]}
    rank_st, rank_at = _rank(ours_st), _rank(ours_at)
    header = ["Model", "ST natural", "Paper", "Δ", "Rank", "Paper rank", "AT PGD", "Paper", "Δ", "Rank", "Paper rank"]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        label = (st.get(name) or at[name]).label
        cells = [label]
        for style, table, metric, ranks in (("standard", st, "natural", rank_st), ("at", at, "pgd", rank_at)):
            row = table.get(name)
            mean, std, n = row.stat(metric) if row else (math.nan, math.nan, 0)
            prow = paper_rows.get(("cifar10", style, name)) or {}
            p_mean = prow.get("mean", {}).get(metric)
            cells += [_fmt(mean, std, n), _num(p_mean), _num(mean - p_mean if p_mean is not None and n else None,
                                                             signed=True),
                      str(ranks.get(name, "–")), str(prow.get("rank", {}).get(metric, "–"))]
        out.append("| " + " | ".join(cells) + " |")
    both = [n for n in names if n in ours_st and n in ours_at]
    tau = kendall_tau([ours_st[n] for n in both], [ours_at[n] for n in both]) if len(both) > 1 else math.nan
    paper_names = [n for n in names if ("cifar10", "standard", n) in paper_rows and ("cifar10", "at", n) in paper_rows]
    paper_tau = kendall_tau([paper_rows[("cifar10", "standard", n)]["mean"]["natural"] for n in paper_names],
                            [paper_rows[("cifar10", "at", n)]["mean"]["pgd"] for n in paper_names])
    out += ["", f"Kendall's τ between the ST-accuracy and AT-robustness rankings: ours {_num(tau)}, "
                f"paper {_num(paper_tau)} (1 would mean the same order).", ""]
    return out


def csv_rows(grid: str, rows: Sequence[RowSummary], paper: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Long-format CSV: one line per (row, metric) with ours, the paper's and the difference, in percent."""
    paper_rows = _paper_rows(paper)
    header = ["grid", "dataset", "style", "variant", "label", "metric", "n_seeds", "seeds", "mean", "std",
              "paper_mean", "paper_std", "diff", "values", "params"]
    out = []
    metrics = list(METRICS) + ["linf_to_normal"]
    for row in rows:
        prow = paper_rows.get((row.dataset, row.style, row.variant))
        for metric in metrics:
            mean, std, n = row.stat(metric)
            p_mean, p_std = _paper_value(prow, metric)
            if n == 0 and p_mean is None:
                continue
            out.append([grid, row.dataset, row.style, row.variant, row.label, metric, n,
                        " ".join(map(str, row.seeds)) if n else "", _csv_num(mean), _csv_num(std),
                        _csv_num(p_mean), _csv_num(p_std),
                        _csv_num(mean - p_mean if p_mean is not None and n else None),
                        " ".join(f"{v:.4f}" for v in row.values.get(metric, [])), row.params or ""])
    return header, out


def _csv_num(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}"


def _plot_figure(grid: str, rows: Sequence[RowSummary], path: Path) -> Path | None:
    """A bar chart of PGD (and natural) accuracy per row with std error bars, for the figure grids."""
    from dsnet.analysis.common import new_figure, save_figure

    shown = [r for r in rows if r.stat("pgd")[2]]
    if not shown:
        return None
    groups: dict[tuple[str, str, str], list[RowSummary]] = {}
    for row in shown:
        groups.setdefault((row.panel, row.dataset, row.style), []).append(row)
    figure = new_figure(max(5.0, 3.2 * len(groups)), 3.8)
    axes = figure.subplots(1, len(groups), squeeze=False)[0]
    for ax, ((panel, dataset, style), members) in zip(axes, groups.items()):
        means = [m.stat("pgd")[0] for m in members]
        stds = [0.0 if math.isnan(m.stat("pgd")[1]) else m.stat("pgd")[1] for m in members]
        ax.bar(range(len(members)), means, yerr=stds, capsize=3, color="tab:blue")
        ax.set_xticks(range(len(members)))
        ax.set_xticklabels([m.label for m in members], rotation=35, ha="right", fontsize=7)
        ax.set_ylabel("PGD accuracy (%)")
        low = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0.0, low - 5.0), max(m + s for m, s in zip(means, stds)) + 2.0)
        ax.set_title(f"{_DATASET_LABELS.get(dataset, dataset)} {STYLES[style].label}" + (f" ({panel})" if panel
                                                                                       else ""), fontsize=9)
    figure.suptitle(GRIDS[grid].title if grid in GRIDS else grid, fontsize=9)
    return save_figure(figure, path, writer=REPRODUCE_WRITER)


def _settings_line(cells: Sequence[Cell]) -> str:
    """One sentence on how the runs were trained and evaluated (taken from the first cell)."""
    if not cells:
        return ""
    recipe, spec = cells[0].recipe, cells[0].eval
    train, data, objective = recipe.get("train", {}), recipe.get("data", {}), recipe.get("objective", {})
    subset = data.get("train_subset")
    text = (f"Training: {train.get('epochs')} epochs, batch {train.get('batch_size')}, "
            + (f"{subset} training images, " if subset else "")
            + f"attack steps {objective.get('steps', '–')}, selection {train.get('selection', 'recipe')}. ")
    overrides = "; ".join(f"{name}: {', '.join(f'{k}={v}' for k, v in settings.items())}"
                          for name, settings in spec.attack_overrides.items())
    text += (f"Evaluation: preset {spec.preset}, {spec.n_examples or 'all'} test points"
             + (f", AutoAttack on {100 * spec.autoattack_fraction:g} % of the test set" if spec.autoattack_fraction
                else "") + (f", changed from the preset: {overrides}" if overrides else "") + ".")
    return text


def write_tables(grid: str, cells: Sequence[Cell], out_dir: str | Path, ddof: int = 0,
                 scale: str = "", exclude: Collection[str] = ()) -> tuple[list[Path], str]:
    """Collects, summarises and writes `tables/<grid>.md` and `.csv` (and `.png` for figures).

    Args:
        exclude: run ids whose reports must not be counted (a finished cell that failed its re-check).

    Returns:
        (paths written, the Markdown text).
    """
    from dsnet.analysis.common import write_csv

    out_dir = Path(out_dir)
    records = collect(cells, out_dir, exclude)
    rows = summarise(records, cells, out_dir, ddof)
    paper = load_paper(grid)
    markdown = render_markdown(grid, rows, paper, scale=scale, n_runs=len(records), n_cells=len(cells), ddof=ddof,
                               settings=_settings_line(cells))
    folder = tables_dir(out_dir)
    text = markdown.encode("utf-8")
    md = write_owned(folder / f"{grid}.md", lambda handle: handle.write(text), REPRODUCE_WRITER, hint=_HINT)
    header, lines = csv_rows(grid, rows, paper)
    paths = [md, write_csv(folder / f"{grid}.csv", header, lines, writer=REPRODUCE_WRITER)]
    if grid.startswith("fig"):
        png = _plot_figure(grid, rows, folder / f"{grid}.png")
        if png is not None:
            paths.append(png)
    logger.info("wrote %s", ", ".join(str(p) for p in paths))
    return paths, markdown
