"""The evaluation step of a reproduce cell: `dsnet.evaluation.evaluate` (what `dsnet eval` runs) on the run's
selected checkpoint, plus reading the accuracies back.

The paper evaluates FGSM, PGD-20 and CW∞-30 on the whole test set and AutoAttack on a random 12.5 % of it.
When a spec asks for that (`autoattack_fraction`), AutoAttack is a second evaluation on the seeded subset, in
`<eval dir>/autoattack/`, and the main evaluation (every other attack) writes `<eval dir>/report.json` last:
that file marks the cell as finished. `read_cell_report` merges the two.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from dsnet.errors import DsnetError
from dsnet.experiments.grids import EvalSpec
from dsnet.experiments.layout import AUTOATTACK_DIR, REPORT_NAME
from dsnet.runtime.distributed import barrier

__all__ = ["evaluate_cell", "read_report", "read_cell_report"]

logger = logging.getLogger(__name__)

_NAMES = {"clean": "natural"}


def evaluate_cell(
    checkpoint: str | Path, data_dir: str | Path, out_dir: str | Path, spec: EvalSpec, *,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Evaluates a checkpoint as `spec` says; `out_dir/report.json` is written last.

    Args:
        checkpoint: a `dsnet train` checkpoint (the run's `selected.pt`).
        data_dir: dataset folder.
        out_dir: the cell's evaluation folder.
        spec: attacks, preset, number of points, overrides.
        device: "auto" (default), "cpu", "cuda", ...

    Returns:
        metric -> accuracy in [0, 1] ("natural", then the attacks).
    """
    from dsnet.evaluation import evaluate

    out_dir = Path(out_dir)
    common: dict[str, Any] = {"preset": spec.preset, "seed": spec.seed, "trained_with": spec.trained_with,
                              "sanity": spec.sanity, "device": device or "auto", "progress": False}
    attacks = list(spec.attacks)
    overrides = {k: v for k, v in spec.attack_overrides.items() if k in attacks}
    if "autoattack" in attacks and spec.autoattack_fraction is not None:
        attacks.remove("autoattack")
        evaluate(checkpoint, data_dir, out_dir=out_dir / AUTOATTACK_DIR, attacks=["autoattack"],
                 subset=spec.autoattack_fraction, overrides={k: v for k, v in overrides.items() if k == "autoattack"},
                 **{**common, "sanity": False})
        overrides.pop("autoattack", None)
    evaluate(checkpoint, data_dir, out_dir=out_dir, attacks=attacks, n_examples=spec.n_examples,
             overrides=overrides or None, **common)
    barrier()  # under torchrun rank 0 writes the reports: the other ranks read them once it has
    return read_cell_report(out_dir)


def read_report(path: str | Path) -> dict[str, float]:
    """The accuracies of one `report.json` as fractions, keyed "natural", "fgsm", "pgd", "cw_inf", "autoattack".

    Raises:
        DsnetError: the file is missing or holds no accuracies.
    """
    path = Path(path)
    if not path.is_file():
        raise DsnetError(f"evaluation report {path} does not exist")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DsnetError(f"evaluation report {path} is not valid JSON ({error.msg}); delete it to evaluate again") \
            from None
    accuracy = raw.get("accuracy")
    if not isinstance(accuracy, dict) or not accuracy:
        raise DsnetError(f"evaluation report {path} holds no 'accuracy' section")
    return {_NAMES.get(name, name): float(value) for name, value in accuracy.items()
            if name != "worst_case" and isinstance(value, (int, float))}


def read_cell_report(out_dir: str | Path) -> dict[str, float]:
    """A cell's accuracies: `report.json`, with AutoAttack from `autoattack/report.json` when that exists."""
    out_dir = Path(out_dir)
    result = read_report(out_dir / REPORT_NAME)
    subset = out_dir / AUTOATTACK_DIR / REPORT_NAME
    if subset.is_file():
        result["autoattack"] = read_report(subset)["autoattack"]
    return result
