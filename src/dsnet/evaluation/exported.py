"""Reading an export of `dsnet export` back: from its folder, its weights file, or `hf://ORG/REPO[@REVISION]`.

An export is a spec (`NAME.architecture.json`, or `config.json` beside `model.safetensors`) and the weights it
names, checked against the SHA-256 the spec records, plus a copy of the factory's file for a model of
`--model-factory`. `find_export` finds the spec, `read_export` reads and checks the files, `build_exported` rebuilds
the model, and `load_exported` does all three (through the Hub's cache for an `hf://` reference). `dsnet eval
--checkpoint` uses the same functions (`dsnet.evaluation.loading`); `dsnet.evaluation.export` writes exports.

The normalisation is a forward pre-hook with non-persistent buffers on the network itself, rather than a
wrapper module: a wrapper would prefix every key (`model.stem.weight`), and RobustBench's loader strips
`model.` from keys. This way the exported state dict loads into `create_model(...)` unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dsnet.errors import CheckpointError
from dsnet.runtime.hashing import file_sha256

__all__ = ["load_exported", "read_export", "find_export", "build_exported", "ExportedFiles",
           "with_input_normalization", "spec_normalization", "EXPORT_FORMAT", "SPEC_SUFFIX"]

EXPORT_FORMAT = "dsnet-export/1"
SPEC_SUFFIX = ".architecture.json"
"""The spec of a `pt` export: `NAME.architecture.json` beside `NAME.pt`."""


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
    from dsnet.evaluation.config import check_normalization

    mean, std = check_normalization(mean, std, channels=len(mean))
    if hasattr(model, "input_mean"):
        raise ValueError("the model normalises its input already")
    model.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
    model.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x, *rest = args
        return ((x - module.input_mean) / module.input_std, *rest)

    model.register_forward_pre_hook(normalize)
    return model


def spec_normalization(spec: Mapping[str, Any]) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The (mean, std) an export's model applies to its [0, 1] input; None for a model that needs none (the spec
    then records mean 0 and std 1)."""
    normalization = (spec.get("input") or {}).get("normalization") or {}
    mean, std = tuple(normalization.get("mean") or ()), tuple(normalization.get("std") or ())
    if all(float(m) == 0.0 for m in mean) and all(float(v) == 1.0 for v in std):
        return None
    return mean, std


def _instantiate(spec: Mapping[str, Any], factory_file: Path | None, device: torch.device | str) -> nn.Module:
    """The network a spec describes, without weights: a registered architecture, or a factory's (`factory_file`)."""
    from dsnet.models import create_model

    factory = spec.get("factory")
    if factory:
        from dsnet.evaluation.factory import load_factory

        assert factory_file is not None
        model, _ = load_factory(f"{factory_file}:{factory['function']}", dict(factory.get("kwargs") or {}))
    else:
        model = create_model(spec["model_name"], num_classes=int(spec["num_classes"]),
                             **dict(spec.get("model_kwargs") or {}))
    return model.to(device)


def _as_exported(network: nn.Module, state_dict: Mapping[str, torch.Tensor], spec: Mapping[str, Any],
                 path: object) -> nn.Module:
    """`network` with the exported weights and the spec's input normalisation, fp32, eval mode: what a user of the
    export gets."""
    from dsnet.runtime.checkpoint import load_model_state

    load_model_state(network, dict(state_dict), path=path, expected_name=spec["model_name"])
    normalization = spec["input"]["normalization"]
    with_input_normalization(network, normalization["mean"], normalization["std"])
    return network.float().eval()


@dataclass(frozen=True)
class ExportedFiles:
    """An export as read from its folder, checked against its digests.

    Attributes:
        spec: the architecture spec (`NAME.architecture.json` or `config.json`).
        spec_path: where it was read.
        weights_path: the weights file.
        state_dict: the weights (tensors only; a safetensors file is never unpickled).
        factory_file: the copy of the factory's file, for a model of `--model-factory`.
    """

    spec: dict[str, Any]
    spec_path: Path
    weights_path: Path
    state_dict: dict[str, torch.Tensor]
    factory_file: Path | None = None

    @property
    def format(self) -> str:
        return "safetensors" if self.weights_path.name.endswith(".safetensors") else "pt"


def _read_spec(path: Path) -> dict[str, Any]:
    """The content of a dsnet export's spec.

    Raises:
        CheckpointError: an unreadable file, or one that is not a spec of `dsnet export`.
    """
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read {path} ({error})") from None
    if not isinstance(spec, dict) or spec.get("format") != EXPORT_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else None
        raise CheckpointError(f"{path} is not a dsnet export (format {found!r})")
    return spec


def _spec_or_none(path: Path) -> dict[str, Any] | None:
    """The content of `path` if it is a dsnet export's spec, else None."""
    try:
        return _read_spec(path)
    except CheckpointError:
        return None


