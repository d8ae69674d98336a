"""`dsnet reproduce`: run the cells of a paper grid, skipping what is done and resuming what is not.

The folders under `--out-dir` are those of `dsnet.experiments.layout`.

A cell is finished when its evaluation report exists. Before its numbers go into a table, a finished cell is
opened again through `dsnet.evaluation.evaluate` on the CPU: every result is reused from its state file, so nothing
is computed, but the evaluation's content key is checked (the weights of `train/selected.pt`, the model's code,
the digest of the test points as they are read now), and a cell whose report no longer matches is reported as
failed and left out of the table instead of being counted. A cell whose `train/last.pt` exists is resumed
(`train(..., resume=True)`, which returns at once when training had finished). Cells derived from another run
(Table 4's pruned models, Figure 5's learned initialisation) run after their parent.

On a CPU, or on one GPU without `--devices`, cells run one after another in this process. With
`--devices 0,1,...` each cell runs in its own worker process (`python -m dsnet.experiments.runner CELL_DIR
--data-dir DIR`) with `CUDA_VISIBLE_DEVICES` set to one device, one worker per device at a time. With
`--launcher slurm` each cell is a cluster job instead (`dsnet.experiments.cluster`), which runs `run_cell` as the
worker does.

Under torchrun (or a multi-task cluster job that sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT)
every rank runs the worker for the same cell: rank 0 takes the cell's lock and writes its recipe, then all ranks
train and evaluate it together, as `dsnet train` and `dsnet eval` do under torchrun.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dsnet.config import RESULT_NEUTRAL_KEYS, config_from_dict
from dsnet.errors import ConfigError, DsnetError
from dsnet.experiments.cell_eval import evaluate_cell
from dsnet.experiments.grids import Cell, EvalSpec, Scale, build_grid, with_scale
from dsnet.experiments.layout import (
    CELL_FILE,
    RECIPE_FILE,
    REPORT_NAME,
    REPRODUCE_WRITER,
    TRAIN_DIR,
    WORKER_LOG,
    cell_dir,
    cell_folder,
    cell_state,
    run_dir,
)
from dsnet.runtime.ownership import write_owned
from dsnet.runtime.run_folder import TrainingRun
from dsnet.runtime.records import describe_differences, differences, plain
from dsnet.training.trainer import train

__all__ = [
    "CellPlan",
    "ReproduceResult",
    "reproduce",
    "plan_cells",
    "run_cell",
    "check_recipes",
    "worker_command",
    "worker_logging",
    "main",
]

logger = logging.getLogger(__name__)

_FOLDER_HINT = "reproduce into another --out-dir"



def worker_command(cell_path: Path, data_dir: str | Path) -> list[str]:
    """The command a worker process runs for one cell."""
    return [sys.executable, "-m", "dsnet.experiments.runner", str(cell_path), "--data-dir", str(data_dir)]


@dataclass(frozen=True)
class CellPlan:
    """A cell, its folder and what a run would do with it."""

    cell: Cell
    path: Path
    state: str

    def describe(self, data_dir: str | Path) -> str:
        """One line on the run (state, model, objective, epochs, evaluation, recipe) and the worker command."""
        recipe = self.cell.recipe
        model = recipe["model"]
        kwargs = model.get("kwargs") or {}
        short = {k: v for k, v in kwargs.items() if not isinstance(v, (list, dict)) or len(str(v)) < 40}
        objective = recipe.get("objective", {})
        obj = objective.get("name", "?") + "".join(
            f" {k}={objective[k]}" for k in ("beta", "steps") if k in objective)
        derived = f", derived from {self.cell.parent_id} ({self.cell.derive})" if self.cell.derive else ""
        spec = self.cell.eval
        attacks = "+".join(spec.attacks) or "clean only"
        subset = f" (AutoAttack on {100 * spec.autoattack_fraction:g} %)" if spec.autoattack_fraction else ""
        line = (f"[{self.state:>8}] {self.cell.run_id}: {model['name']} {json.dumps(short)} {obj}, "
                f"{recipe['train'].get('epochs')} epochs{derived}; eval {spec.preset} {attacks} "
                f"n={spec.n_examples or 'all'}{subset}; recipe {self.cell.source}")
        if self.state == "done":
            return line
        return line + "\n           " + " ".join(worker_command(self.path, data_dir))


@dataclass
class ReproduceResult:
    """What `reproduce` did.

    Attributes:
        grid: grid name.
        plan: every cell with its state before the run.
        ran: run ids trained and/or evaluated in this call.
        failed: run id -> error message.
        tables: paths written (Markdown, CSV, PNG), empty for a dry run.
        markdown: the rendered table.
    """

    grid: str
    plan: list[CellPlan]
    ran: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    tables: list[Path] = field(default_factory=list)
    markdown: str = ""


def plan_cells(cells: Sequence[Cell], out_dir: str | Path) -> list[CellPlan]:
    """The state of every cell under `out_dir`."""
    return [CellPlan(cell, cell_dir(out_dir, cell), cell_state(out_dir, cell)) for cell in cells]


# ------------------------------------------------------------------------------------------- one cell

def _cell_payload(cell: Cell, out_dir: Path, data_dir: str | Path) -> dict[str, Any]:
    return {
        "format": "dsnet-reproduce-cell/1",
        "run_id": cell.run_id,
        "grid": cell.grid,
        "dataset": cell.dataset,
        "style": cell.style,
        "seed": cell.seed,
        "variant": cell.variant.name,
        "recipe": cell.recipe,
        "eval": cell.eval.to_dict(),
        "eval_tag": cell.eval.tag,
        "derive": cell.derive,
        "parent_dir": str(cell_dir(out_dir, cell.parent_id).resolve()) if cell.parent_id else None,
        "target_params": cell.target_params,
    }


def _write_cell(cell: Cell, out_dir: Path, data_dir: str | Path) -> Path:
    folder = cell_dir(out_dir, cell)
    folder.mkdir(parents=True, exist_ok=True)
    payload = _cell_payload(cell, out_dir, data_dir)
    previous = folder / CELL_FILE
    if previous.is_file():
        old = json.loads(previous.read_text())
        if not cell.derive and _strip(old.get("recipe", {})) != _strip(cell.recipe):
            if TrainingRun(run_dir(out_dir, cell)).has_checkpoint:
                raise ConfigError(_conflict_message(cell.run_id, old.get("recipe", {}), cell.recipe, folder))
            (folder / RECIPE_FILE).unlink(missing_ok=True)  # nothing trained yet: the new recipe replaces it
    text = (json.dumps(payload, indent=1) + "\n").encode("utf-8")
    write_owned(previous, lambda handle: handle.write(text), REPRODUCE_WRITER, hint=_FOLDER_HINT)
    return folder


def check_recipes(cells: Sequence[Cell], out_dir: str | Path) -> None:
    """Validates every planned recipe, and refuses to reuse a run folder that trained with another recipe (e.g.
    another scale or epoch count). A folder whose training has not written a checkpoint yet takes the new recipe.

    Nothing is written, so a typo in `--set` fails here, before a dry run lists anything.

    Raises:
        ConfigError: naming the run and the problem, or the first folder that differs and how.
    """
    for cell in cells:
        try:
            config_from_dict(cell.recipe)
        except DsnetError as error:
            raise ConfigError(f"the recipe of {cell.run_id} is not valid: {error}") from None
    for cell in cells:
        previous = cell_dir(out_dir, cell) / CELL_FILE
        if cell.derive or not previous.is_file() or not TrainingRun(run_dir(out_dir, cell)).has_checkpoint:
            continue
        old = json.loads(previous.read_text()).get("recipe", {})
        if _strip(old) != _strip(cell.recipe):
            raise ConfigError(_conflict_message(cell.run_id, old, cell.recipe, cell_dir(out_dir, cell)))


def _strip(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe without the settings that cannot change a run's result."""
    out = plain(recipe)
    for dotted in RESULT_NEUTRAL_KEYS:
        section, key = dotted.split(".")
        out.get(section, {}).pop(key, None)
    return out


