"""Rebuilding a model to evaluate or export: from a checkpoint, from a user's factory, or from a module given.

Three sources of a model:

- one of ours, from a file (below);
- a user's own architecture, built by `--model-factory FILE.py:FUNCTION` (`dsnet.evaluation.factory`), with its
  weights from `--checkpoint` when given;
- an `nn.Module` passed from Python (`evaluate(model=...)`), again with optional weights.

Files are read with `torch.load(..., weights_only=True)`, as one of two kinds:

- a checkpoint written by `dsnet train` (`last.pt`, `selected.pt`, `epoch-NNNN.pt`): the model is rebuilt
  from the `model_name`, `model_kwargs` and `num_classes` stored in it, and the dataset and training objective
  come from its resolved config;
- a tensors-only state dict, bare or in the dict a training script saved it in (`state_dict`, RobustBench's layout
  and our export's; `model_state_dict`; `model`; `net`; with a weight average under `ema` and the like, which
  `--weights` chooses as for our checkpoints: `dsnet.runtime.checkpoint.find_state_dict`): the architecture comes
  from `model_name` (`--model NAME`) and the dataset from `dataset` (`--dataset`).

- an export of `dsnet export` (`model.safetensors` + `config.json`, or `NAME.pt` + `NAME.architecture.json`), given
  as its folder or its weights file: the architecture, its arguments, the dataset, the objective and the input
  normalisation come from the export's spec, and the weights are checked against its digest;

and `hf://ORG/REPO[@REVISION][/FILE]` is any of these on the Hugging Face Hub, read through its cache
(`dsnet.evaluation.hub`; the commit used is recorded in the source). A `.safetensors` file is never unpickled.

A state dict saved through a wrapper (`module.` of DDP, `_orig_mod.` of `torch.compile`, a script's `model.`) loads
as it is; missing or unexpected keys are one line that counts and names them. `normalize=(mean, std)` makes the model
normalise its [0, 1] input itself (for models trained on normalised images). The model comes back in fp32 and
eval mode, with parameters that need no gradient (attacks differentiate the input only). Before any data is read
it is probed with a batch of different images: its output must be one finite row of logits per image and per class
of the dataset, and a model that gives every image the same row is noted (it ignores its input). Weights that are
NaN or infinite are refused when they are loaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from dsnet.errors import ConfigError, NonFiniteError, UnknownNameError
from dsnet.evaluation.config import WEIGHT_CHOICES, check_normalization
from dsnet.evaluation.hub import is_hub_reference, resolve_hub_checkpoint
from dsnet.models.robustbench import ROBUSTBENCH_PREFIX
from dsnet.runtime.hashing import model_code_sha256, state_dict_sha256

__all__ = ["LoadedModel", "load_model_for_evaluation", "WEIGHT_CHOICES", "NormalizedInput", "probe_images",
           "PROBE_BATCH"]


logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready to evaluate, and what is known about it.

    Attributes:
        model: fp32, eval mode, on the requested device.
        model_name: registered architecture name.
        model_kwargs: constructor overrides it was built with.
        num_classes: size of its output.
        dataset: dataset it is evaluated on.
        trained_with: training objective, which decides the paper preset's step size.
        trained_with_source: where `trained_with` came from, in words, for the report.
        checkpoint: the file it was loaded from.
        weights_sha256: hash of the stored weights (ties reports and exports to these weights).
        epoch: the next epoch to train, as a training checkpoint stores it (`trained_epochs` is the one finished).
        config: the training run's resolved config, when there is one.
        source: where the model came from, for the report ({"kind": "dsnet checkpoint" | "factory" | "module", ...}).
        code: the digests of the files that define the model's computation (`dsnet.runtime.model_code_sha256`).
        responds_to_input: False when the probe's different images all got the same logits.
        randomness: the largest difference between repeated passes of the probe images (logits scaled to unit
            norm); above `dsnet.evaluation.randomness.RANDOMNESS_THRESHOLD` the model is randomised.
    """

    model: nn.Module
    model_name: str
    model_kwargs: dict[str, Any]
    num_classes: int
    dataset: str
    trained_with: str
    trained_with_source: str
    checkpoint: Path
    weights_sha256: str
    epoch: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    code: dict[str, str] = field(default_factory=dict)
    responds_to_input: bool = True
    randomness: float = 0.0

    @property
    def randomized(self) -> bool:
        """Whether the same images gave different outputs on repeated passes."""
        from dsnet.evaluation.randomness import RANDOMNESS_THRESHOLD

        return self.randomness > RANDOMNESS_THRESHOLD

    @property
    def trained_epochs(self) -> int | None:
        """The epoch whose weights these are (a checkpoint stores the next epoch to train)."""
        return self.epoch - 1 if self.epoch is not None else None

    @property
    def parameters(self) -> int:
        """Number of parameters."""
        return sum(p.numel() for p in self.model.parameters())


