"""`dsnet reproduce` end to end on a miniature Table 2: two seeds, two models, one epoch, a few test points."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import pytest
import yaml

from dsnet.cli import main
from dsnet.errors import ConfigError
from dsnet.experiments import layout, runner
from dsnet.experiments.grids import build_grid, with_scale
from dsnet.experiments.layout import cell_dir
from dsnet.experiments.runner import plan_cells, reproduce

# Everything that keeps a miniature cell at a couple of seconds on one CPU thread.
TINY = ["data.download=false", "data.val_size=32", "train.batch_size=32", "train.max_steps_per_epoch=2",
        "train.tensorboard=false", "train.progress=false", "objective.steps=1"]
KW = dict(scale="mini", seeds=[0, 1], datasets=["cifar10"], models=["dsnet4", "resnet50"], attacks=["fgsm", "pgd"],
          epochs=1, n_examples=16, overrides=TINY)


@pytest.fixture(scope="module")
def table2_mini(cifar10_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, runner.ReproduceResult]:
    out = tmp_path_factory.mktemp("reproduce")
    result = reproduce("table2", out_dir=out, data_dir=cifar10_dir, **KW)
    return out, result


def test_miniature_table2_renders_mean_std_beside_the_paper(table2_mini) -> None:
    out, result = table2_mini
    assert result.failed == {}
    assert sorted(result.ran) == sorted(f"cifar10-at-{m}-seed{s}" for m in ("dsnet4", "resnet50") for s in (0, 1))
    md = (out / "tables" / "table2.md").read_text()
    assert md == result.markdown
    assert "## CIFAR-10, AT" in md
    dsnet_row = next(line for line in md.splitlines() if line.startswith("| DS-Net-4-softmax"))
    cells = [c.strip() for c in dsnet_row.strip("|").split("|")]
    # Model, Seeds, Params, Paper params, then (ours, paper, Δ) for Natural, FGSM, PGD
    assert cells[1] == "2" and cells[3] == "20.78"
    assert "±" in cells[4] and cells[5] == "85.39 ± 0.22" and cells[6].startswith(("+", "-"))
    assert cells[11] == "54.14 ± 0.10"
    assert "Improv. (%)" in md
    with open(out / "tables" / "table2.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ours = [r for r in rows if r["variant"] == "dsnet4" and r["metric"] == "pgd"]
    assert len(ours) == 1 and ours[0]["n_seeds"] == "2" and ours[0]["paper_mean"] == "54.1400"
    values = [float(v) for v in ours[0]["values"].split()]
    assert float(ours[0]["mean"]) == pytest.approx(sum(values) / 2, abs=1e-3)
    # the run folders hold what `dsnet train` and `dsnet eval` write
    run = out / "runs" / "cifar10-at-dsnet4-seed0"
    assert (run / "train" / "selected.pt").is_file() and (run / "recipe.yaml").is_file()
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recipe["model"] == {"name": "dsnet4", "kwargs": {"width": 4, "width_factor": 2, "depth": 3}}
    assert recipe["train"]["seed"] == 0 and recipe["train"]["epochs"] == 1
    report = next((run / "eval").glob("*/report.json"))
    assert json.loads(report.read_text())["n"] == 16


def test_rerun_skips_finished_cells(table2_mini, cifar10_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished cell is neither trained nor attacked again: its evaluation is reopened, which checks its content
    key and reuses every stored result."""
    import dsnet.attacks.metrics
    import dsnet.evaluation.evaluator

    out, _ = table2_mini
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")}

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(runner, "train", refuse)
    monkeypatch.setattr(dsnet.evaluation.evaluator, "clean_flags", refuse)
    monkeypatch.setattr(dsnet.attacks.metrics, "attack_run", refuse)
    result = reproduce("table2", out_dir=out, data_dir=cifar10_dir, **KW)
    assert result.ran == [] and result.failed == {}
    assert {p.state for p in result.plan} == {"done"}
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*.pt")} == stamp
    for report in (out / "runs").rglob("report.json"):
        assert all(attack["resumed"] for attack in json.loads(report.read_text())["attacks"].values())


def _cells(**changes) -> dict[str, runner.Cell]:
    """The fixture's cells, built as `reproduce` builds them."""
    kw = {**KW, **changes}
    scale = with_scale(kw.pop("scale"), epochs=kw.pop("epochs"), n_examples=kw.pop("n_examples"))
    return {c.run_id: c for c in build_grid("table2", scale=scale, **kw)}