def _exports_in(folder: Path) -> dict[str, Path]:
    """name -> spec file of every export in `folder` (a safetensors export wins over a `.pt` one of the same name:
    nothing is unpickled)."""
    from dsnet.evaluation.hub import EXPORT_CONFIG

    found = {p.name[: -len(SPEC_SUFFIX)]: p for p in sorted(folder.glob(f"*{SPEC_SUFFIX}"))}
    config = folder / EXPORT_CONFIG
    spec = _spec_or_none(config) if config.is_file() else None
    if spec is not None:
        found[str(spec.get("name"))] = config
    return found


def find_export(path: str | Path, name: str | None = None) -> Path | None:
    """The spec of the export at `path`: a folder holding one (or `name`), or the weights file of one (a
    `model.safetensors` beside its `config.json`, a `NAME.pt` beside its `NAME.architecture.json`); None for a path
    that is no export (a training checkpoint, a bare state dict).

    Raises:
        CheckpointError: a folder without an export, without `name`, or with several and no `name`.
    """
    from dsnet.evaluation.hub import EXPORT_CONFIG

    path = Path(path)
    if path.is_file():
        for candidate in (path.with_name(EXPORT_CONFIG), path.with_name(path.name.rpartition(".")[0] + SPEC_SUFFIX)):
            spec = _spec_or_none(candidate) if candidate.is_file() else None
            if spec is not None and (spec.get("weights") or {}).get("file") == path.name and \
                    (name is None or spec.get("name") == name):
                return candidate
        return None
    if not path.is_dir():
        return None
    found = _exports_in(path)
    if name is not None:
        if name not in found:
            raise CheckpointError(f"no exported model {name} in {path} (exports: {', '.join(found) or 'none'}); "
                                  "write one with `dsnet export`")
        return found[name]
    if not found:
        raise CheckpointError(f"no exported model in {path} (no config.json or *{SPEC_SUFFIX} of `dsnet export`); "
                              "write one with `dsnet export`, or pass the checkpoint file itself")
    if len(found) > 1:
        raise CheckpointError(f"{path} holds several exported models ({', '.join(found)}); pass name= (Python) or "
                              "the weights file itself (--checkpoint)")
    return next(iter(found.values()))


def read_export(spec_path: str | Path) -> ExportedFiles:
    """Reads an export's spec, weights and factory copy, each checked against the digest the spec records.

    Raises:
        CheckpointError: an unreadable spec, a missing or modified weights or factory file.
    """
    from dsnet.runtime.checkpoint import load_checkpoint

    spec_path = Path(spec_path)
    spec = _read_spec(spec_path)
    folder = spec_path.parent
    weights_path = folder / spec["weights"]["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path} is missing; export the model again")
    if file_sha256(weights_path) != spec["weights"]["sha256"]:
        raise CheckpointError(f"{weights_path} does not match the checksum in {spec_path.name}; it was modified or "
                              "is corrupt")
    state_dict = load_checkpoint(weights_path).get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{weights_path} holds no 'state_dict'")
    factory_file = None
    if spec.get("factory"):
        factory_file = folder / spec["factory"]["file"]
        if not factory_file.is_file():
            raise CheckpointError(f"{factory_file} is missing; it builds the network of {spec_path.name}: export the "
                                  "model again")
        if file_sha256(factory_file) != spec["factory"].get("sha256"):
            raise CheckpointError(f"{factory_file} does not match the checksum in {spec_path.name}; the model's code "
                                  "was modified since the export")
    return ExportedFiles(spec, spec_path, weights_path, state_dict, factory_file)


def build_exported(files: ExportedFiles, device: torch.device | str = "cpu") -> nn.Module:
    """The model an export describes, with its weights and its input normalisation, fp32, eval mode."""
    network = _instantiate(files.spec, files.factory_file, "cpu")
    return _as_exported(network, files.state_dict, files.spec, files.weights_path).to(device)


def load_exported(directory: str | Path, *, name: str | None = None, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuilds a model written by `export_model`.

    Args:
        directory: the export folder, or `hf://ORG/REPO[@REVISION]` for one on the Hugging Face Hub (through its
            cache; `HF_HUB_OFFLINE=1` reads the cache only).
        name: which export, when the folder holds several; default the only one.
        device: where the model goes.

    Returns:
        The model: (B, 3, H, W) float images in [0, 1] -> logits, normalisation inside, fp32, eval mode.

    Raises:
        CheckpointError: no export in the folder, several without `name`, a weights file that does not match its
            checksum, weights of another architecture, or a Hub repository, revision or file that cannot be had.
    """
    from dsnet.evaluation.hub import is_hub_reference, resolve_hub_checkpoint

    folder = Path(directory)
    if is_hub_reference(directory):
        local, _ = resolve_hub_checkpoint(str(directory))
        folder = local if local.is_dir() else local.parent
    spec_path = find_export(folder, name)
    if spec_path is None:
        raise CheckpointError(f"{directory} is not an export of `dsnet export`; load a checkpoint with "
                              "dsnet.evaluation.load_model_for_evaluation")
    return build_exported(read_export(spec_path), device)