def _conflict_message(run_id: str, old: dict[str, Any], new: dict[str, Any], folder: Path) -> str:
    diff = differences(_strip(old), _strip(new))
    return (f"{folder} already holds run {run_id} trained with another recipe ({describe_differences(diff)}); use "
            "another --out-dir for a different scale or settings (nothing was changed)")


def _derive_recipe(payload: dict[str, Any]) -> dict[str, Any]:
    """Completes the recipe of a derived cell from its parent's finished run."""
    import copy

    from dsnet.analysis.common import load_model
    from dsnet.models.dsnet import DSNet, pruned_config

    recipe = copy.deepcopy(payload["recipe"])
    derive, parent_dir = payload.get("derive"), payload.get("parent_dir")
    if not derive:
        return recipe
    parent_ckpt = TrainingRun(Path(parent_dir) / TRAIN_DIR).selected
    if not parent_ckpt.is_file():
        raise DsnetError(f"{payload['run_id']} is derived from {parent_dir}, which has no train/selected.pt yet; "
                         "run its parent first")
    model, _ = load_model(parent_ckpt)
    if not isinstance(model, DSNet):
        raise ConfigError(f"{payload['run_id']}: the parent {parent_ckpt} is not a DS-Net")
    kwargs = dict(recipe["model"].get("kwargs") or {})
    if derive.startswith("prune:"):
        pruned = pruned_config(model, int(derive.split(":", 1)[1]))
        kwargs.update(blocks=pruned["blocks"], attention="fixed",
                      attention_init=[[float(v) for v in row] for row in pruned["attention_init"].tolist()])
        if payload.get("target_params") is not None:
            kwargs.pop("width", None)
            kwargs["target_params"] = int(payload["target_params"])
    elif derive == "init_from_parent":
        kwargs["attention_init"] = [[float(v) for v in row] for row in model.attention.detach().cpu().tolist()]
        kwargs.pop("attention_scale", None)
        kwargs.pop("attention_init_params", None)
    else:
        raise ConfigError(f"{payload['run_id']}: unknown derivation {derive!r}")
    recipe["model"]["kwargs"] = kwargs
    return recipe


