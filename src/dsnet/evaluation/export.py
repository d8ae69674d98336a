"""Exporting a checkpoint as a RobustBench-style model, and loading it back.

`export_model(checkpoint, out_dir, report=..., name=NAME)` writes three files into `out_dir`:

- `NAME.pt`: `{"state_dict": ...}`, tensors only (loads with `torch.load(..., weights_only=True)`), fp32,
  with the architecture's own keys: no `module.` or `_orig_mod.` prefix, no wrapper prefix;
- `NAME.architecture.json`: what rebuilds the model (registered name, constructor kwargs, number of classes),
  the input convention (NCHW float in [0, 1], the per-channel normalisation the model applies itself) and the
  weights file's SHA-256;
- `model_info/<dataset>/<Linf|L2|corruptions>/NAME.json` (only with a report): the claim in RobustBench's format
  and place, with clean and robust accuracy filled in from `report.json` (AutoAttack for Linf and L2, the mean
  over the 15 corruptions × 5 severities for corruptions) and the bibliographic fields left empty. A report whose
  threat model has no leaderboard (L1), or whose ε is not the leaderboard's (the paper's 0.031 instead of 8/255),
  is refused before any file is written.

`load_exported(out_dir)` rebuilds the model from those files: inputs in [0, 1], normalisation inside (our
models need none: mean 0 and std 1, but it is applied anyway, so a user can edit the spec for a model that
does), fp32, eval mode.

The normalisation is a forward pre-hook with non-persistent buffers on the network itself, rather than a
wrapper module: a wrapper would prefix every key (`model.stem.weight`), and RobustBench's loader strips
`model.` from keys. This way the exported state dict loads into `create_model(...)` unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import dsnet
from dsnet.errors import CheckpointError, ConfigError, DsnetError
from dsnet.evaluation.report import dumps_json
from dsnet.runtime.files import ensure_writable_folder, write_text_atomic
from dsnet.runtime.hashing import file_sha256

__all__ = ["export_model", "load_exported", "robustbench_claim", "claim_path", "with_input_normalization",
           "ExportResult", "EXPORT_FORMAT", "claim_eps"]

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "dsnet-export/1"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SPEC_SUFFIX = ".architecture.json"


@dataclass(frozen=True)
class ExportResult:
    """The files `export_model` wrote."""

    weights: Path
    architecture: Path
    claim: Path | None


def with_input_normalization(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Makes `model` normalise its [0, 1] input itself: x -> (x - mean) / std before its forward.

    The constants are non-persistent buffers (they follow `.to(device)` but stay out of the state dict) and
    the step is a forward pre-hook, so the state dict keeps exactly the architecture's keys.

    Args:
        model: maps normalised images to logits.
        mean: per-channel mean (3 values).
        std: per-channel standard deviation (3 values, > 0).

    Returns:
        The same module, now mapping (B, 3, H, W) images in [0, 1] to logits.
    """
    if len(mean) != len(std) or any(s <= 0 for s in std):
        raise ConfigError(f"normalisation needs one mean and one std > 0 per channel, got {list(mean)}, {list(std)}")
    if hasattr(model, "input_mean"):
        raise ValueError("the model normalises its input already")
    model.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    model.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x, *rest = args
        return ((x - module.input_mean) / module.input_std, *rest)

    model.register_forward_pre_hook(normalize)
    return model