def test_unfinished_cell_is_evaluated_without_retraining(table2_mini, cifar10_dir: Path, monkeypatch) -> None:
    out, _ = table2_mini
    cell = _cells()["cifar10-at-resnet50-seed1"]
    report = layout.eval_dir(out, cell) / "report.json"
    backup = report.with_suffix(".bak")
    report.rename(backup)
    calls = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda *a, **k: calls.append(k) or real_train(*a, **k))
    try:
        assert layout.cell_state(out, cell) == "evaluate"
        result = reproduce("table2", out_dir=out, data_dir=cifar10_dir, **KW)
        assert result.ran == [cell.run_id] and calls == []  # training had finished: only the evaluation ran
        assert report.is_file()
    finally:
        if not report.is_file():
            backup.rename(report)
        backup.unlink(missing_ok=True)


def test_interrupted_training_resumes(cifar10_dir: Path, tmp_path: Path, monkeypatch) -> None:
    cell = _cells(models=["resnet50"], seeds=[0], epochs=2)["cifar10-at-resnet50-seed0"]
    calls = []
    real_train = runner.train

    def stop_after_one_epoch(config, data_dir, out_dir, *, resume=False):
        calls.append(resume)
        if not resume:
            config.train.epochs = 1  # as if killed after epoch 1: last.pt holds epoch 1
        return real_train(config, data_dir, out_dir, resume=resume)

    monkeypatch.setattr(runner, "train", stop_after_one_epoch)
    monkeypatch.setattr(runner, "evaluate_cell", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    kw = {**KW, "models": ["resnet50"], "seeds": [0], "epochs": 2}
    with pytest.raises(KeyboardInterrupt):
        reproduce("table2", out_dir=tmp_path, data_dir=cifar10_dir, **kw)
    assert layout.cell_state(tmp_path, cell) == "resume"
    monkeypatch.undo()
    monkeypatch.setattr(runner, "train", stop_after_one_epoch)
    result = reproduce("table2", out_dir=tmp_path, data_dir=cifar10_dir, **kw)
    assert calls == [False, True] and result.ran == [cell.run_id]
    rows = (cell_dir(tmp_path, cell) / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_dry_run_runs_and_writes_nothing(cifar10_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(logging.getLogger("dsnet"), "handlers", [])  # main() adds a handler on captured stderr

    def refuse(*args, **kwargs):
        raise AssertionError("a dry run ran something")

    monkeypatch.setattr(runner, "train", refuse)
    monkeypatch.setattr(runner, "evaluate_cell", refuse)
    out = tmp_path / "dry"
    code = main(["reproduce", "table4", "--data-dir", str(cifar10_dir), "--out-dir", str(out), "--scale", "mini",
                 "--seeds", "0,1", "--dry-run"])
    assert code == 0
    assert not out.exists()
    text = capsys.readouterr().out
    assert "table4: 10 cells" in text
    assert "[   train] cifar10-at-dsnet4-seed0" in text and "[ waiting] cifar10-at-dsnet4-prune2-seed1" in text
    assert "-m dsnet.experiments.runner" in text and "derived from cifar10-at-dsnet4-seed1 (prune:2)" in text


def test_a_different_recipe_in_the_same_folder_is_refused(table2_mini, cifar10_dir: Path) -> None:
    out, _ = table2_mini
    with pytest.raises(ConfigError, match="another recipe.*train.epochs: 1 -> 2"):
        reproduce("table2", out_dir=out, data_dir=cifar10_dir, **{**KW, "epochs": 2})


def test_a_typo_in_set_fails_before_anything_is_listed_or_written(cifar10_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "typo"
    argv = ["reproduce", "fig6", "--data-dir", str(cifar10_dir), "--out-dir", str(out), "--scale", "mini",
            "--seeds", "0", "--set", "train.epochz=1"]
    for extra in (["--dry-run"], []):
        assert main([*argv, *extra]) == 1
        captured = capsys.readouterr()
        assert "unknown key train.epochz; did you mean train.epochs?" in captured.err.strip().splitlines()[-1]
        assert "the recipe of cifar10-at-dsnet4-seed0 is not valid" in captured.err
        assert "cells" not in captured.out and not out.exists()


def test_a_cell_that_has_not_trained_takes_a_new_recipe(cifar10_dir: Path, tmp_path: Path) -> None:
    kw = dict(scale="mini", seeds=[0], datasets=["cifar10"], models=["dsnet4"])
    old = build_grid("fig6", **kw)
    new = build_grid("fig6", **kw, overrides=["train.epochs=3"])
    runner._write_cell(old[0], tmp_path, cifar10_dir)
    runner.check_recipes(new, tmp_path)  # nothing trained yet: the corrected recipe is taken
    runner._write_cell(new[0], tmp_path, cifar10_dir)
    stored = json.loads((cell_dir(tmp_path, new[0]) / "cell.json").read_text())
    assert stored["recipe"]["train"]["epochs"] == 3
    (cell_dir(tmp_path, new[0]) / "train").mkdir()
    (cell_dir(tmp_path, new[0]) / "train" / "last.pt").write_bytes(b"trained")
    with pytest.raises(ConfigError, match="trained with another recipe.*train.epochs: 3 -> 2"):
        runner.check_recipes(old, tmp_path)


def test_derived_recipes_prune_and_reuse_the_parent(table2_mini) -> None:
    out, _ = table2_mini
    parent = out / "runs" / "cifar10-at-dsnet4-seed0"
    payload = {"run_id": "x", "derive": "prune:2", "parent_dir": str(parent), "target_params": 40_000,
               "recipe": {"model": {"name": "dsnet4", "kwargs": {"width": 4, "width_factor": 2, "depth": 3}}}}
    recipe = runner._derive_recipe(payload)
    kwargs = recipe["model"]["kwargs"]
    assert kwargs["attention"] == "fixed" and "width" not in kwargs and kwargs["target_params"] == 40_000
    assert len(kwargs["blocks"]) == 3 and all(len(row) == 2 for row in kwargs["blocks"])
    assert all(abs(sum(math.exp(v) for v in row) - 1) < 1e-5 for row in kwargs["attention_init"])
    learned = runner._derive_recipe({**payload, "derive": "init_from_parent"})["model"]["kwargs"]
    assert len(learned["attention_init"]) == 3 and len(learned["attention_init"][0]) == 4
    from dsnet.config import config_from_dict

    config_from_dict({**yaml.safe_load((parent / "recipe.yaml").read_text()), "model": recipe["model"]})


def test_worker_process_runs_one_cell(cifar10_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """The command `--devices` runs per cell (here on the CPU, with CUDA_VISIBLE_DEVICES set as it would be)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cells = plan_cells(list(_cells(models=["resnet50"], seeds=[0]).values()), tmp_path)
    result = runner.ReproduceResult("table2", cells)
    runner._run_parallel(cells, tmp_path, cifar10_dir, ["0"], result, poll_s=0.2)
    assert result.failed == {} and result.ran == ["cifar10-at-resnet50-seed0"], result.failed
    folder = cell_dir(tmp_path, cells[0].cell)
    assert (folder / "worker.log").is_file() and list((folder / "eval").glob("*/report.json"))


def test_the_architectures_grid_runs_at_mini_scale(cifar10_dir: Path, tmp_path: Path) -> None:
    """DS-Net over today's blocks beside RobustResNet and RaWRN under one recipe, its width matched to A1's count,
    with parameters and GFLOPs in the table."""
    result = reproduce("architectures", out_dir=tmp_path, data_dir=cifar10_dir, scale="mini", seeds=[0],
                       datasets=["cifar10"], models=["rrn_a1", "dsnet4-today-at-a1", "ra_wrn70_16"], attacks=["pgd"],
                       epochs=1, n_examples=16, overrides=TINY)
    assert result.failed == {} and len(result.ran) == 3
    md = (tmp_path / "tables" / "architectures.md").read_text()
    assert "## CIFAR-10, TRADES (β=6), the RobustResNet recipe" in md
    header = next(line for line in md.splitlines() if line.startswith("| Model"))
    assert [c.strip() for c in header.strip("|").split("|")][:6] == ["Model", "Seeds", "Params (M)", "GFLOPs",
                                                                     "Natural", "Paper"]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
            for line in md.splitlines() if line.startswith(("| RobustResNet", "| DS-Net", "| RaWRN"))}
    today = rows["DS-Net-4 over Residual, RobustRes, RaWRN, Dense (matched to A1)"]
    a1 = rows["RobustResNet-A1"]
    assert abs(float(today[2]) - float(a1[2])) / float(a1[2]) < 0.15  # the budget is matched
    assert float(today[3]) > 0 and today[7] != "–"  # GFLOPs, and a PGD accuracy
    recipe = yaml.safe_load((tmp_path / "runs" / "cifar10-trades_rrn-dsnet4-today-at-a1-seed0" / "recipe.yaml")
                            .read_text())
    assert recipe["model"]["kwargs"]["blocks"] == ["residual", "robust_residual", "ra_block", "dense"]
    assert recipe["optim"]["grad_clip"] == 5.0 and recipe["objective"]["beta"] == 6.0