def run_cell(path: str | Path, data_dir: str | Path, *, device: str | None = None) -> dict[str, float]:
    """Trains (or resumes) and evaluates one prepared cell folder, holding its lock (`FolderLock`).

    Under torchrun (WORLD_SIZE > 1) every rank calls it for the same cell and they run it together with DDP.

    Args:
        path: the cell folder holding `cell.json`.
        data_dir: dataset folder.
        device: training/evaluation device (default: the recipe's, i.e. cuda when available).

    Returns:
        The evaluation's accuracies (fractions).

    Raises:
        DsnetError: a config, data, checkpoint or training error, with a one-line message.
    """
    path = Path(path)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _run_distributed_cell(path, data_dir, device)
    with cell_folder(path).take():
        return _run_locked_cell(path, data_dir, device)


def _run_distributed_cell(path: Path, data_dir: str | Path, device: str | None) -> dict[str, float]:
    """`run_cell` on every rank of a torchrun-style launch: rank 0 locks the cell and writes its recipe, the others
    learn whether that worked, then all train and evaluate together (the process group is joined once, here)."""
    from dsnet.runtime.distributed import gather_objects, setup_distributed, teardown_distributed

    payload = json.loads((path / CELL_FILE).read_text())
    recipe_device = str(payload["recipe"].get("train", {}).get("device", "auto"))
    ctx = setup_distributed(device or recipe_device, option="--device" if device else "train.device")
    folder = cell_folder(path, is_main=ctx.is_main)
    try:
        problem: Exception | None = None
        if ctx.is_main:
            try:
                folder.take()
                _cell_recipe(path, payload)
            except Exception as error:  # any failure: the other ranks must hear of it, not wait in gather_objects
                problem = error
        rank0 = gather_objects(None if problem is None else str(problem))[0]
        if problem is not None:
            raise problem
        if rank0 is not None:
            raise DsnetError(f"rank 0 could not start {payload['run_id']}: {rank0}")
        return _run_locked_cell(path, data_dir, device)
    finally:
        folder.release()
        if ctx.owns_process_group:
            gc.collect()  # DDP's reducer must go before its process group (see the trainer's close())
            teardown_distributed()


def _cell_recipe(path: Path, payload: dict[str, Any]) -> dict[str, Any]:
    """The cell's resolved recipe: its recipe.yaml, or else the cell's recipe (derived from the parent's finished
    run for a derived cell), which is then written to recipe.yaml."""
    recipe_file = path / RECIPE_FILE
    trained = TrainingRun(path / TRAIN_DIR).has_checkpoint
    recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.is_file() else None
    if recipe is not None and not payload.get("derive") and _strip(recipe) != _strip(payload["recipe"]):
        if trained:
            raise ConfigError(_conflict_message(payload["run_id"], recipe, payload["recipe"], path))
        recipe = None  # nothing trained yet: the cell's new recipe replaces the old one
    if recipe is None:
        recipe = _derive_recipe(payload)
        text = yaml.safe_dump(recipe, sort_keys=False).encode("utf-8")
        write_owned(recipe_file, lambda handle: handle.write(text), REPRODUCE_WRITER, hint=_FOLDER_HINT)
    return recipe