def claim_eps(eps: float) -> str:
    """ε as RobustBench writes it: "8/255" when it is k/255, else the number ("0.031")."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:g}"


def robustbench_claim(report: Mapping[str, Any], *, architecture: str, additional_data: bool = False) -> dict[str, Any]:
    """A RobustBench claim (`model_info/<dataset>/<threat model>/<name>.json`) from an evaluation report.

    Accuracies are percentages as strings with two decimals; `reported` is the report's number for the
    leaderboard (AutoAttack's accuracy for Linf and L2, the mean corruption accuracy for corruptions); link, name,
    authors and venue are left empty for the user.

    Args:
        report: the content of a `report.json` written by `dsnet eval`.
        architecture: the architecture as the leaderboard shows it.
        additional_data: whether training used data beyond the dataset's training split.

    Raises:
        ConfigError: the report's threat model, dataset or ε is not a leaderboard's, or it lacks the leaderboard's
            number (AutoAttack, or one of the 75 corruption results).
    """
    from dsnet.evaluation.presets import get_threat_model

    accuracy = report.get("accuracy") or {}
    threat_data = report.get("threat_model") or {}
    threat = get_threat_model(threat_data.get("name") or "Linf")
    dataset = report.get("dataset", "")
    if dataset not in threat.leaderboard_eps:
        boards = ", ".join(threat.leaderboard_eps) or "none"
        raise ConfigError(f"RobustBench has no {threat.name} leaderboard for {dataset} (it has: {boards}); no claim "
                          "is written")
    claim: dict[str, Any] = {
        "link": "",
        "name": "",
        "authors": "",
        "additional_data": bool(additional_data),
        "number_forward_passes": 1,
        "dataset": dataset,
        "venue": "",
        "architecture": architecture,
    }
    if threat.norm is None:
        corruptions = (report.get("corruptions") or {}).get("accuracy") or {}
        from dsnet.data.corruptions import CORRUPTIONS, SEVERITIES

        missing = [f"{c} {k}" for c in CORRUPTIONS for k in SEVERITIES if str(k) not in corruptions.get(c, {})]
        if missing:
            raise ConfigError(f"the report lacks {len(missing)} of the 75 corruption results (e.g. {missing[0]}); "
                              "the leaderboard's number is the mean over all 15 corruptions at severities 1 to 5")
        mean = f"{100 * report['corruptions']['mean']:.2f}"
        claim.update({"eps": None, "clean_acc": f"{100 * accuracy['clean']:.2f}", "reported": mean,
                      "corruptions_acc": mean})
    else:
        if "autoattack" not in accuracy:
            raise ConfigError("the report has no AutoAttack result; run `dsnet eval` with autoattack (the default) "
                              "before writing a RobustBench claim")
        eps, board = float(threat_data["eps"]), threat.leaderboard_eps[dataset]
        if not math.isclose(eps, board, rel_tol=1e-6) or threat_data.get("custom_overrides"):
            why = "custom attack settings" if math.isclose(eps, board, rel_tol=1e-6) else f"ε = {claim_eps(eps)}"
            raise ConfigError(f"the report was made with {why}, but RobustBench's {threat.name} {dataset} leaderboard "
                              f"is at ε = {claim_eps(board)} with the standard attacks; evaluate again with "
                              f"`dsnet eval --threat-model {threat.name} --preset standard` for a claim")
        aa = f"{100 * accuracy['autoattack']:.2f}"
        claim.update({"eps": claim_eps(eps), "clean_acc": f"{100 * accuracy['clean']:.2f}", "reported": aa,
                      "autoattack_acc": aa})
    selection = report.get("selection") or {}
    if selection.get("n", 0) < selection.get("total", 0):
        claim["footnote"] = (f"Evaluated on {selection['n']} of {selection['total']} test points "
                             f"({selection.get('kind', '')}); RobustBench expects the full test set.")
    return claim


def claim_path(out_dir: str | Path, report: Mapping[str, Any], name: str) -> Path:
    """Where RobustBench keeps the claim: `<out_dir>/model_info/<dataset>/<threat model>/<name>.json`."""
    threat = (report.get("threat_model") or {}).get("name") or "Linf"
    return Path(out_dir) / "model_info" / str(report.get("dataset", "")) / threat / f"{name}.json"


def export_model(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    report: str | Path | None = None,
    name: str | None = None,
    model_name: str | None = None,
    dataset: str | None = None,
) -> ExportResult:
    """Writes a checkpoint as a RobustBench-style model (see the module docstring).

    Args:
        checkpoint: a checkpoint written by `dsnet train`, or a tensors-only state dict with `model_name`.
        out_dir: folder for the files (created).
        report: a `report.json` of `dsnet eval` on this checkpoint; adds the claim JSON.
        name: file name stem, e.g. "Liu2021DSNet_DSNet-6"; default the model name.
        model_name: the architecture, for a bare state dict.
        dataset: the dataset, for a bare state dict.

    Returns:
        The paths written.

    Raises:
        CheckpointError: unreadable checkpoint or one of another architecture.
        ConfigError: a bad name, or a report that belongs to other weights or has no AutoAttack result.
    """
    from dsnet.evaluation.loading import load_model_for_evaluation

    out = ensure_writable_folder(out_dir)  # before anything is loaded
    loaded = load_model_for_evaluation(checkpoint, model_name=model_name, dataset=dataset, device="cpu")
    name = name or loaded.model_name
    if not _NAME.match(name):
        raise ConfigError(f"--name {name!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit")
    report_data = None
    if report is not None:
        report_path = Path(report)
        try:
            report_data = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot read the report {report_path} ({error}); pass a report.json of `dsnet eval`") \
                from None
        evaluated = (report_data.get("model") or {}).get("weights_sha256")
        if evaluated != loaded.weights_sha256:
            raise ConfigError(f"{report_path} evaluated other weights than {checkpoint} (sha256 {str(evaluated)[:12]} "
                              f"vs {loaded.weights_sha256[:12]}); run `dsnet eval` on this checkpoint first")
    claim = None
    if report_data is not None:  # refused before any file is written
        additional = bool(((loaded.config.get("data") or {}).get("svhn_extra")))
        claim = robustbench_claim(report_data, architecture=loaded.model_name, additional_data=additional)

    state_dict = {key: value.detach().cpu().contiguous() for key, value in loaded.model.state_dict().items()}
    suspicious = [key for key in state_dict if "module." in key or "model." in key]
    if suspicious:
        logger.warning("state dict keys such as %s contain 'module.' or 'model.', which RobustBench's loader strips",
                       suspicious[0])
    weights_path = out / f"{name}.pt"
    from dsnet.runtime.checkpoint import save_checkpoint

    save_checkpoint({"state_dict": state_dict}, weights_path, hint="free disk space and export again")
    num_channels = next(iter(t for t in state_dict.values() if t.dim() == 4)).shape[1]
    spec = {
        "format": EXPORT_FORMAT,
        "name": name,
        "model_name": loaded.model_name,
        "model_kwargs": loaded.model_kwargs,
        "num_classes": loaded.num_classes,
        "dataset": loaded.dataset,
        "input": {"layout": "NCHW", "shape": [int(num_channels), 32, 32], "range": [0.0, 1.0], "dtype": "float32",
                  "normalization": {"mean": [0.0] * num_channels, "std": [1.0] * num_channels,
                                    "applied_by": "the model (forward pre-hook)"}},
        "weights": {"file": weights_path.name, "sha256": file_sha256(weights_path), "layout": "{'state_dict': ...}",
                    "tensors_sha256": loaded.weights_sha256, "which": loaded.source.get("weights")},
        "trained_with": loaded.trained_with,
        "source_checkpoint": str(checkpoint),
        "loader": "dsnet.evaluation.export.load_exported",
        "versions": {"dsnet": dsnet.__version__, "torch": str(torch.__version__)},
    }
    if report_data is not None:
        spec["evaluation"] = {"threat_model": report_data.get("threat_model"), "accuracy": report_data.get("accuracy"),
                              "n": report_data.get("n")}
    spec_path = out / f"{name}{_SPEC_SUFFIX}"
    write_text_atomic(spec_path, dumps_json(spec) + "\n")

    # Check the round trip: the exported model must give the checkpoint's logits.
    reloaded = load_exported(out, name=name)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, int(num_channels), 32, 32, generator=generator)
    with torch.no_grad():
        if not torch.equal(reloaded(x), loaded.model(x)):
            raise DsnetError(f"the exported model in {out} does not reproduce the checkpoint's logits; "
                             "please report this")

    claim_file = None
    if report_data is not None and claim is not None:
        if "footnote" in claim:
            logger.warning("the report covers %s of %s test points; RobustBench expects the full test set",
                           report_data["selection"]["n"], report_data["selection"]["total"])
        claim_file = claim_path(out, report_data, name)
        write_text_atomic(claim_file, json.dumps(claim, indent=2) + "\n")
    logger.info("exported %s to %s", checkpoint, out)
    return ExportResult(weights_path, spec_path, claim_file)


def load_exported(directory: str | Path, *, name: str | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuilds a model written by `export_model`.

    Args:
        directory: the export folder.
        name: which export, when the folder holds several; default the only one.
        device: where the model goes.

    Returns:
        The model: (B, 3, H, W) float images in [0, 1] -> logits, normalisation inside, fp32, eval mode.

    Raises:
        CheckpointError: no export in the folder, several without `name`, a weights file that does not match its
            checksum, or weights of another architecture.
    """
    from dsnet.models import create_model
    from dsnet.runtime.checkpoint import load_checkpoint, load_model_state

    folder = Path(directory)
    specs = sorted(folder.glob(f"*{_SPEC_SUFFIX}")) if name is None else [folder / f"{name}{_SPEC_SUFFIX}"]
    if not specs or not specs[0].is_file():
        found = ", ".join(p.name for p in folder.glob(f"*{_SPEC_SUFFIX}")) or "none"
        raise CheckpointError(f"no exported model {name or ''} in {folder} (architecture files: {found}); "
                              "write one with `dsnet export`")
    if len(specs) > 1:
        names = ", ".join(p.name[: -len(_SPEC_SUFFIX)] for p in specs)
        raise CheckpointError(f"{folder} holds several exported models ({names}); pass name=")
    spec_path = specs[0]
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {spec_path} ({error})") from None
    if spec.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{spec_path} is not a dsnet export (format {spec.get('format')!r})")
    weights_path = folder / spec["weights"]["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; export the model again")
    if file_sha256(weights_path) != spec["weights"]["sha256"]:
        raise CheckpointError(f"{weights_path} does not match the checksum in {spec_path.name}; it was modified or "
                              "is corrupt")
    payload = load_checkpoint(weights_path)
    state_dict = payload.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{weights_path} holds no 'state_dict'")
    kwargs = dict(spec.get("model_kwargs") or {})
    model = create_model(spec["model_name"], num_classes=int(spec["num_classes"]), **kwargs)
    load_model_state(model, state_dict, path=weights_path, expected_name=spec["model_name"])
    normalization = spec["input"]["normalization"]
    with_input_normalization(model, normalization["mean"], normalization["std"])
    return model.float().to(device).eval()