def _dataset_classes(dataset: str) -> int:
    from dsnet.data import DATASETS

    return DATASETS.get(dataset).num_classes


def _trained_with(given: str | None, config: dict[str, Any], path: object) -> tuple[str, str]:
    """The training objective and where it came from."""
    from dsnet.objectives import OBJECTIVES

    source = "given"
    trained_with = given
    if trained_with is None:
        trained_with = (config.get("objective") or {}).get("name")
        source = "the checkpoint's training config"
        if trained_with is None:
            trained_with, source = "at", "assumed (no training config; pass --trained-with)"
            logger.warning("%s holds no training config: assuming an AT-trained model for the step sizes "
                           "(pass --trained-with trades for a TRADES model)", path)
    if trained_with not in OBJECTIVES:
        raise UnknownNameError(f"training objective {trained_with!r} has no evaluation step preset; pass "
                               f"--trained-with one of {', '.join(OBJECTIVES.names())}")
    return trained_with, source


class NormalizedInput(nn.Module):
    """`model` behind x -> (x - mean) / std, for a network trained on normalised inputs."""

    def __init__(self, model: nn.Module, mean: Any, std: Any) -> None:
        super().__init__()
        mean, std = check_normalization(mean, std)
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


PROBE_BATCH = 4
"""Images in the output probe: more than one, so a model that returns one row for any batch is caught."""


