"""Where `dsnet reproduce` keeps everything under its `--out-dir`, and what state a cell is in.

    runs/<dataset>-<style>-<variant>-seed<seed>/   one training run, shared by every grid that needs it
        cell.json        what the worker needs: recipe, evaluation spec, derivation
        recipe.yaml      the resolved recipe (`dsnet train --config` reads it the same way)
        train/           the `dsnet train` run folder (config.yaml, metrics.jsonl, last.pt, selected.pt)
        eval/<tag>/report.json   one evaluation of train/selected.pt (the tag names attacks, n and a hash)
        eval/<tag>/autoattack/report.json   AutoAttack on the paper's 12.5 % subset, when the spec asks for it
        worker.log       output of the worker process (parallel runs only)
        job.json         the cluster job last submitted for the cell (`--launcher slurm` only)
    slurm/               submitit's job folder: <job id>_submission.sh, <job id>_0_log.out/.err, result pickles
    tables/<grid>.md, <grid>.csv (and <grid>.png for figures)

This module is the only one that spells these names; the runner, the aggregation and the status report all
ask it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from dsnet.runtime.run_folder import FolderKind, RunFolder, TrainingRun

if TYPE_CHECKING:
    from dsnet.experiments.grids import Cell

__all__ = [
    "RUNS", "TABLES", "CELL_FILE", "RECIPE_FILE", "TRAIN_DIR", "REPORT_NAME", "AUTOATTACK_DIR", "WORKER_LOG",
    "JOB_FILE", "JOBS_DIR", "REPRODUCE_WRITER", "CELL_FOLDER", "cell_folder", "cell_dir", "jobs_dir", "run_dir", "eval_dir", "tables_dir",
    "training_finished", "cell_state", "CELL_STATES",
]

RUNS = "runs"
TABLES = "tables"
CELL_FILE = "cell.json"
RECIPE_FILE = "recipe.yaml"
TRAIN_DIR = "train"
REPORT_NAME = "report.json"
AUTOATTACK_DIR = "autoattack"
WORKER_LOG = "worker.log"
JOB_FILE = "job.json"
JOBS_DIR = "slurm"
REPRODUCE_WRITER = "dsnet reproduce"
"""The writer of a reproduce folder's own files (cell.json, recipe.yaml, job.json, tables/) in their manifests."""

CELL_FOLDER = FolderKind(REPRODUCE_WRITER, "reproduce cell", (CELL_FILE, RECIPE_FILE, JOB_FILE, WORKER_LOG),
                         busy_hint="wait for it to finish, or reproduce into another --out-dir",
                         taken_hint="reproduce into another --out-dir")
"""A cell's own folder; its `train/` is a `TrainingRun`, its `eval/<tag>/` an evaluation's folder."""

CELL_STATES = ("done", "evaluate", "resume", "train", "waiting")
"""A cell is done (evaluated), trained and waiting to be evaluated, resumable (it has a last.pt), to be trained,
or waiting for the run it is derived from."""


def cell_dir(out_dir: str | Path, cell: Cell | str) -> Path:
    """`<out>/runs/<run_id>` of a cell (or of a run id)."""
    return Path(out_dir) / RUNS / (cell if isinstance(cell, str) else cell.run_id)


def cell_folder(path: str | Path, *, is_main: bool = True) -> RunFolder:
    """The `RunFolder` of a cell (its lock, while the cell is trained and evaluated)."""
    return RunFolder(path, CELL_FOLDER, is_main=is_main)


def run_dir(out_dir: str | Path, cell: Cell | str) -> Path:
    """`<out>/runs/<run_id>/train`, the cell's `dsnet train` run folder."""
    return cell_dir(out_dir, cell) / TRAIN_DIR


def eval_dir(out_dir: str | Path, cell: Cell) -> Path:
    """`<out>/runs/<run_id>/eval/<tag>`."""
    return cell_dir(out_dir, cell) / "eval" / cell.eval.tag


def jobs_dir(out_dir: str | Path) -> Path:
    """`<out>/slurm`, the folder of submitit's job scripts, logs and results."""
    return Path(out_dir) / JOBS_DIR


def tables_dir(out_dir: str | Path) -> Path:
    """`<out>/tables`."""
    return Path(out_dir) / TABLES


def training_finished(folder: Path, epochs: int) -> bool:
    """Whether the `dsnet train` run in `folder` has selected a checkpoint and logged its last epoch."""
    return TrainingRun(folder).finished(epochs)


def _recipe_epochs(out_dir: str | Path, run_id: str) -> int | None:
    recipe = cell_dir(out_dir, run_id) / RECIPE_FILE
    if not recipe.is_file():
        return None
    return int((yaml.safe_load(recipe.read_text()) or {}).get("train", {}).get("epochs", 0))


def cell_state(out_dir: str | Path, cell: Cell) -> str:
    """One of `CELL_STATES`, read from the files under `out_dir`."""
    if (eval_dir(out_dir, cell) / REPORT_NAME).is_file():
        return "done"
    train = run_dir(out_dir, cell)
    if training_finished(train, int(cell.recipe.get("train", {}).get("epochs", 0))):
        return "evaluate"
    if TrainingRun(train).has_checkpoint:
        return "resume"
    if cell.parent_id is not None:
        epochs = _recipe_epochs(out_dir, cell.parent_id)
        if epochs is None or not training_finished(run_dir(out_dir, cell.parent_id), epochs):
            return "waiting"
    return "train"
