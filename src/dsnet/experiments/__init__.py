"""dsnet.experiments: the paper's tables and figures as grids of runs (`dsnet reproduce`).

`reproduce(grid, out_dir=..., data_dir=..., scale="paper" | "mini", seeds=..., devices=...)` trains and evaluates
every cell of a grid (models x training styles x seeds), skips finished cells, resumes unfinished ones, and
writes `tables/<grid>.md` and `.csv`: mean ± std over seeds beside the paper's numbers (kept as JSON data in
`dsnet/experiments/paper_results/`). `build_grid` lists the cells without running anything. `submit_grid` submits
the unfinished cells as SLURM jobs instead (`cluster`, through submitit), and `cell_statuses` says where every cell
stands (`status`).
"""

from __future__ import annotations

from dsnet.lazy import lazy_exports

_EXPORTS = {
    "reproduce": "runner",
    "ReproduceResult": "runner",
    "run_cell": "runner",
    "plan_cells": "runner",
    "build_grid": "grids",
    "GRIDS": "grids",
    "SCALES": "grids",
    "Scale": "grids",
    "Cell": "grids",
    "EvalSpec": "grids",
    "write_tables": "aggregate",
    "load_paper": "aggregate",
    "mean_std": "aggregate",
    "evaluate_cell": "cell_eval",
    "submit_grid": "cluster",
    "ClusterOptions": "cluster",
    "cell_statuses": "status",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