def probe_images(channels: int = 3, size: int = 32, device: torch.device | str = "cpu") -> torch.Tensor:
    """(PROBE_BATCH, C, H, W) different images in [0, 1], on the 8-bit grid as every dataset image is: black, white,
    mid-grey (128/255) and seeded uniform noise."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (1, channels, size, size), generator=generator).float() / 255
    constant = torch.tensor([0.0, 1.0, 128 / 255]).view(3, 1, 1, 1).expand(3, channels, size, size)
    return torch.cat([constant, noise]).to(device)


def _ready(model: nn.Module, num_classes: int, dataset: str, device: torch.device | str,
           normalize: tuple[Any, Any] | None) -> tuple[nn.Module, bool, float]:
    """fp32, eval mode, frozen, on `device`, normalising its input if asked; its output probed.

    Normalisation wraps the model rather than hooking it: a caller's module stays exactly as it was handed in.

    Returns:
        The model, whether different probe images got different logits, and how much repeated passes of the probe
        differ (`dsnet.evaluation.randomness.probe_randomness`).

    Raises:
        ConfigError: the model cannot take a batch of images, or does not return one row of logits per image and
            class.
        NonFiniteError: it returns NaN or infinite logits for ordinary images.
    """
    if normalize is not None:
        model = NormalizedInput(model, *normalize)
    model = model.float().to(device).eval()
    model.requires_grad_(False)
    from dsnet.runtime.precision import full_fp32

    probe = probe_images(device=device)
    batch = probe.shape[0]
    try:
        with full_fp32(probe.device.type), torch.no_grad():  # in the evaluation's own math mode, whatever the caller's
            out = model(probe)
    except Exception as error:  # noqa: BLE001 - a model that cannot take a CIFAR batch is a one-line error
        raise ConfigError(f"the model cannot take a batch of {batch} images of shape (3, 32, 32): "
                          f"{type(error).__name__}: {error}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"the model returns {shape} for a batch of {batch} images, but {dataset} needs "
                          f"({batch}, {num_classes}) logits, one row per image; return the logits of every image")
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteError("the model returns NaN or infinite logits for plain images (black, white, grey, noise); "
                             "check its weights and its --normalize values")
    responds = not bool((out == out[:1]).all())
    from dsnet.evaluation.randomness import probe_randomness

    with full_fp32(probe.device.type):
        difference = probe_randomness(model, probe)
    return model, responds, difference


def _user_model(model: nn.Module, source: dict[str, Any], checkpoint: str | Path | None, dataset: str | None,
                trained_with: str | None, device: torch.device | str,
                normalize: tuple[Any, Any] | None, weights_choice: str) -> LoadedModel:
    """A model that is not in our registry, with weights from `checkpoint` when given."""
    from dsnet.runtime.checkpoint import check_finite_tensors, find_state_dict, load_checkpoint, load_model_state

    if dataset is None:
        raise ConfigError("a model of your own needs the dataset to evaluate on: pass --dataset (cifar10, cifar100 "
                          "or svhn)")
    name = type(model).__name__
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None:
        weights, where = find_state_dict(load_checkpoint(path, map_location="cpu"), weights_choice, path)
        load_model_state(model, weights, path=path, expected_name=name)
        source = {**source, "checkpoint": str(path), "weights": f"state dict ({where})"}
    else:
        built_by = source.get("factory") or source.get("class") or name
        check_finite_tensors(model.state_dict().items(), f"the model built by {built_by}",
                             "pass trained weights with --checkpoint")
    trained, trained_source = _trained_with(trained_with, {}, path or name)
    num_classes = _dataset_classes(dataset)
    weights_sha256 = state_dict_sha256(model.state_dict().items())
    model, responds, randomness = _ready(model, num_classes, dataset, device, normalize)
    factory_file = [source["file"]] if source.get("file") else []
    return LoadedModel(model=model, model_name=name, model_kwargs=dict(source.get("kwargs") or {}),
                       num_classes=num_classes, dataset=dataset, trained_with=trained,
                       trained_with_source=trained_source, checkpoint=path if path is not None else Path(name),
                       weights_sha256=weights_sha256,
                       source={**source, "normalize": _normalize_record(normalize)},
                       code=model_code_sha256(model, factory_file), responds_to_input=responds,
                       randomness=randomness)


def _checked_kwargs(model_name: str, model_kwargs: dict[str, Any] | str | None) -> dict[str, Any]:
    """`--model-kwargs` of a registered model, parsed and checked against its constructor.

    Raises:
        ConfigError: unparsable JSON, or an argument the model does not take (with the valid ones).
    """
    from dsnet.evaluation.factory import parse_model_kwargs
    from dsnet.models import check_model_arguments

    kwargs = parse_model_kwargs(model_kwargs)
    problems = check_model_arguments(model_name, kwargs)
    if problems:
        raise ConfigError(f"--model-kwargs for {model_name}: {'; '.join(problems)}")
    return kwargs


def _in_model_normalization(model: nn.Module) -> bool:
    """Whether `model` normalises its input itself (non-persistent `mean`/`std` buffers of the field's families)."""
    return isinstance(getattr(model, "mean", None), torch.Tensor) and isinstance(getattr(model, "std", None),
                                                                                 torch.Tensor)


def _normalize_record(normalize: tuple[Any, Any] | None) -> dict[str, list[float]] | None:
    return None if normalize is None else {"mean": [float(v) for v in normalize[0]],
                                           "std": [float(v) for v in normalize[1]]}


def _exported(files: Any, *, dataset: str | None, trained_with: str | None, device: torch.device | str,
              given: dict[str, Any], hub: dict[str, Any] | None) -> LoadedModel:
    """A model of `dsnet export`, rebuilt from its spec (`dsnet.evaluation.export.ExportedFiles`).

    Raises:
        ConfigError: an option that the export's spec decides (--model, --model-kwargs, --normalize, --weights), or a
            dataset with another number of classes.
    """
    from dsnet.evaluation.exported import _instantiate, spec_normalization
    from dsnet.runtime.checkpoint import load_model_state

    spec, where = files.spec, files.spec_path
    flags = {"model_name": "--model", "model_kwargs": "--model-kwargs", "normalize": "--normalize",
             "model_factory": "--model-factory"}
    for key, flag in flags.items():
        if given.get(key):
            raise ConfigError(f"{where} is an export, which says its architecture and input normalisation itself; "
                              f"drop {flag}")
    if given.get("weights") not in (None, "auto"):
        raise ConfigError(f"{where} is an export, which holds one set of weights; drop --weights")
    num_classes = int(spec["num_classes"])
    dataset = dataset or spec.get("dataset")
    if dataset is None:
        raise ConfigError(f"{where} does not say which dataset the model is for; pass --dataset")
    if _dataset_classes(dataset) != num_classes:
        raise ConfigError(f"{where} has {num_classes} classes but {dataset} has {_dataset_classes(dataset)}; pass "
                          f"the --dataset it was trained on ({spec.get('dataset')})")
    config = {"objective": {"name": spec["trained_with"]}} if spec.get("trained_with") else {}
    trained, trained_source = _trained_with(trained_with, config, where)
    if trained_with is None and spec.get("trained_with"):
        trained_source = f"the export's {where.name}"
    network = _instantiate(spec, files.factory_file, "cpu")
    load_model_state(network, dict(files.state_dict), path=files.weights_path, expected_name=spec["model_name"])
    weights_sha256 = state_dict_sha256(network.state_dict().items())
    normalize = spec_normalization(spec)
    code = model_code_sha256(network, [files.factory_file] if files.factory_file is not None else [])
    model, responds, randomness = _ready(network, num_classes, dataset, device, normalize)
    source = {"kind": "dsnet export", "checkpoint": str(files.weights_path),
              "weights": f"exported weights ({files.weights_path.name}, {files.format})",
              "export": {"format": files.format, "name": spec.get("name"), "spec": where.name,
                         "weights_file_sha256": spec["weights"].get("sha256"),
                         "factory": (spec.get("factory") or {}).get("function")},
              "normalize": _normalize_record(normalize),
              **({"hub": hub} if hub is not None else {})}
    return LoadedModel(model=model, model_name=str(spec["model_name"]),
                       model_kwargs=dict(spec.get("model_kwargs") or {}), num_classes=num_classes, dataset=dataset,
                       trained_with=trained, trained_with_source=trained_source,
                       checkpoint=files.weights_path, weights_sha256=weights_sha256, source=source, code=code,
                       responds_to_input=responds, randomness=randomness)


def load_model_for_evaluation(
    checkpoint: str | Path | None = None,
    *,
    model_name: str | None = None,
    dataset: str | None = None,
    trained_with: str | None = None,
    device: torch.device | str = "cpu",
    model: nn.Module | None = None,
    model_factory: str | None = None,
    model_kwargs: dict[str, Any] | str | None = None,
    normalize: tuple[Any, Any] | None = None,
    weights: str = "auto",
    model_dir: str | Path | None = None,
) -> LoadedModel:
    """Loads a training checkpoint or a tensors-only state dict into its architecture, or readies a user's model.

    Args:
        checkpoint: a file written by `dsnet train`, a tensors-only state dict (bare or in a training script's
            dict, or a `.safetensors` file), an export of `dsnet export` (its folder or weights file), any of these
            on the Hub as "hf://ORG/REPO[@REVISION][/FILE]"; or "robustbench:NAME" (or
            robustbench:DATASET/THREAT_MODEL/NAME), a RobustBench entry of
            `dsnet.models.robustbench`, read from RobustBench's folder layout under `model_dir` and built as the
            entry says; optional with `model` or `model_factory` (the weights they were built with are used then).
        model_name: the architecture; required for a bare state dict; for a training checkpoint, building
            another architecture than the stored one is allowed and fails with a message naming both.
        dataset: the dataset to evaluate on; default: the checkpoint's training dataset (required for a user's
            model).
        trained_with: the training objective (`at`, `trades`, ...); default: the checkpoint's.
        device: where the model goes.
        model: an `nn.Module` of your own (from Python).
        model_factory: `FILE.py:FUNCTION` or `package.module:FUNCTION` that builds your model.
        model_kwargs: the factory's keyword arguments, or those of `model_name` for a bare state dict (a dict or
            JSON text).
        normalize: (mean, std) per channel, for a model that expects normalised inputs.
        weights: for a training checkpoint with a weight average (`train.ema_decay`): "auto" or "ema" evaluate the
            average, "raw" the trained weights themselves; "ema" on a checkpoint without one is an error.
        model_dir: RobustBench's `model_dir` for a "robustbench:" checkpoint (default ./models, RobustBench's).

    Returns:
        The model in fp32 and eval mode, with its metadata.

    Raises:
        CheckpointError: unreadable or unsafe file, no weights, or weights of another architecture.
        ConfigError: a bare state dict without `model_name` or `dataset`, a class count that does not fit, or a
            factory that cannot build the model.
        UnknownNameError: an unknown model, dataset or objective name.
    """
    from dsnet.models import create_model
    from dsnet.runtime.checkpoint import find_state_dict, load_checkpoint, load_model_state

    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"--weights must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    if sum(x is not None for x in (model, model_factory, model_name)) > 1:
        raise ConfigError("give one of a model, --model-factory and --model, not several")
    hub = None
    if checkpoint is not None and is_hub_reference(checkpoint):
        checkpoint, hub = resolve_hub_checkpoint(str(checkpoint))
    on_hub = {"hub": hub} if hub is not None else {}
    if model is not None:
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module, got a {type(model).__name__}")
        origin = {"kind": "module", "class": f"{type(model).__module__}.{type(model).__qualname__}", **on_hub}
        return _user_model(model, origin, checkpoint, dataset, trained_with, device, normalize, weights)
    if model_factory is not None:
        from dsnet.evaluation.factory import load_factory

        built, factory = load_factory(model_factory, model_kwargs)
        return _user_model(built, {**factory.record(), **on_hub}, checkpoint, dataset, trained_with, device, normalize,
                           weights)
    if checkpoint is None:
        raise ConfigError("nothing to evaluate: pass --checkpoint (or --model-factory, or model= from Python)")
    entry = None
    from dsnet.evaluation.exported import find_export, read_export

    spec_path = find_export(checkpoint)
    if spec_path is not None:
        return _exported(read_export(spec_path), dataset=dataset, trained_with=trained_with, device=device, hub=hub,
                         given={"model_name": model_name, "model_kwargs": model_kwargs, "normalize": normalize,
                                "weights": weights})
    if str(checkpoint).startswith(ROBUSTBENCH_PREFIX):
        from dsnet.models.robustbench import resolve_checkpoint

        entry, checkpoint = resolve_checkpoint(str(checkpoint), model_dir, dataset, model_name)
        model_name, dataset = entry.model, entry.dataset
    path = Path(checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    ours = isinstance(state.get("model"), dict) and "model_name" in state
    if ours and model_kwargs:
        raise ConfigError(f"{path} stores the arguments its model was built with; drop --model-kwargs")
    config: dict[str, Any] = dict(state.get("config") or {}) if ours else {}
    if ours:
        stored_name = str(state["model_name"])
        name = model_name or stored_name
        kwargs = dict(state.get("model_kwargs") or {}) if name == stored_name else {}
        dataset = dataset or (config.get("data") or {}).get("dataset")
        if dataset is None:
            raise ConfigError(f"{path} does not say which dataset it was trained on; pass --dataset")
        stored_classes = int(state.get("num_classes") or 0)
        num_classes = stored_classes or _dataset_classes(dataset)
        if stored_classes and stored_classes != _dataset_classes(dataset):
            raise ConfigError(
                f"{path} has {stored_classes} classes but {dataset} has {_dataset_classes(dataset)}; "
                "pass the --dataset it was trained on"
            )
        described = state
        average = state.get("ema")
        if weights == "ema" and not isinstance(average, dict):
            raise ConfigError(f"{path} holds no weight average (it was trained without train.ema_decay); pass "
                              "--weights raw or auto")
        if isinstance(average, dict) and weights != "raw":
            weights_used = f"weight average (EMA, τ = {average.get('decay')}); --weights raw for the trained weights"
            described = {**state, "model": average["model"]}
            weights, choice = average["model"], "ema"
        else:
            weights_used = "trained weights" + (" (the checkpoint also holds a weight average: --weights ema)"
                                                if isinstance(average, dict) else "")
            weights, choice = state["model"], "raw"
    else:
        weights, where = find_state_dict(state, weights, path)
        weights_used, choice = f"state dict ({where})", "auto"
        if model_name is None:
            raise ConfigError(f"{path} holds a bare state dict without its architecture; pass --model NAME "
                              "(`dsnet models` lists them) and --dataset")
        if dataset is None:
            raise ConfigError(f"{path} holds a bare state dict; pass --dataset (cifar10, cifar100 or svhn)")
        name, kwargs, num_classes = model_name, _checked_kwargs(model_name, model_kwargs), _dataset_classes(dataset)
        described = weights

    trained_with, source = _trained_with(trained_with, config, path)
    model = create_model(name, num_classes=num_classes, **kwargs)
    if normalize is not None and _in_model_normalization(model):
        raise ConfigError(f"{name} normalises its input itself (mean {model.mean.flatten().tolist()}); drop "
                          "--normalize, which would normalise twice")
    load_model_state(model, described, path=path, expected_name=name)
    model, responds, randomness = _ready(model, num_classes, dataset, device, normalize)
    return LoadedModel(
        model=model,
        model_name=name,
        model_kwargs=kwargs,
        num_classes=num_classes,
        dataset=dataset,
        trained_with=trained_with,
        trained_with_source=source,
        checkpoint=path,
        weights_sha256=state_dict_sha256(weights.items()),
        epoch=int(state["epoch"]) if ours and isinstance(state.get("epoch"), int) else None,
        config=config,
        source={"kind": "dsnet checkpoint" if ours else "state dict", "checkpoint": str(path),
                "weights": weights_used, "weights_choice": choice, "normalize": _normalize_record(normalize),
                **({"robustbench": {"entry": entry.key, "claim": entry.claim}} if entry is not None else {}),
                **on_hub},
        code=model_code_sha256(model),
        responds_to_input=responds,
        randomness=randomness,
    )
