"""`dsnet reproduce GRID --status`: every cell of a grid with its state, read from its files and its recorded job.

    done         its evaluation report exists
    running      its job runs                       (from the job recorded in <cell>/job.json)
    pending      its job waits in the queue (or for its parent's job)
    unknown      the scheduler does not list its job (yet); it is not submitted again
    failed       its last job failed, was cancelled or timed out; the next submission replaces it
    trained      training finished, the evaluation has not run
    partial      a train/last.pt exists and no job runs: the next run resumes it
    not started  nothing yet (a derived cell also waits for its parent)

Nothing is written and no data is needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dsnet.errors import DsnetError
from dsnet.experiments.cell_eval import read_cell_report
from dsnet.experiments.cluster import job_states, read_job_record
from dsnet.experiments.layout import RUNS, eval_dir, run_dir
from dsnet.training.metrics import read_metrics

if TYPE_CHECKING:
    from dsnet.experiments.runner import CellPlan

__all__ = ["STATES", "CellStatus", "cell_statuses", "render_status"]

STATES = ("done", "running", "pending", "unknown", "failed", "trained", "partial", "not started")

_FROM_FILES = {"done": "done", "evaluate": "trained", "resume": "partial", "train": "not started",
               "waiting": "not started"}


@dataclass(frozen=True)
class CellStatus:
    """One row of the status table."""

    run_id: str
    state: str
    job: str = "-"
    detail: str = ""


def cell_statuses(plans: Sequence[CellPlan], out_dir: str | Path) -> list[CellStatus]:
    """The state of every planned cell (from `plan_cells`), in plan order."""
    records = {p.cell.run_id: r for p in plans if (r := read_job_record(p.path)) is not None}
    jobs = job_states({k: r for k, r in records.items() if k in {p.cell.run_id for p in plans if p.state != "done"}})
    rows = []
    for plan in plans:
        run_id = plan.cell.run_id
        record, job = records.get(run_id), jobs.get(run_id)
        state = _FROM_FILES[plan.state]
        notes = [_file_detail(plan, out_dir)]
        if job is not None and state != "done" and job.state != "finished":
            state = job.state
            notes.insert(0, job.detail)
        rows.append(CellStatus(run_id, state, record.job_id if record else "-", "; ".join(n for n in notes if n)))
    return rows


def _file_detail(plan: CellPlan, out_dir: str | Path) -> str:
    cell = plan.cell
    if plan.state == "done":
        try:
            accuracies = read_cell_report(eval_dir(out_dir, cell))
        except (DsnetError, ValueError, TypeError):  # a report another version wrote: the state is what matters
            return ""
        return ", ".join(f"{name} {100 * value:.2f}" for name, value in accuracies.items())
    if plan.state == "evaluate":
        return "evaluation pending"
    if plan.state == "resume":
        rows = read_metrics(run_dir(out_dir, cell))
        epoch = int(rows[-1].get("epoch", 0)) if rows else 0
        return f"epoch {epoch}/{cell.recipe.get('train', {}).get('epochs', '?')}"
    if plan.state == "waiting":
        return f"after {cell.parent_id}"
    return ""


def render_status(grid: str, statuses: Sequence[CellStatus], out_dir: str | Path) -> str:
    """The table: state, job id, run id and detail per cell, then the count of each state."""
    header = ("state", "job", "cell", "detail")
    table = [header, *((s.state, s.job, s.run_id, s.detail) for s in statuses)]
    widths = [max(len(row[i]) for row in table) for i in range(3)]
    lines = [f"{grid}: {len(statuses)} cells under {Path(out_dir) / RUNS}"]
    lines += ["  ".join(value.ljust(width) for value, width in zip(row[:3], widths)) + "  " + row[3]
              for row in table]
    counts = Counter(s.state for s in statuses)
    lines.append(f"{len(statuses)} cells: " + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s]))
    return "\n".join(line.rstrip() for line in lines)
