"""Exporting a checkpoint as a RobustBench-style model, and loading it back.

`export_model(checkpoint, out_dir, report=..., name=NAME, format=...)` writes into `out_dir`, in one of two formats
that hold the same things:

- `pt` (RobustBench's submissions): `NAME.pt`, `{"state_dict": ...}`, tensors only (loads with
  `torch.load(..., weights_only=True)`), and `NAME.architecture.json`;
- `safetensors` (the Hugging Face Hub's, as `PyTorchModelHubMixin` and timm lay it out): `model.safetensors` and
  `config.json`, read without unpickling anything; with `hub_card`, also the Hub's model card `README.md`
  (`dsnet.evaluation.model_card`), so the folder uploads as it is and loads back as `hf://ORG/REPO`.

The weights are fp32 with the architecture's own keys (no `module.`, `_orig_mod.` or wrapper prefix). The spec
(`NAME.architecture.json` / `config.json`) is what rebuilds the model: registered name, constructor kwargs, number
of classes and their names, or a user's factory; the input convention (NCHW float in [0, 1], the per-channel
normalisation the model applies itself); and the weights' SHA-256 (of the file and of the tensors). Besides:

- `NAME.factory.py` (a model built by `--model-factory` only): a copy of the factory's file, which
  `load_exported` imports after checking its digest;
- `model_info/<dataset>/<Linf|L2|corruptions>/NAME.json` (only with a report): the claim in RobustBench's format
  and place, with clean and robust accuracy filled in from `report.json` (AutoAttack for Linf and L2, the mean
  over the 15 corruptions × 5 severities for corruptions) and the bibliographic fields left empty. A report whose
  threat model has no leaderboard (L1), or whose ε is not the leaderboard's (the paper's 0.031 instead of 8/255),
  is refused before any file is written; a safetensors export, which is for the Hub, takes any report into its
  card and writes the claim only for a leaderboard's.

**An export is the model that was evaluated.** With a report, the export takes the evaluation's model as the
report describes it: its normalisation (`--normalize`), its factory and arguments, which weights of a checkpoint
(the average or the raw ones), and a given option that contradicts the report is refused. Before anything is
written, the model as `load_exported` will rebuild it is run on the report's own points (read from the data
folder the report names, or `--data-dir`, and checked against the report's digest of them) and must reproduce the
report's clean per-point flags; the report's weights and model code must be the export's too. A point whose two
highest logits are within float noise of each other (`FLAG_TIE`) may flip between devices and is tolerated.

**Nothing is written over another command's file.** The names an export writes are reserved in the folder's
manifest (`dsnet.runtime.ownership`): `--name last` in a run folder is refused (last.pt is the training run's), as
is any name that a person or another command wrote, and an earlier export whose files were edited by hand.

`load_exported(out_dir)` rebuilds the model from those files, or from `hf://ORG/REPO[@REVISION]` through the Hub's
cache (`dsnet.evaluation.hub`): inputs in [0, 1], normalisation inside (mean 0 and std 1 for a model that needs
none), fp32, eval mode. `read_export` is the reading half, which `dsnet eval --checkpoint FOLDER` uses too.

The reading half (`load_exported`, `read_export`, `find_export`, `with_input_normalization`) lives in
`dsnet.evaluation.exported` and is importable from here too.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import dsnet
from dsnet.errors import ConfigError, DsnetError
from dsnet.evaluation.exported import (
    EXPORT_FORMAT,
    SPEC_SUFFIX,
    ExportedFiles,
    _as_exported,
    _instantiate,
    build_exported,
    find_export,
    load_exported,
    read_export,
    with_input_normalization,
)
from dsnet.evaluation.report import dumps_json, flags_from_string
from dsnet.runtime.files import ensure_writable_folder, write_atomic, write_text_atomic
from dsnet.runtime.hashing import file_sha256, tensors_sha256
from dsnet.runtime.ownership import FolderFiles

__all__ = ["export_model", "load_exported", "read_export", "find_export", "ExportedFiles", "robustbench_claim",
           "claim_path", "with_input_normalization", "ExportResult", "EXPORT_FORMAT", "EXPORT_FORMATS",
           "EXPORT_WRITER", "FLAG_TIE"]

logger = logging.getLogger(__name__)

EXPORT_FORMATS = ("pt", "safetensors")
"""File formats of `dsnet export --format`: RobustBench's pickled-tensors `.pt`, or the Hub's safetensors."""
EXPORT_WRITER = "dsnet export"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FACTORY_SUFFIX = ".factory.py"
_HINT = "choose another --name or --out-dir"

FLAG_TIE = 1e-4
"""A point whose two highest logits differ by less than this (relative to the largest logit, at least 1) may be
classified either way on another device or library version; such a point may disagree with the report."""


@dataclass(frozen=True)
class ExportResult:
    """The files `export_model` wrote, and what it checked against the report.

    Attributes:
        weights: `NAME.pt` or `model.safetensors`.
        architecture: `NAME.architecture.json` or `config.json`.
        claim: the RobustBench claim (with a report).
        factory: the copy of the factory's file (for a model of `--model-factory`).
        verified: with a report: points checked, how many agree with the report's clean flags, near-ties.
        card: the Hub model card `README.md` (with `hub_card`).
    """

    weights: Path
    architecture: Path
    claim: Path | None
    factory: Path | None = None
    verified: dict[str, Any] | None = None
    card: Path | None = None


def robustbench_claim(report: Mapping[str, Any], *, architecture: str, additional_data: bool = False) -> dict[str, Any]:
    """A RobustBench claim (`model_info/<dataset>/<threat model>/<name>.json`) from an evaluation report.

    Accuracies are percentages as strings with two decimals; `reported` is the report's number for the
    leaderboard, as its suite says (AutoAttack's accuracy for Linf and L2, the mean corruption accuracy for the
    corruptions); link, name, authors and venue are left empty for the user. `evaluation_math` (ours, which
    RobustBench's loaders ignore) says whether the attacks ran in IEEE fp32 or TF32 (`dsnet eval --math`).

    Args:
        report: the content of a `report.json` written by `dsnet eval`.
        architecture: the architecture as the leaderboard shows it.
        additional_data: whether training used data beyond the dataset's training split.

    Raises:
        ConfigError: the report's threat model, dataset or ε is not a leaderboard's, or it lacks the leaderboard's
            number (AutoAttack, or one of the 75 corruption results).
    """
    from dsnet.evaluation.config import get_suite

    suite = get_suite((report.get("threat_model") or {}).get("name") or "Linf")
    dataset = report.get("dataset", "")
    if dataset not in suite.leaderboard_eps:
        boards = ", ".join(suite.leaderboard_eps) or "none"
        raise ConfigError(f"RobustBench has no {suite.name} leaderboard for {dataset} (it has: {boards}); no claim "
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
        **suite.leaderboard_numbers(report),
        # not a RobustBench field: the fp32 math the attacks ran in (`dsnet eval --math`), IEEE unless TF32 was asked
        "evaluation_math": (report.get("device") or {}).get("math_setting", "fp32"),
    }
    selection = report.get("selection") or {}
    if selection.get("n", 0) < selection.get("total", 0):
        claim["footnote"] = (f"Evaluated on {selection['n']} of {selection['total']} test points "
                             f"({selection.get('kind', '')}); RobustBench expects the full test set.")
    return claim


def claim_path(out_dir: str | Path, report: Mapping[str, Any], name: str) -> Path:
    """Where RobustBench keeps the claim: `<out_dir>/model_info/<dataset>/<threat model>/<name>.json`."""
    threat = (report.get("threat_model") or {}).get("name") or "Linf"
    return Path(out_dir) / "model_info" / str(report.get("dataset", "")) / threat / f"{name}.json"


def _read_report(path: str | Path) -> dict[str, Any]:
    report_path = Path(path)
    try:
        data = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read the report {report_path} ({error}); pass a report.json of `dsnet eval`") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{report_path} is not a report.json of `dsnet eval`")
    return data


def _recorded_factory(source: Mapping[str, Any]) -> str:
    """The factory of an evaluation, as a spec that works from any folder: a file by its absolute path, a module by
    its import name."""
    where, _, function = str(source["factory"]).rpartition(":")
    if source.get("file") and (where.endswith(".py") or "/" in where or "\\" in where):
        return f"{source['file']}:{function}"
    return str(source["factory"])


def _from_report(report: Mapping[str, Any] | None, path: object, given: dict[str, Any]) -> dict[str, Any]:
    """The loading options of the evaluated model: each taken from the report where it was not given, and a given
    one that contradicts the report refused (an export must be the model the report's numbers are about)."""
    if report is None:
        return dict(given)
    model = report["model"]
    source = model.get("source") or {}
    kind = source.get("kind")
    if kind == "dsnet export":  # an export's architecture, arguments and input convention come with its files
        return {**given, "dataset": given.get("dataset") or report.get("dataset")}
    if kind == "module":
        raise ConfigError(f"{path} evaluated a module handed to evaluate() from Python, which an export cannot "
                          "rebuild; write a factory for it and evaluate with --model-factory")
    normalize = source.get("normalize")
    recorded = {
        "dataset": report.get("dataset"),
        "normalize": (tuple(normalize["mean"]), tuple(normalize["std"])) if normalize else None,
        "weights": source.get("weights_choice") if source.get("weights_choice") in ("ema", "raw") else None,
        "model_name": model.get("name") if kind == "state dict" else None,
        "model_factory": _recorded_factory(source) if kind == "factory" else None,
        "model_kwargs": (dict(source.get("kwargs") or {}) if kind == "factory"
                         else dict(model.get("kwargs") or {}) or None if kind == "state dict" else None),
    }
    resolved = dict(given)
    flags = {"dataset": "--dataset", "normalize": "--normalize", "weights": "--weights", "model_name": "--model",
             "model_factory": "--model-factory", "model_kwargs": "--model-kwargs"}
    for key, value in recorded.items():
        mine = given.get(key)
        if mine is None or (key == "weights" and mine == "auto"):
            if value is not None:
                resolved[key] = value
            continue
        if key == "model_factory" and value is not None:
            same = Path(str(mine).rpartition(":")[0]).resolve() == Path(str(value).rpartition(":")[0]).resolve() \
                and str(mine).rpartition(":")[2] == str(value).rpartition(":")[2]
        elif key == "normalize" and value is not None:
            same = [list(map(float, v)) for v in mine] == [list(map(float, v)) for v in value]
        elif key == "model_kwargs":
            from dsnet.evaluation.factory import parse_model_kwargs

            same = parse_model_kwargs(mine) == (value or {})
        else:
            same = mine == value
        if not same:
            what = value if value is not None else "none"
            raise ConfigError(f"{flags[key]} {mine!r} contradicts {path}, which evaluated the model with "
                              f"{flags[key]} {what!r}; an export must be the model that was evaluated: leave "
                              f"{flags[key]} out, or evaluate this model first")
    return resolved


def _check_report_is_of(report: Mapping[str, Any], loaded: Any, path: object, checkpoint: object) -> None:
    """The report's weights and model code must be the ones exported."""
    from dsnet.evaluation.state import _differences

    model = report["model"]
    if model.get("weights_sha256") != loaded.weights_sha256:
        raise ConfigError(f"{path} evaluated other weights than {checkpoint} (sha256 "
                          f"{str(model.get('weights_sha256'))[:12]} vs {loaded.weights_sha256[:12]}); run `dsnet eval` "
                          "on this checkpoint first")
    if "code" in model:
        changed = _differences({"model_code": model["code"]}, {"model_code": loaded.code})
        if changed:
            raise ConfigError(f"{path} evaluated the model with other code ({'; '.join(changed[:3])}); evaluate it "
                              "again with this code before exporting a claim")


def _flags_of(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-point clean flags and top-2 logit margins (relative), in true fp32."""
    from dsnet.runtime.precision import full_fp32

    flags, margins = [], []
    with full_fp32(device.type), torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            x = images[start : start + batch_size].to(device).float().div_(255)
            logits = model(x).float()
            top = logits.topk(2, dim=1).values
            scale = logits.abs().amax(dim=1).clamp_min(1.0)
            flags.append((logits.argmax(dim=1) == labels[start : start + batch_size].to(device)).cpu())
            margins.append(((top[:, 0] - top[:, 1]) / scale).cpu())
    return torch.cat(flags), torch.cat(margins)


def _verify_clean_flags(model: nn.Module, report: Mapping[str, Any], report_path: object,
                        data_dir: str | Path | None, device: torch.device) -> dict[str, Any]:
    """Runs the model to be exported on the report's points and compares its clean flags with the report's.

    Raises:
        ConfigError: no data folder, other images than the report's, or flags that differ beyond float ties.
    """
    from dsnet.data import load_dataset

    points = report.get("points") or {}
    expected_text = (points.get("robust_flags") or {}).get("clean")
    if not points.get("indices") or not expected_text:
        raise ConfigError(f"{report_path} holds no per-point flags to check the export against; evaluate again "
                          "with `dsnet eval`")
    recorded = report.get("data") or {}
    folder = data_dir if data_dir is not None else recorded.get("dir")
    if folder is None:
        raise ConfigError(f"{report_path} does not say which data folder it evaluated; pass --data-dir")
    data = load_dataset(report["dataset"], folder, report.get("split", "test"), download=False)
    indices = torch.tensor(points["indices"], dtype=torch.int64)
    if indices.numel() and int(indices.max()) >= len(data):
        raise ConfigError(f"{folder} holds {len(data)} {report['dataset']} {report.get('split')} images, fewer than "
                          f"the points {report_path} evaluated; pass the --data-dir it evaluated")
    images, labels = data.images.index_select(0, indices), data.labels.index_select(0, indices)
    digest = tensors_sha256([("images", images), ("labels", labels)])
    if recorded.get("sha256") and digest != recorded["sha256"]:
        raise ConfigError(f"the images in {folder} are not the ones {report_path} evaluated (sha256 {digest[:12]}… vs "
                          f"{str(recorded['sha256'])[:12]}…); pass the --data-dir it evaluated")
    flags, margins = _flags_of(model, images, labels, device)
    expected = flags_from_string(expected_text)
    differ = flags != expected
    ties = differ & (margins < FLAG_TIE)
    wrong = differ & ~ties
    if bool(wrong.any()):
        first = int(wrong.nonzero()[0, 0])
        said = "correct" if bool(expected[first]) else "wrong"
        raise ConfigError(
            f"the exported model does not reproduce {report_path}: {int(wrong.sum())} of {len(flags)} points are "
            f"classified otherwise (e.g. point {int(indices[first])}: the report says {said}); the export would not "
            "be the model that was evaluated. Check that --normalize, --model-factory and --weights match the "
            "evaluation (they are taken from the report when left out)")
    return {"points": len(flags), "agree": int((~differ).sum()), "near_ties": int(ties.sum()), "data_sha256": digest,
            "data_dir": str(folder)}


def export_model(
    checkpoint: str | Path | None,
    out_dir: str | Path,
    *,
    report: str | Path | None = None,
    name: str | None = None,
    model_name: str | None = None,
    dataset: str | None = None,
    model_factory: str | None = None,
    model_kwargs: dict[str, Any] | str | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    weights: str | None = None,
    data_dir: str | Path | None = None,
    device: torch.device | str = "cpu",
    format: str | None = None,
    hub_card: bool | str = False,
) -> ExportResult:
    """Writes a model as a RobustBench-style or Hub-style export (see the module docstring).

    Args:
        checkpoint: a checkpoint written by `dsnet train`, or a tensors-only state dict (with `model_name`, or the
            weights of `model_factory`); None for a factory's own weights.
        out_dir: folder for the files (created).
        report: a `report.json` of `dsnet eval` on this model; adds the claim JSON, and the export must reproduce
            its clean flags on its points.
        name: file name stem, e.g. "Liu2021DSNet_DSNet-6"; default the model name.
        model_name: the architecture, for a bare state dict (default: the report's).
        dataset: the dataset, for a bare state dict or a factory (default: the report's).
        model_factory: `FILE.py:FUNCTION` that builds the network (default: the report's factory).
        model_kwargs: the factory's keyword arguments (default: the report's).
        normalize: (mean, std) the network expects its inputs normalised with (default: the report's).
        weights: "auto", "ema" or "raw", for a checkpoint with a weight average (default: the report's).
        data_dir: where the report's points are (default: the folder the report names).
        device: where the check on the report's points runs ("cpu", "cuda", "auto").
        format: "pt" (`NAME.pt` + `NAME.architecture.json`) or "safetensors" (`model.safetensors` + `config.json`);
            default safetensors with `hub_card`, else pt.
        hub_card: also write the Hub's model card `README.md` (safetensors only); a string names the repository
            ("ORG/REPO") in the card's loading instructions.

    Returns:
        The paths written and what was verified.

    Raises:
        CheckpointError: unreadable checkpoint or one of another architecture.
        ConfigError: a bad name, an option contradicting the report, a report of other weights, code or points, a
            report the export does not reproduce, or one that has no leaderboard claim.
        OverwriteError: a name that would replace a file this command did not write (nothing is written).
    """
    from dsnet.evaluation.hub import EXPORT_CONFIG, EXPORT_WEIGHTS
    from dsnet.evaluation.loading import NormalizedInput, load_model_for_evaluation
    from dsnet.runtime.checkpoint import save_checkpoint, save_safetensors
    from dsnet.runtime.distributed import resolve_device

    format = format or ("safetensors" if hub_card else "pt")
    if format not in EXPORT_FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(EXPORT_FORMATS)}, got {format!r}")
    if hub_card and format != "safetensors":
        raise ConfigError("--hub-card describes a Hub export, which is safetensors: use --format safetensors")
    if isinstance(hub_card, str):
        from dsnet.evaluation.hub import parse_hub_reference

        hub_card = parse_hub_reference(hub_card).repo
    out = ensure_writable_folder(out_dir)  # before anything is loaded
    device = resolve_device(str(device), option="--device")
    report_data = _read_report(report) if report is not None else None
    options = _from_report(report_data, report, {
        "model_name": model_name, "dataset": dataset, "model_factory": model_factory, "model_kwargs": model_kwargs,
        "normalize": normalize, "weights": weights})
    if checkpoint is None and options.get("model_factory") is None:
        raise ConfigError("nothing to export: pass --checkpoint (or --model-factory for a model of your own)")
    loaded = load_model_for_evaluation(checkpoint, device="cpu", weights=options.get("weights") or "auto",
                                       **{k: options.get(k) for k in ("model_name", "dataset", "model_factory",
                                                                      "model_kwargs", "normalize")})
    if (loaded.source.get("export") or {}).get("factory"):
        raise ConfigError(f"{checkpoint} is an export of a --model-factory model; export it again from its weights "
                          "with --model-factory (the factory's code is not re-exported from a copy)")
    network = loaded.model.model if isinstance(loaded.model, NormalizedInput) else loaded.model
    factory = loaded.source if loaded.source.get("kind") == "factory" else None
    name = name or (str(factory["factory"]).rpartition(":")[2] if factory else loaded.model_name)
    if not _NAME.match(name):
        raise ConfigError(f"--name {name!r} must be letters, digits, '_', '-' or '.', starting with a letter or digit")
    claim = None
    if report_data is not None:  # refused before any file is written
        _check_report_is_of(report_data, loaded, report, checkpoint)
        additional = bool(((loaded.config.get("data") or {}).get("svhn_extra")))
        try:
            claim = robustbench_claim(report_data, architecture=loaded.model_name, additional_data=additional)
        except ConfigError as error:
            if format != "safetensors":  # a RobustBench export exists for its claim
                raise
            # the Hub takes any evaluation (its card says which); only a leaderboard's gets RobustBench's claim
            logger.info("no RobustBench claim: %s", error)
    safetensors = format == "safetensors"
    weights_path = out / (EXPORT_WEIGHTS if safetensors else f"{name}.pt")
    spec_path = out / (EXPORT_CONFIG if safetensors else f"{name}{SPEC_SUFFIX}")
    factory_path = out / f"{name}{_FACTORY_SUFFIX}" if factory else None
    claim_file = claim_path(out, report_data, name) if claim is not None else None
    card_path = out / "README.md" if hub_card else None
    names = [p.relative_to(out).as_posix() for p in (weights_path, spec_path, factory_path, claim_file, card_path)
             if p is not None]
    files = FolderFiles(out)
    files.check(names, EXPORT_WRITER, hint=_HINT)

    state_dict = {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}
    suspicious = [key for key in state_dict if "module." in key or "model." in key]
    if suspicious:
        logger.warning("state dict keys such as %s contain 'module.' or 'model.', which RobustBench's loader strips",
                       suspicious[0])
    num_channels = next(iter(t for t in state_dict.values() if t.dim() == 4)).shape[1]
    mean, std = ((list(loaded.source["normalize"]["mean"]), list(loaded.source["normalize"]["std"]))
                 if loaded.source.get("normalize") else ([0.0] * num_channels, [1.0] * num_channels))
    from dsnet.data import DATASETS

    spec: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "library": "dsnet",
        "name": name,
        "model_name": loaded.model_name,
        "model_kwargs": loaded.model_kwargs if factory is None else {},
        "num_classes": loaded.num_classes,
        "dataset": loaded.dataset,
        "classes": list(DATASETS.get(loaded.dataset).classes),
        "input": {"layout": "NCHW", "shape": [int(num_channels), 32, 32], "range": [0.0, 1.0], "dtype": "float32",
                  "normalization": {"mean": mean, "std": std, "applied_by": "the model (forward pre-hook)"}},
        "weights": {"file": weights_path.name,
                    "layout": "safetensors: the state dict" if safetensors else "torch.save: {'state_dict': ...}",
                    "tensors_sha256": loaded.weights_sha256, "which": loaded.source.get("weights")},
        "trained_with": loaded.trained_with,
        "source_checkpoint": str(checkpoint) if checkpoint is not None else None,
        "loader": "dsnet.evaluation.export.load_exported",
        "versions": {"dsnet": dsnet.__version__, "torch": str(torch.__version__)},
    }
    if factory is not None:
        spec["factory"] = {"file": factory_path.name, "function": str(factory["factory"]).rpartition(":")[2],
                           "kwargs": dict(factory.get("kwargs") or {}), "given_as": factory["factory"],
                           "sha256": factory.get("file_sha256")}

    # The model as a user of the export will rebuild it, checked against the report before anything is written.
    exported = _as_exported(_instantiate(spec, Path(factory["file"]) if factory else None, "cpu"), state_dict, spec,
                            checkpoint).to(device)
    verified = None
    if report_data is not None:
        verified = _verify_clean_flags(exported, report_data, report, data_dir, device)
        spec["evaluation"] = {"report": str(Path(report).resolve()), "threat_model": report_data.get("threat_model"),
                              "accuracy": report_data.get("accuracy"), "n": report_data.get("n"),
                              "verified": verified}

    files.reserve(names, EXPORT_WRITER, hint=_HINT)
    if safetensors:
        save_safetensors(state_dict, weights_path, hint="free disk space and export again",
                         metadata={"format": "pt", "library": "dsnet", "dsnet_export": EXPORT_FORMAT,
                                   "model_name": loaded.model_name})
    else:
        save_checkpoint({"state_dict": state_dict}, weights_path, hint="free disk space and export again")
    spec["weights"]["sha256"] = file_sha256(weights_path)
    if factory_path is not None:
        source_bytes = Path(factory["file"]).read_bytes()
        write_atomic(factory_path, lambda handle: handle.write(source_bytes), hint="free disk space and export again")
        spec["factory"]["sha256"] = file_sha256(factory_path)
    write_text_atomic(spec_path, dumps_json(spec) + "\n")
    if card_path is not None:
        from dsnet.evaluation.model_card import model_card

        if report_data is None:
            logger.warning("the model card has no results: pass --report (a report.json of `dsnet eval` on this "
                           "model) to put its numbers in the card")
        write_text_atomic(card_path, model_card(spec, report_data, repo=hub_card if isinstance(hub_card, str)
                                                else None))
    if claim_file is not None and claim is not None:
        if "footnote" in claim:
            logger.warning("the report covers %s of %s test points; RobustBench expects the full test set",
                           report_data["selection"]["n"], report_data["selection"]["total"])
        write_text_atomic(claim_file, json.dumps(claim, indent=2) + "\n")
    files.record_digests({n: out / n for n in names}, EXPORT_WRITER)

    # The round trip: the files must rebuild the model that was checked, logit for logit.
    from dsnet.evaluation.loading import probe_images

    reloaded = build_exported(read_export(spec_path), device)
    x = probe_images(int(num_channels), device=device)
    with torch.no_grad():
        if not torch.equal(reloaded(x), exported(x)) or not torch.equal(exported(x), loaded.model.to(device)(x)):
            raise DsnetError(f"the exported model in {out} does not reproduce the evaluated model's logits; "
                             "please report this")
    if verified is not None:
        logger.info("the export reproduces the clean flags of %s on its %d points (%d near-ties)", report,
                    verified["points"], verified["near_ties"])
    logger.info("exported %s to %s", checkpoint or factory["factory"], out)  # type: ignore[index]
    return ExportResult(weights_path, spec_path, claim_file, factory_path, verified, card_path)