def _run_locked_cell(path: Path, data_dir: str | Path, device: str | None) -> dict[str, float]:
    payload = json.loads((path / CELL_FILE).read_text())
    spec = EvalSpec.from_dict(payload["eval"])
    report = path / "eval" / payload["eval_tag"] / REPORT_NAME
    run = TrainingRun(path / TRAIN_DIR)
    if report.is_file():  # finished: reopened, so a report of other weights, code or points is refused, not reused
        return evaluate_cell(run.selected, data_dir, report.parent, spec, device=device)
    config = config_from_dict(_cell_recipe(path, payload))
    if device is not None:
        config.train.device = device
    if not sys.stderr.isatty():
        config.train.progress = False
    if not run.finished(config.train.epochs):
        resume = run.has_checkpoint
        logger.info("%s: %s", payload["run_id"], "resuming training" if resume else "training")
        train(config, data_dir, run.path, resume=resume)
    logger.info("%s: evaluating (%s)", payload["run_id"], "+".join(spec.attacks) or "clean only")
    return evaluate_cell(run.selected, data_dir, report.parent, spec, device=device)


# ----------------------------------------------------------------------------------------------- the grid

def _verify_finished(plans: list[CellPlan], data_dir: str | Path, result: ReproduceResult) -> None:
    """Reopens every finished cell's evaluation on the CPU (nothing is recomputed); a cell whose report no longer
    matches its checkpoint, code or test points goes to `result.failed` and out of the tables."""
    for plan in plans:
        try:
            run_cell(plan.path, data_dir, device="cpu")
        except DsnetError as error:
            message = (f"its finished evaluation does not match the cell any more ({error}); delete "
                       f"{plan.path / 'eval'} to evaluate it again")
            logger.error("%s: %s", plan.cell.run_id, message)
            result.failed[plan.cell.run_id] = message


def _run_sequential(plans: list[CellPlan], out_dir: Path, data_dir: str | Path, result: ReproduceResult) -> None:
    for plan in plans:
        if plan.cell.parent_id in result.failed:
            result.failed[plan.cell.run_id] = f"its parent {plan.cell.parent_id} failed"
            continue
        try:
            _write_cell(plan.cell, out_dir, data_dir)
            run_cell(plan.path, data_dir)
            result.ran.append(plan.cell.run_id)
        except DsnetError as error:
            logger.error("%s failed: %s", plan.cell.run_id, error)
            result.failed[plan.cell.run_id] = str(error)


