"""Typed run configuration: YAML recipes, validation on load, and dotted `--set` overrides.

A recipe has six sections. `model`, `data`, `optim` and `train` are dataclasses with a fixed set of keys;
`objective` and `schedule` are a `name` plus that entry's own parameters, checked by building the entry.
Loading validates everything and reports every problem at once, each naming its key, so a typo fails in a
second instead of after a GPU-day:

    model: {name: dsnet4}
    data: {dataset: cifar10}
    objective: {name: at, eps: 0.031, step_size: 0.007, steps: 10}
    schedule: {name: piecewise, milestones: [60, 90, 110], factors: [0.1, 0.01, 0.005]}
    train: {epochs: 120, batch_size: 128}

ε and step sizes are floats in pixel units; the literal `8/255` is accepted wherever a float is expected.

Recipes are data in `configs/`: one file per (dataset, training style) with the paper's DS-Net-4 (`cifar10_at`,
`svhn_trades6`, ...), plus `quickstart` and the combined `cifar10_trades_ema_awp`. Every paper setting is reachable by
name: `<recipe>_<model>` is that recipe with `model: {name: <model>}`, composed as `--set` composes, so
`--config cifar10_mart_wrn34_10` (or the path `configs/cifar10_mart_wrn34_10.yaml`, which names it) is MART with
WRN-34-10. A whole section can be replaced too: `--set 'objective={name: trades, beta: 6}'`.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from dsnet.coerce import EXPONENT, FRACTION, coerce_value, to_float
from dsnet.errors import ConfigError
from dsnet.registry import suggest
from dsnet.validate import Problems

if TYPE_CHECKING:  # built on first use: reading a recipe's names for `dsnet -h` must not import torch
    from dsnet.objectives import Objective
    from dsnet.schedules import Schedule

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "RunConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "parse_override",
    "config_to_dict",
    "coerce_value",
    "recipe_differences",
    "read_recipe",
    "locate_recipe",
    "recipe_names",
    "default_configs_dir",
    "RESULT_NEUTRAL_KEYS",
    "RESUME_NEUTRAL_KEYS",
    "SELECTION_POLICIES",
]

SELECTION_POLICIES = ("first_decay_plus_one", "best_val_pgd", "last")

RESULT_NEUTRAL_KEYS = ("train.device", "train.progress", "train.log_every", "train.tensorboard", "train.compile",
                       "train.channels_last", "train.keep_epoch_checkpoints", "data.download")
"""Settings that change how a run executes or reports, never what it computes (beyond float rounding): a rerun or
a resume may change them freely."""

RESUME_NEUTRAL_KEYS = (*RESULT_NEUTRAL_KEYS, "train.epochs")
"""What `--resume` may also change without `--allow-change`: more epochs extend a run and leave the finished ones
as they were."""
AMP_MODES = ("auto", "bf16", "fp16", "off")


@dataclass
class ModelConfig:
    name: str = "dsnet_small"
    """Registered model name (`dsnet models` lists them)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Constructor overrides, e.g. {width: 16, attention_init: uniform}."""


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    """cifar10, cifar100 or svhn."""
    val_size: int = 1000
    """Images held out of the training set for model selection (Rice et al.); 0 disables."""
    val_seed: int = 0
    """Seed of the validation split."""
    crop: bool = True
    """Random crop with 4-pixel zero padding."""
    flip: bool = True
    """Random horizontal flip."""
    train_subset: int | None = None
    """Use only this many training images (miniature runs)."""
    download: bool = True
    """Download the dataset when its files are missing."""
    svhn_extra: bool = False
    """Add SVHN's `extra` split to training."""
    extra_path: str | None = None
    """An .npz of extra training images (`image` uint8 (N, 32, 32, 3), `label` (N,)), e.g. the generated CIFAR-10
    sets of Wang et al. 2023; memory-mapped and mixed into every batch (`dsnet.data.extra`)."""
    extra_fraction: float = 0.7
    """With `extra_path`: the share of each batch drawn from it (0.7 in Wang et al. 2023)."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.require(self.val_size >= 0, "data.val_size must be >= 0")
        problems.require(0 <= self.extra_fraction < 1, "data.extra_fraction must be in [0, 1)")
        problems.require(self.train_subset is None or self.train_subset > 0, "data.train_subset must be > 0")
        problems.raise_if_any()


@dataclass
class OptimConfig:
    lr: float = 0.1
    """Base learning rate of SGD for the network weights."""
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    norm_weight_decay: bool = True
    """Decay the weights and biases of normalisation layers too; false exempts them (DM-Improves-AT: every BN)."""
    grad_clip: float | None = None
    """Clip the gradients' global L2 norm to this value before each step (the robust-residual-network recipe: 5.0);
    None: off."""
    attention_lr: float = 1e-3
    """Adam learning rate for DS-Net's attention weights (never scheduled, as in the authors' code)."""
    attention_betas: tuple[float, float] = (0.5, 0.999)
    attention_weight_decay: float = 1e-3
    """L2 penalty added to the attention gradient (Adam's weight_decay, not AdamW)."""

    def __post_init__(self) -> None:
        self.attention_betas = tuple(self.attention_betas)  # type: ignore[assignment]
        problems = Problems()
        problems.require(self.lr > 0, "optim.lr must be > 0")
        problems.require(self.attention_lr >= 0, "optim.attention_lr must be >= 0")
        problems.require(0 <= self.momentum < 1, "optim.momentum must be in [0, 1)")
        problems.require(self.weight_decay >= 0 and self.attention_weight_decay >= 0, "optim.weight_decay must be >= 0")
        problems.require(self.grad_clip is None or self.grad_clip > 0, "optim.grad_clip must be > 0, or null for off")
        problems.require(len(self.attention_betas) == 2 and all(0 <= b < 1 for b in self.attention_betas),
                         "optim.attention_betas must be two numbers in [0, 1)")
        problems.raise_if_any()


@dataclass
class TrainConfig:
    epochs: int = 120
    batch_size: int = 128
    """Global batch size (split across DDP processes)."""
    seed: int = 0
    device: str = "auto"
    """auto (cuda when available), cpu, cuda, cuda:N."""
    amp: str = "auto"
    """Mixed precision: auto (bf16 on GPU, off on CPU), bf16, fp16 (with a grad scaler), off."""
    channels_last: bool | None = None
    """Use channels_last memory format; None (auto) = on (faster on GPU and CPU, see benchmarks/RESULTS.md)."""
    compile: bool | str = "auto"
    """torch.compile each block of the model: auto (GPU only; on CPU it costs minutes), true, false; falls back
    to eager with a warning if compilation fails."""
    sync_bn: bool = True
    """Under DDP, BatchNorm statistics over the global batch, as one process would compute them."""
    selection: str = "first_decay_plus_one"
    """Which checkpoint becomes `selected.pt`: first_decay_plus_one, best_val_pgd or last."""
    val_pgd_steps: int = 10
    """PGD steps of the per-epoch validation robustness check (same ε and step as the objective)."""
    eval_every: int = 1
    """Evaluate on the validation split every N epochs."""
    keep_epoch_checkpoints: bool = False
    """Keep `epoch-NNNN.pt` for every epoch, not only last/selected."""
    max_steps_per_epoch: int | None = None
    """Cut epochs short (miniature runs)."""
    log_every: int = 20
    """Update the progress bar's loss, accuracy and images/s every N steps."""
    progress: bool = True
    """Show a progress bar (only on a terminal, rank 0)."""
    tensorboard: bool = True
    """Write TensorBoard scalars to `<out>/tensorboard`."""
    ema_decay: float | None = None
    """τ of an exponential moving average of the weights (0.995 in Wang et al. 2023, 0.999 in Rebuffi et al. 2021),
    validated, selected and saved beside the model (`dsnet.training.ema`); None: off."""
    ema_warmup: float = 0.025
    """With `ema_decay`: the fraction of all training steps before averaging starts (2.5 % in the reference)."""
    bn_warm_start: bool = False
    """BatchNorm momentum 1.0 on a run's first step, so that running statistics start as that batch's (as Haiku's
    do; DM-Improves-AT and the robust-residual-network's advanced recipe), then each layer's own momentum."""

    def __post_init__(self) -> None:
        problems = Problems()
        problems.require(self.epochs >= 1, "train.epochs must be >= 1")
        problems.require(self.batch_size >= 1, "train.batch_size must be >= 1")
        problems.require(_is_device(self.device), f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        problems.require(self.amp in AMP_MODES, f"train.amp must be one of {', '.join(AMP_MODES)}")
        problems.require(self.compile in ("auto", True, False),
                         f"train.compile must be auto, true or false, got {self.compile!r}")
        problems.require(self.selection in SELECTION_POLICIES,
                         f"train.selection must be one of {', '.join(SELECTION_POLICIES)}")
        problems.require(self.val_pgd_steps >= 1, "train.val_pgd_steps must be >= 1")
        problems.require(self.eval_every >= 1, "train.eval_every must be >= 1")
        problems.require(self.log_every >= 1, "train.log_every must be >= 1")
        problems.require(self.max_steps_per_epoch is None or self.max_steps_per_epoch >= 1,
                         "train.max_steps_per_epoch must be >= 1")
        problems.require(self.ema_decay is None or 0 < self.ema_decay < 1,
                         "train.ema_decay must be in (0, 1), or null for off")
        problems.require(0 <= self.ema_warmup < 1, "train.ema_warmup must be in [0, 1)")
        problems.raise_if_any()


_DEFAULT_OBJECTIVE = {"name": "at"}
_DEFAULT_SCHEDULE = {"name": "piecewise", "milestones": [60, 90], "factors": [0.1, 0.01]}


@dataclass
class RunConfig:
    """A validated recipe. `objective` and `schedule` are the built, frozen objects the trainer uses (given as
    a dict of `name` and parameters, they are built here); they also read like their recipe sections
    (`config.objective["eps"]`)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: Objective = None  # type: ignore[assignment] - built in __post_init__ (the default: `at`)
    """The training objective, from `name` plus its parameters."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: Schedule = None  # type: ignore[assignment] - built in __post_init__ from optim.lr and train.epochs
    """The LR schedule, from `name` plus its parameters; its base LR and length are optim.lr and train.epochs."""
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        from dsnet.objectives import build_objective
        from dsnet.schedules import build_schedule

        if self.objective is None or isinstance(self.objective, dict):
            self.objective = build_objective(**(self.objective or _DEFAULT_OBJECTIVE))
        if self.schedule is None or isinstance(self.schedule, dict):
            self.schedule = build_schedule(base_lr=self.optim.lr, epochs=self.train.epochs,
                                           **(self.schedule or _DEFAULT_SCHEDULE))


def _is_device(name: str) -> bool:
    import torch

    try:
        return name == "auto" or bool(torch.device(name).type)
    except (RuntimeError, ValueError, TypeError):
        return False


def _build_section(cls: type, raw: Any, section: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"section {section!r} must be a mapping of keys to values, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    problems = []
    values = {}
    for key, value in raw.items():
        if key not in names:
            hint = suggest(key, names, n=1, cutoff=0.6, shown=lambda name: f"{section}.{name}")
            hint = hint if hint.startswith("did you mean") else f"valid keys: {', '.join(names)}"
            problems.append(f"unknown key {section}.{key}; {hint}")
            continue
        try:
            values[key] = coerce_value(value, hints[key], f"{section}.{key}")
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    return cls(**values)


def _check_named_section(raw: Any, section: str) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ConfigError(f"section {section!r} needs a 'name' key (e.g. {section}: {{name: ...}})")
    return {k: (to_float(v, f"{section}.{k}") if isinstance(v, str) and (FRACTION.match(v) or EXPONENT.match(v))
                else v)
            for k, v in raw.items()}


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Builds and validates a `RunConfig` from a plain dict (as read from YAML)."""
    if not isinstance(raw, dict):
        raise ConfigError("a recipe must be a mapping with sections model, data, objective, optim, schedule, train")
    sections = [f.name for f in dataclasses.fields(RunConfig)]
    problems = []
    for key in raw:
        if key not in sections:
            hint = suggest(key, sections, n=1, cutoff=0.6)
            hint = hint if hint.startswith("did you mean") else f"valid sections: {', '.join(sections)}"
            problems.append(f"unknown section {key!r}; {hint}")
    built: dict[str, Any] = {}
    for name, cls in (("model", ModelConfig), ("data", DataConfig), ("optim", OptimConfig), ("train", TrainConfig)):
        try:
            built[name] = _build_section(cls, raw.get(name), name)
        except ConfigError as error:
            problems.append(str(error))
    defaults = {"objective": _DEFAULT_OBJECTIVE, "schedule": _DEFAULT_SCHEDULE}
    for name in ("objective", "schedule"):
        section = raw.get(name, defaults[name])
        if isinstance(section, dict) and "name" not in section:  # parameters only: keep the default entry
            section = {**defaults[name], **section}
        try:
            built[name] = _check_named_section(section, name)
        except ConfigError as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    from dsnet.objectives import build_objective
    from dsnet.schedules import build_schedule

    for check in (
        lambda: _check_model(built["model"], built["data"]),
        lambda: _check_dataset(built["data"]),
        lambda: built.update(objective=build_objective(**built["objective"])),
        lambda: built.update(schedule=build_schedule(base_lr=built["optim"].lr, epochs=built["train"].epochs,
                                                     **built["schedule"])),
    ):
        try:
            check()
        except (ConfigError, ValueError, TypeError) as error:
            problems.append(str(error))
    if problems:
        raise ConfigError("; ".join(problems))
    return RunConfig(**built)


def _check_dataset(data: DataConfig) -> None:
    from dsnet.data import DATASETS

    DATASETS.get(data.dataset)


def _check_model(model: ModelConfig, data: DataConfig) -> None:
    """The model name, its `kwargs` against the constructor's signature (unknown names with suggestions, wrong
    types), then a build on the meta device (no memory, well under a second), so a misspelt, mistyped or
    out-of-range constructor argument fails here and not after the dataset has loaded."""
    import torch

    from dsnet.data import DATASETS
    from dsnet.models import MODELS, check_model_arguments, create_model

    MODELS.get(model.name)
    if not model.kwargs:
        return  # the variant's own arguments
    problems = check_model_arguments(model.name, model.kwargs)
    if problems:
        raise ConfigError(f"model.kwargs of {model.name}: {'; '.join(problems)}")
    num_classes = DATASETS.get(data.dataset).num_classes if data.dataset in DATASETS else 10
    try:
        with torch.device("meta"):
            create_model(model.name, num_classes=num_classes, **model.kwargs)
    except (ConfigError, ValueError, TypeError) as error:
        raise ConfigError(f"model.kwargs of {model.name}: {error}") from None
    except Exception:  # noqa: BLE001 - something the meta device cannot build: the real build reports it
        return


def parse_override(text: str) -> tuple[list[str], Any]:
    """Splits `section.key=value` into (["section", "key"], value), the value parsed as YAML; a bare `section={...}`
    (a mapping) replaces the whole section."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, _, value = text.partition("=")
    path = key.strip().split(".")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    if not all(path) or (len(path) < 2 and not isinstance(parsed, dict)):
        raise ConfigError(f"override key {key!r} must be dotted, like train.epochs (or a whole section given a "
                          "mapping: 'objective={name: trades, beta: 6}')")
    return path, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Applies dotted `section.key=value` overrides to a raw recipe dict (a copy is returned)."""
    if raw and not isinstance(raw, dict):
        raise ConfigError(f"a recipe must be a mapping of sections, not a {type(raw).__name__}")
    result = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:  # a whole section
            result[path[0]] = value
            continue
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return result


def default_configs_dir() -> Path | None:
    """`./configs` when it exists, else the `configs/` folder of a source checkout of dsnet, else None."""
    import dsnet

    here = Path("configs")
    if here.is_dir():
        return here
    checkout = Path(dsnet.__file__).resolve().parents[2] / "configs"
    return checkout if checkout.is_dir() else None


def recipe_names(folder: str | Path | None = None) -> list[str]:
    """The recipe files of `folder` (default `default_configs_dir()`), by name; `<name>_<model>` names more."""
    folder = Path(folder) if folder is not None else default_configs_dir()
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None and folder.is_dir() else []


def _named_recipe(path: Path) -> tuple[dict[str, Any], Path] | None:
    """The recipe a missing path or a bare name stands for: `<folder>/<name>.yaml`, or `<recipe>_<model>`, that
    recipe with the model replaced (any registered model); None when the name is neither."""
    folder = path.parent if str(path.parent) not in ("", ".") and path.parent.is_dir() else default_configs_dir()
    if folder is None:
        return None
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    if (folder / f"{stem}.yaml").is_file():
        return _read_recipe_file(folder / f"{stem}.yaml"), folder / f"{stem}.yaml"
    cuts = [i for i, char in enumerate(stem) if char == "_"]
    for cut in cuts:  # the shortest recipe name first: models contain "_" too (wrn34_10)
        base, model = stem[:cut], stem[cut + 1:]
        if (folder / f"{base}.yaml").is_file():
            from dsnet.models import MODELS

            if model in MODELS:
                raw = _read_recipe_file(folder / f"{base}.yaml")
                raw["model"] = {"name": model}
                return raw, folder / f"{base}.yaml"
    return None


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Reads a YAML recipe as a plain dict, with clear errors for a missing or malformed file.

    `path` is a file, or a recipe name (see the module docstring): `quickstart`, `cifar10_at`,
    `cifar10_at_wrn34_10`, or a path in a recipe folder whose file name is such a name.
    """
    return locate_recipe(path)[0]


def locate_recipe(path: str | Path) -> tuple[dict[str, Any], Path]:
    """`read_recipe`, and the file the recipe was read from (for a composed name, its base recipe's file)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"--config {path} is a folder, not a recipe file; pass one of its YAML files (recipes "
                          "live in configs/, e.g. configs/quickstart.yaml)")
    if path.is_file():
        return _read_recipe_file(path), path
    named = _named_recipe(path)
    if named is not None:
        return named
    names = recipe_names(path.parent if path.parent.is_dir() and str(path.parent) not in ("", ".") else None)
    known = f"; {suggest(path.stem, names)}" if names else ""
    raise ConfigError(f"config file {path} does not exist and names no recipe (a file of configs/, or "
                      f"<recipe>_<model> such as cifar10_at_wrn34_10){known}")


def _read_recipe_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except (UnicodeDecodeError, OSError) as error:
        raise ConfigError(f"cannot read config file {path} as a YAML recipe ({type(error).__name__}); is it a "
                          "checkpoint or another binary file? recipes live in configs/") from None
    if raw is None or raw == {}:
        raise ConfigError(f"config file {path} is empty; a recipe names at least its model, objective and epochs "
                          "(an empty one would silently mean a 120-epoch run of every default); start from "
                          "configs/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (model, data, objective, optim, "
                          f"schedule, train), not a {type(raw).__name__}; recipes live in configs/")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Reads a recipe (or the defaults), applies `section.key=value` overrides, and validates the result."""
    raw = read_recipe(path) if path is not None else {}
    return config_from_dict(apply_overrides(raw, overrides or []))


def recipe_differences(saved: dict[str, Any], now: dict[str, Any],
                       neutral: tuple[str, ...] = RESUME_NEUTRAL_KEYS) -> list[str]:
    """The differences between two resolved recipes (`config_to_dict`), leaving out the `neutral` keys.

    Returns:
        "section.key: old -> new" for every other setting that differs, in sorted key order.
    """
    from dsnet.runtime.records import differences

    return differences(saved, now, ignore=neutral)


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """A plain, YAML- and JSON-safe dict of the resolved configuration (stored in every checkpoint)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {
        "model": plain(dataclasses.asdict(config.model)),
        "data": plain(dataclasses.asdict(config.data)),
        "objective": plain(config.objective.recipe()),
        "optim": plain(dataclasses.asdict(config.optim)),
        "schedule": plain(config.schedule.recipe()),
        "train": plain(dataclasses.asdict(config.train)),
    }
