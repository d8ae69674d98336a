"""Aggregation on hand-made results: the statistics, the rendered tables and the paper's numbers beside them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from dsnet.experiments.aggregate import kendall_tau, load_paper, mean_std, write_tables
from dsnet.experiments.grids import GRIDS, build_grid
from dsnet.experiments.layout import cell_dir, eval_dir


def test_mean_std_by_hand() -> None:
    mean, std = mean_std([50.0, 52.0, 54.0])
    assert mean == 52.0 and std == pytest.approx(math.sqrt(8 / 3))
    assert mean_std([50.0, 52.0, 54.0], ddof=1) == (52.0, 2.0)
    assert mean_std([7.0]) == (7.0, 0.0)
    assert math.isnan(mean_std([7.0], ddof=1)[1])
    assert all(math.isnan(v) for v in mean_std([]))
    with pytest.raises(ValueError):
        mean_std([1.0], ddof=-1)


def test_kendall_tau() -> None:
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)


def _fake(out: Path, cell, accuracy: dict[str, float], attention: list[list[float]] | None = None) -> None:
    folder = eval_dir(out, cell)
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(json.dumps({"accuracy": {**accuracy, "worst_case": 0.0}}))
    if attention is not None:
        train = cell_dir(out, cell) / "train"
        train.mkdir(parents=True)
        row = {"epoch": 1, "selected": True, "attention_weights": attention}
        (train / "metrics.jsonl").write_text(json.dumps(row) + "\n")


def test_table_from_hand_made_reports(tmp_path: Path) -> None:
    cells = build_grid("table3", scale="mini", seeds=[0, 1, 2], datasets=["cifar10"], models=["wrn34_10", "dsnet4"])
    pgd = {("wrn34_10", 0): 0.50, ("wrn34_10", 1): 0.52, ("wrn34_10", 2): 0.54, ("dsnet4", 0): 0.55,
           ("dsnet4", 1): 0.55}  # dsnet4 seed 2 unfinished
    for cell in cells:
        key = (cell.variant.name, cell.seed)
        if key in pgd:
            _fake(tmp_path, cell, {"clean": 0.80, "fgsm": 0.6, "pgd": pgd[key], "cw_inf": 0.5})
    paths, md = write_tables("table3", cells, tmp_path)
    assert [p.name for p in paths] == ["table3.md", "table3.csv"]
    assert "5 of 6 runs finished" in md
    wrn = next(line for line in md.splitlines() if line.startswith("| WRN-34-10"))
    cells_md = [c.strip() for c in wrn.strip("|").split("|")]
    # Natural (ours, paper, Δ), FGSM, PGD, C&W: PGD ours = 52.00 ± 1.63 (ddof 0), paper 52.26 ± 0.41
    assert cells_md[1] == "3" and cells_md[10] == "52.00 ± 1.63" and cells_md[11] == "52.26 ± 0.41"
    assert cells_md[12] == "-0.26"
    dsnet = next(line for line in md.splitlines() if line.startswith("| DS-Net-4"))
    assert "55.00 ± 0.00" in dsnet and "| 2 |" in dsnet
    improv = next(line for line in md.splitlines() if line.startswith("| Improv."))
    assert "| +5.77 | 5.68 | +0.09 |" in improv  # PGD: (55 - 52) / 52 of the means, beside the paper's 5.68
    with open(paths[1], newline="") as handle:
        rows = list(csv.DictReader(handle))
    pgd_rows = {r["variant"]: r for r in rows if r["metric"] == "pgd"}
    assert pgd_rows["wrn34_10"]["mean"] == "52.0000" and pgd_rows["wrn34_10"]["std"] == "1.6330"
    assert pgd_rows["wrn34_10"]["diff"] == "-0.2600" and pgd_rows["dsnet4"]["n_seeds"] == "2"
    # rows without our numbers still show the paper's (AutoAttack was not run here)
    assert {r["metric"] for r in rows if r["variant"] == "wrn34_10"} == {"natural", "fgsm", "pgd", "cw_inf",
                                                                         "autoattack"}


def test_table1_ranks_and_kendall_tau(tmp_path: Path) -> None:
    cells = build_grid("table1", scale="mini", seeds=[0])
    natural = {"wrn28_10": 0.96, "resnet62": 0.95, "densenet121": 0.94, "mobilenetv2": 0.93, "resnet50": 0.92,
               "adark_net": 0.91}
    for cell in cells:
        if cell.style == "standard":
            _fake(tmp_path, cell, {"clean": natural[cell.variant.name]})
        else:
            _fake(tmp_path, cell, {"clean": 0.8, "pgd": 1.4 - natural[cell.variant.name]})  # reversed order
    _, md = write_tables("table1", cells, tmp_path)
    wrn = next(line for line in md.splitlines() if line.startswith("| WRN-28-10"))
    parts = [c.strip() for c in wrn.strip("|").split("|")]
    assert parts[1] == "96.00" and parts[2] == "96.46" and parts[4:6] == ["1", "1"] and parts[9:11] == ["6", "3"]
    assert "ours -1.00, paper 0.07" in md  # the paper's rankings are nearly unrelated (its point)


def test_figure_grid_adds_the_attention_distance_and_a_png(tmp_path: Path) -> None:
    cells = build_grid("fig5", scale="mini", seeds=[0])
    uniform = [[0.25] * 4] * 3
    for cell in cells:
        shift = 0.1 if cell.variant.name == "dsnet4-init-uniform" else 0.0
        weights = [[0.25 + shift, 0.25 - shift, 0.25, 0.25]] * 3
        _fake(tmp_path, cell, {"clean": 0.8, "pgd": 0.5}, weights if cell.variant.name != "dsnet4-init-normal"
              else uniform)
    paths, md = write_tables("fig5", cells, tmp_path)
    assert [p.suffix for p in paths] == [".md", ".csv", ".png"]
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = next(line for line in md.splitlines() if line.startswith("| uniform"))
    assert "| 10.00 |" in line  # L∞ distance to the normal run, ×100


def test_paper_numbers_refer_to_grid_rows() -> None:
    for grid in GRIDS:
        paper = load_paper(grid)
        keys = {(c.dataset, c.style, c.variant.name) for c in build_grid(grid, scale="mini", seeds=[0])}
        for row in paper["rows"]:
            assert (row["dataset"], row["style"], row["variant"]) in keys, (grid, row["variant"])
    table2 = {(r["dataset"], r["variant"]): r for r in load_paper("table2")["rows"]}
    assert len(table2) == 14
    assert table2[("cifar10", "dsnet4")]["mean"]["pgd"] == 54.14
    assert table2[("svhn", "dsnet6")]["mean"]["autoattack"] == 48.09
    assert load_paper("table4")["rows"][0]["mean"] == {"pgd": 42.03, "natural": 78.05}


def test_autoattack_runs_on_the_paper_subset_in_its_own_evaluation(tmp_path: Path, monkeypatch) -> None:
    """The paper: FGSM/PGD/CW on the whole test set, AutoAttack on 12.5 % of it; the two reports are merged."""
    import dsnet.evaluation
    from dsnet.experiments.cell_eval import evaluate_cell
    from dsnet.experiments.grids import EvalSpec

    calls = []

    def fake_evaluate(checkpoint, data_dir, *, out_dir, attacks, **kwargs):
        calls.append({"out_dir": Path(out_dir), "attacks": list(attacks), **kwargs})
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        accuracy = {"clean": 0.8, **{name: 0.4 if name == "autoattack" else 0.5 for name in attacks}}
        (Path(out_dir) / "report.json").write_text(json.dumps({"accuracy": {**accuracy, "worst_case": 0.4}}))

    monkeypatch.setattr(dsnet.evaluation, "evaluate", fake_evaluate, raising=False)
    spec = EvalSpec(preset="paper", attacks=("fgsm", "pgd", "autoattack"), trained_with="at",
                    attack_overrides={"pgd": {"steps": 7}}, autoattack_fraction=0.125)
    result = evaluate_cell("ckpt.pt", "data", tmp_path, spec)
    assert result == {"natural": 0.8, "fgsm": 0.5, "pgd": 0.5, "autoattack": 0.4}
    aa, main = calls
    assert aa["attacks"] == ["autoattack"] and aa["subset"] == 0.125 and aa["out_dir"] == tmp_path / "autoattack"
    assert main["attacks"] == ["fgsm", "pgd"] and main["n_examples"] is None
    assert main["overrides"] == {"pgd": {"steps": 7}}
    assert main["trained_with"] == "at" and main["preset"] == "paper"