def _run_parallel(plans: list[CellPlan], out_dir: Path, data_dir: str | Path, devices: Sequence[str],
                  result: ReproduceResult, poll_s: float = 2.0) -> None:
    queue = [p for p in plans]
    running: dict[str, tuple[subprocess.Popen[bytes], CellPlan, Any]] = {}
    free = list(devices)
    while queue or running:
        while queue and free:
            plan = queue.pop(0)
            if plan.cell.parent_id in result.failed:
                result.failed[plan.cell.run_id] = f"its parent {plan.cell.parent_id} failed"
                continue
            try:
                _write_cell(plan.cell, out_dir, data_dir)
            except DsnetError as error:
                result.failed[plan.cell.run_id] = str(error)
                continue
            device = free.pop(0)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
            log = (plan.path / WORKER_LOG).open("ab")
            process = subprocess.Popen(worker_command(plan.path, data_dir), env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
            logger.info("%s: started on device %s (pid %d, log %s)", plan.cell.run_id, device, process.pid,
                        plan.path / WORKER_LOG)
            running[device] = (process, plan, log)
        time.sleep(poll_s if running else 0)
        for device, (process, plan, log) in list(running.items()):
            code = process.poll()
            if code is None:
                continue
            log.close()
            del running[device]
            free.append(device)
            if code == 0:
                result.ran.append(plan.cell.run_id)
                logger.info("%s: finished", plan.cell.run_id)
            else:
                tail = (plan.path / WORKER_LOG).read_text(errors="replace").strip().splitlines()[-1:] or [""]
                result.failed[plan.cell.run_id] = f"worker exited with status {code}: {tail[0]}"
                logger.error("%s failed (status %d); see %s", plan.cell.run_id, code, plan.path / WORKER_LOG)


def reproduce(
    grid: str,
    *,
    out_dir: str | Path,
    data_dir: str | Path,
    scale: Scale | str = "paper",
    seeds: Sequence[int] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    preset: str = "paper",
    overrides: Sequence[str] = (),
    configs_dir: str | Path | None = None,
    epochs: int | None = None,
    width: int | None = None,
    n_examples: int | None = None,
    train_subset: int | None = None,
    devices: Sequence[str] | None = None,
    dry_run: bool = False,
    aggregate_only: bool = False,
) -> ReproduceResult:
    """Runs one paper grid (training, evaluation, aggregation) and writes its table.

    Args:
        grid: a name from `dsnet.experiments.GRIDS` (table1, table2, table3, trades, table4, fig4, fig5, fig6).
        out_dir: root folder; runs go to `runs/`, tables to `tables/`.
        data_dir: dataset folder.
        scale: "paper", "mini", or a `Scale`.
        seeds: training seeds (default: the grid's).
        datasets: only these datasets.
        models: only variants matching these shell patterns (parents of derived variants are kept).
        attacks: evaluate with exactly these attacks.
        preset: attack preset ("paper" or "standard").
        overrides: `section.key=value` recipe overrides for every run.
        configs_dir: recipe folder (default `configs/`).
        epochs, width, n_examples, train_subset: replace the scale's values.
        devices: GPU ids; one worker process per device at a time. None: in this process, one cell at a time.
        dry_run: only plan: nothing is written or run.
        aggregate_only: run nothing; render the table from the finished cells.

    Returns:
        A `ReproduceResult`; `failed` lists cells that did not finish (the others still count).
    """
    from dsnet.experiments.aggregate import write_tables

    out_dir = Path(out_dir)
    scale = with_scale(scale, epochs=epochs, width=width, n_examples=n_examples, train_subset=train_subset)
    cells = build_grid(grid, scale=scale, seeds=seeds, datasets=datasets, models=models, attacks=attacks,
                       preset=preset, overrides=overrides, configs_dir=configs_dir)
    check_recipes(cells, out_dir)
    result = ReproduceResult(grid, plan_cells(cells, out_dir))
    if dry_run:
        return result
    _verify_finished([p for p in result.plan if p.state == "done"], data_dir, result)
    if not aggregate_only:
        todo = [p for p in result.plan if p.state != "done"]
        logger.info("%s: %d cells, %d to run (%s scale)", grid, len(cells), len(todo), scale.name)
        for stage in (False, True):  # parents first, then the cells derived from them
            batch = [p for p in todo if (p.cell.parent_id is not None) == stage]
            if not batch:
                continue
            if devices:
                _run_parallel(batch, out_dir, data_dir, list(devices), result)
            else:
                _run_sequential(batch, out_dir, data_dir, result)
    paths, markdown = write_tables(grid, cells, out_dir, scale=scale.name, exclude=set(result.failed))
    result.tables, result.markdown = paths, markdown
    return result


# ----------------------------------------------------------------------------------------------- worker

def worker_logging() -> None:
    """Timestamped INFO lines on stderr for a worker process or job; under torchrun only rank 0's (and errors)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        for name in ("", "dsnet"):  # "": this module's logger is __main__ under `python -m`
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Worker entry point: `python -m dsnet.experiments.runner CELL_DIR --data-dir DIR [--device D]`."""
    parser = argparse.ArgumentParser(prog="python -m dsnet.experiments.runner",
                                     description="train and evaluate one prepared reproduce cell")
    parser.add_argument("cell_dir", help="cell folder holding cell.json")
    parser.add_argument("--data-dir", required=True, help="dataset folder")
    parser.add_argument("--device", default=None, help="device (default: cuda when available)")
    args = parser.parse_args(argv)
    worker_logging()
    try:
        accuracies = run_cell(args.cell_dir, args.data_dir, device=args.device)
    except DsnetError as error:
        logger.error("dsnet: error: %s", error)
        return 1
    logger.info("done: %s", ", ".join(f"{k} {100 * v:.2f}" for k, v in accuracies.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
