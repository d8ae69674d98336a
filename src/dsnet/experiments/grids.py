"""The paper's experiment grids: which training runs and evaluations make up each table and figure.

The grids, the training styles and the scales are data, in `grids.yaml` beside this module; this module reads them
and composes the cells. A grid is a list of `Cell`s, one per (dataset, training style, model variant, seed). A cell
is one training run plus one evaluation of its selected checkpoint; its recipe is composed the way `--set`
composes: the named recipe `<dataset>_<style's recipe>_<model>` (`dsnet.config`: a recipe of `configs/` with the
model replaced), the style's overrides, the variant's constructor arguments and the seed, the scale's overrides, then
the user's `--set`. Cells are shared between tables: the DS-Net-4 AT run of seed 0 is the same folder whether
Table 2, Table 4 or Figure 4 asked for it, so nothing is trained twice.

Grids (paper setting in brackets):

- `table1`: ST vs AT ranking of six classic models on CIFAR-10 (Table 1).
- `table2`: AT on CIFAR-10 (ten models) and SVHN (four) (Table 2).
- `table3`: MART, β = 6 (Table 3).
- `trades`: TRADES with β = 1 and β = 6 (Appendix C; its numbers are not in our copy of the paper).
- `table4`: prune DS-Net-4 to its top-m blocks per module, retrain with the weights fixed (Table 4).
- `fig4`: (a) fixed uniform weights vs learned ones under AT, TRADES (β = 1), MART; (b) four copies of one
  block type (Figure 4).
- `fig5`: attention initialisations (Figure 5) as the authors' code draws them: scale 1e-3 and their
  distributions' parameters (the lognormal is LogNormal(1, 2)); the paper text's σ = 1 and LogNormal(0, 1) are
  `--set model.kwargs.attention_scale=1.0 --set model.kwargs.attention_init_params=paper`.
- `fig6`: 2 or 3 of the 4 blocks, width matched to DS-Net-4's parameter count (Figure 6; seed 0 as the paper).

The scale (`Scale`) decides how big each run is: `paper` uses the recipes as written; `mini` is a list of overrides
(fewer epochs, images and attack steps), tiny models and a smaller evaluation, so that a miniature of every grid runs
on a CPU in minutes.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import functools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dsnet.config import apply_overrides, default_configs_dir, locate_recipe, parse_override
from dsnet.errors import ConfigError
from dsnet.registry import Registry

__all__ = [
    "STYLES",
    "METRICS",
    "METRIC_LABELS",
    "Variant",
    "Entry",
    "GridSpec",
    "Scale",
    "SCALES",
    "EvalSpec",
    "Cell",
    "GRIDS",
    "build_grid",
    "base_recipe",
    "default_configs_dir",
    "scaled_model_kwargs",
    "count_params",
    "count_gflops",
    "with_scale",
]

logger = logging.getLogger(__name__)

METRICS = ("natural", "fgsm", "pgd", "cw_inf", "autoattack")
"""Accuracy columns of the paper's tables; attack names are those of `dsnet.attacks.ATTACKS`."""

METRIC_LABELS = {"natural": "Natural", "fgsm": "FGSM", "pgd": "PGD", "cw_inf": "C&W∞", "autoattack": "AA"}


GRIDS_FILE = Path(__file__).with_name("grids.yaml")
"""The grids, styles and scales, as data."""


def _data() -> dict[str, Any]:
    return yaml.safe_load(GRIDS_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class StyleInfo:
    """A training style: its display label, the recipe it trains with (`<dataset>_<recipe>`), and that recipe's
    overrides (the ST style is the AT recipe with the `standard` objective)."""

    label: str
    recipe: str
    overrides: tuple[str, ...] = ()


STYLES: dict[str, StyleInfo] = {name: StyleInfo(style["label"], style["recipe"], tuple(style.get("set", ())))
                                for name, style in _data()["styles"].items()}


@dataclass(frozen=True)
class Variant:
    """One row of a table: a registered model plus constructor arguments, possibly derived from another run.

    Attributes:
        name: row id, unique within a grid and part of the run folder name ("dsnet4-fixed").
        model: registered model name.
        kwargs: constructor arguments at paper scale (merged over the scale's shrinking arguments).
        label: display name.
        parent: for derived variants, the variant whose finished run (same dataset, style, seed) this one
            is built from.
        derive: "prune:<m>" (keep the top-m blocks per module of the parent, fixed weights; Table 4) or
            "init_from_parent" (start from the parent's learned attention logits; Figure 5).
        match_params_of: give this DS-Net the width whose parameter count is closest to that of this model
            at the same scale (Figure 6, Table 4).
        panel: sub-figure this row belongs to ("a", "b"), for figures with panels.
    """

    name: str
    model: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    parent: str | None = None
    derive: str | None = None
    match_params_of: str | None = None
    panel: str = ""

    @property
    def display(self) -> str:
        """The label (its "{blocks}" filled in with the blocks' registered labels), else the model's registered
        label (`ModelInfo.label`) for a plain row, else the name."""
        if self.label:
            if "{blocks}" not in self.label:
                return self.label
            from dsnet.models.atomic_blocks import block_label

            blocks = list(dict.fromkeys(self.kwargs.get("blocks", ())))
            return self.label.replace("{blocks}", ", ".join(block_label(b) for b in blocks))
        if self.name == self.model and not self.kwargs:
            from dsnet.models import MODELS

            return MODELS.get(self.model).label
        return self.name


@dataclass(frozen=True)
class Entry:
    """A block of a grid: these variants, trained in these styles, on one dataset."""

    dataset: str
    styles: tuple[str, ...]
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class GridSpec:
    """A paper table or figure as a grid of runs.

    Attributes:
        name: grid id (`dsnet reproduce <name>`).
        title: one line.
        entries: the blocks of the grid.
        attacks: attack names each style needs (natural accuracy is always measured); "*" means every attack
            of the scale.
        default_seeds: seeds when none are given.
        flops: whether its tables show each model's GFLOPs beside its parameters (the architecture comparison).
    """

    name: str
    title: str
    entries: tuple[Entry, ...]
    attacks: dict[str, tuple[str, ...]]
    default_seeds: tuple[int, ...] = (0, 1, 2)
    flops: bool = False


def _variant(row: str | dict[str, Any]) -> Variant:
    """A row of grids.yaml: a registered model's name, or a mapping of `Variant`'s fields (`model` defaults to the
    name)."""
    if isinstance(row, str):
        return Variant(row, row)
    return Variant(row["name"], row.get("model", row["name"]), dict(row.get("kwargs") or {}), row.get("label", ""),
                   row.get("parent"), row.get("derive"), row.get("match_params_of"), row.get("panel", ""))


GRIDS: Registry[GridSpec] = Registry("grid", hint="dsnet reproduce -h lists them")
for _name, _grid in _data()["grids"].items():
    GRIDS.add(_name, GridSpec(
        _name, _grid["title"],
        tuple(Entry(entry["dataset"], tuple(entry["styles"]), tuple(_variant(row) for row in entry["rows"]))
              for entry in _grid["entries"]),
        {style: tuple(names) for style, names in _grid["attacks"].items()},
        tuple(_grid.get("seeds", (0, 1, 2))), bool(_grid.get("flops", False))))

# ---------------------------------------------------------------------------------------------------- scale

@dataclass(frozen=True)
class Scale:
    """How big each run of a grid is (grids.yaml: `scales`).

    Attributes:
        name: "paper" or "mini".
        tiny_models: build each model at the size of its family's registered tiny variant (same builder and
            activation, a few channels; `dsnet.models.miniature_arguments`).
        overrides: `section.key=value` overrides of every cell's recipe, applied where the recipe's section takes
            the key (the standard objective has no attack steps to shrink).
        width: C0 of the DS-Nets (the reference width for parameter matching too).
        n_examples: test images evaluated, the first N in file order (None: the whole test set).
        attacks: every attack this scale can run; a grid's cells use the subset they need.
        attack_overrides: attack name -> settings that replace the preset's (e.g. fewer PGD steps).
        autoattack_fraction: AutoAttack runs on this seeded fraction of the test set (the paper: 12.5%); only
            when the whole test set is evaluated.
        eval_sanity: run the evaluation's ε-sweep sanity check.
    """

    name: str
    tiny_models: bool = False
    overrides: tuple[str, ...] = ()
    width: int | None = None
    n_examples: int | None = None
    attacks: tuple[str, ...] = ("fgsm", "pgd", "cw_inf", "autoattack")
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoattack_fraction: float | None = 0.125
    eval_sanity: bool = True


def _scale(name: str, raw: dict[str, Any]) -> Scale:
    evaluation = dict(raw.get("eval") or {})
    defaults = Scale(name)
    return Scale(name, tiny_models=bool(raw.get("tiny_models", False)), overrides=tuple(raw.get("set", ())),
                 n_examples=evaluation.get("n_examples"),
                 attacks=tuple(evaluation.get("attacks", defaults.attacks)),
                 attack_overrides={k: dict(v) for k, v in (evaluation.get("attack_overrides") or {}).items()},
                 autoattack_fraction=evaluation.get("autoattack_fraction", defaults.autoattack_fraction),
                 eval_sanity=bool(evaluation.get("sanity", True)))


SCALES: Registry[Scale] = Registry("scale", hint="--scale paper or mini")
for _name, _raw in _data()["scales"].items():
    SCALES.add(_name, _scale(_name, _raw or {}))


@dataclass(frozen=True)
class EvalSpec:
    """How a cell's selected checkpoint is evaluated.

    Attributes:
        preset: attack preset ("paper": ε = 0.031 and the authors' step sizes; "standard": 8/255).
        attacks: attack names in order; natural accuracy is always measured.
        trained_with: the training objective (the paper's PGD step size depends on it).
        n_examples: the first N test images in file order (None: all).
        attack_overrides: attack name -> settings replacing the preset's.
        autoattack_fraction: AutoAttack runs on this seeded fraction of the test set (the paper's 12.5 %) in a
            separate evaluation; None: on the same points as the other attacks.
        sanity: run the evaluation's ε-sweep sanity check (gradient masking).
        seed: seed of the subset and the attacks.
    """

    preset: str
    attacks: tuple[str, ...]
    trained_with: str
    n_examples: int | None = None
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoattack_fraction: float | None = None
    sanity: bool = True
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (stored in each run's cell.json)."""
        return {"preset": self.preset, "attacks": list(self.attacks), "trained_with": self.trained_with,
                "n_examples": self.n_examples,
                "attack_overrides": {k: dict(v) for k, v in sorted(self.attack_overrides.items())},
                "autoattack_fraction": self.autoattack_fraction, "sanity": self.sanity, "seed": self.seed}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> EvalSpec:
        """The inverse of `to_dict`."""
        return cls(preset=raw["preset"], attacks=tuple(raw["attacks"]), trained_with=raw["trained_with"],
                   n_examples=raw.get("n_examples"), attack_overrides=dict(raw.get("attack_overrides") or {}),
                   autoattack_fraction=raw.get("autoattack_fraction"), sanity=bool(raw.get("sanity", True)),
                   seed=int(raw.get("seed", 0)))

    @property
    def tag(self) -> str:
        """A readable folder name that changes whenever the evaluation changes."""
        import hashlib
        import json

        digest = hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
        attacks = "+".join(self.attacks) if self.attacks else "clean"
        return f"{self.preset}-{attacks}-n{self.n_examples or 'all'}-{digest}"


@dataclass(frozen=True)
class Cell:
    """One training run and its evaluation.

    Attributes:
        grid: the grid that asked for it (cells are shared between grids; this is only for display).
        dataset, style, seed: what is trained.
        variant: the row.
        run_id: folder name under `<out>/runs/`, "<dataset>-<style>-<variant>-seed<seed>".
        recipe: the full recipe dict; for a derived variant, the model section is completed when the parent
            has finished (`derive`).
        eval: the evaluation of the selected checkpoint.
        parent_id: run id of the run this one is derived from.
        derive: how it is derived ("prune:<m>", "init_from_parent").
        target_params: parameter count the DS-Net's width is matched to (after derivation for pruned models).
        source: the recipe file the cell's recipe was made from.
    """

    grid: str
    dataset: str
    style: str
    seed: int
    variant: Variant
    run_id: str
    recipe: dict[str, Any]
    eval: EvalSpec
    parent_id: str | None = None
    derive: str | None = None
    target_params: int | None = None
    source: str = ""


# -------------------------------------------------------------------------------------------------- recipes

def base_recipe(dataset: str, style: str, model: str, configs_dir: Path | None) -> tuple[dict[str, Any], str]:
    """The recipe of `model` trained in `style` on `dataset`, and the file it came from.

    The named recipe `<dataset>_<style's recipe>_<model>` (the paper trains every model with the same setting:
    `configs/<dataset>_<recipe>.yaml` with the model replaced), then the style's overrides.

    Raises:
        ConfigError: no such recipe in `configs_dir` (or no recipe folder was found).
    """
    info = STYLES[style]
    name = f"{dataset}_{info.recipe}_{model}"
    if configs_dir is None:
        raise ConfigError(f"no recipe for {dataset} {info.recipe} {model} (no configs/ folder here or in the dsnet "
                          "source); pass --configs-dir with the recipes of dsnet's configs/ folder")
    try:
        raw, source = locate_recipe(Path(configs_dir) / f"{name}.yaml")
    except ConfigError:
        raise ConfigError(f"no recipe for {dataset} {info.recipe} {model} in {configs_dir}: expected "
                          f"{dataset}_{info.recipe}.yaml; pass --configs-dir with the recipes of dsnet's configs/ "
                          "folder") from None
    return apply_overrides(copy.deepcopy(raw), list(info.overrides)), str(source)


# --------------------------------------------------------------------------------------------------- models

def scaled_model_kwargs(model: str, kwargs: dict[str, Any], scale: Scale) -> dict[str, Any]:
    """Constructor arguments of `model` at `scale`: the miniature's, then the variant's, then `scale.width`."""
    from dsnet.models import miniature_arguments

    out: dict[str, Any] = {}
    if scale.tiny_models:
        out.update(_plain_kwargs(miniature_arguments(model)))
    out.update(copy.deepcopy(kwargs))
    if scale.width is not None and model.startswith("dsnet"):
        out["width"] = scale.width
    return out


def _plain_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments as a recipe holds them (tuples become lists)."""
    def plain(value: Any) -> Any:
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {key: plain(value) for key, value in kwargs.items()}


@functools.lru_cache(maxsize=256)
def _profile_cached(model: str, frozen_kwargs: str, what: str) -> float:
    import json

    import torch

    from dsnet.models import create_model
    from dsnet.models.profile import count_flops, count_parameters

    kwargs = json.loads(frozen_kwargs)
    with torch.device("meta"):
        built = create_model(model, **kwargs)
        return count_parameters(built)[0] if what == "params" else count_flops(built) / 1e9


def count_params(model: str, kwargs: dict[str, Any]) -> int:
    """Parameters as the paper counts them (tied copies included, attention excluded), built on the meta device."""
    import json

    return int(_profile_cached(model, json.dumps(kwargs, sort_keys=True), "params"))


def count_gflops(model: str, kwargs: dict[str, Any]) -> float:
    """Forward GFLOPs for one 32x32 image (a multiply-add is 2), counted on the meta device."""
    import json

    return _profile_cached(model, json.dumps(kwargs, sort_keys=True), "gflops")


# ----------------------------------------------------------------------------------------------------- grid

def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def build_grid(
    name: str,
    *,
    scale: Scale | str = "paper",
    seeds: Iterable[int] | None = None,
    datasets: Sequence[str] | None = None,
    models: Sequence[str] | None = None,
    attacks: Sequence[str] | None = None,
    preset: str = "paper",
    overrides: Sequence[str] = (),
    configs_dir: Path | str | None = None,
) -> list[Cell]:
    """The cells of grid `name`.

    Args:
        name: a key of `GRIDS`.
        scale: a `Scale` or the name of one in `SCALES`.
        seeds: seeds (default: the grid's, 0, 1, 2 for all but Figure 6).
        datasets: keep only these datasets.
        models: keep only variants whose name matches one of these shell patterns; parents of derived
            variants are kept too.
        attacks: evaluate with exactly these attacks (default: what the grid needs, within the scale's).
        preset: attack preset of the evaluation.
        overrides: `section.key=value` recipe overrides applied to every run, after the scale.
        configs_dir: folder of YAML recipes (default: `default_configs_dir()`).

    Returns:
        Cells in run order: every parent before the cells derived from it.

    Raises:
        ConfigError: unknown grid, dataset filter that leaves nothing, or a bad override.
    """
    spec = GRIDS.get(name)
    scale = SCALES[scale] if isinstance(scale, str) else scale
    seeds = tuple(spec.default_seeds if seeds is None else seeds)
    configs = Path(configs_dir) if configs_dir is not None else default_configs_dir()
    cells: list[Cell] = []
    seen: set[str] = set()
    for entry in spec.entries:
        if datasets and entry.dataset not in datasets:
            continue
        by_name = {v.name: v for v in entry.variants}
        wanted = [v for v in entry.variants if _matches(v.name, models)]
        for v in list(wanted):  # keep the parents of derived variants
            if v.parent and by_name.get(v.parent) not in wanted:
                parent = by_name.get(v.parent) or Variant(v.parent, v.model)
                wanted.insert(0, parent)
        for style in entry.styles:
            needed = spec.attacks.get(style, ("*",))
            chosen = tuple(attacks) if attacks is not None else tuple(
                a for a in scale.attacks if "*" in needed or a in needed)
            for seed in seeds:
                for variant in wanted:
                    run_id = _safe(f"{entry.dataset}-{style}-{variant.name}-seed{seed}")
                    if run_id in seen:
                        continue
                    seen.add(run_id)
                    cells.append(_make_cell(spec.name, entry.dataset, style, seed, variant, run_id, scale,
                                            chosen, preset, overrides, configs))
    if not cells:
        raise ConfigError(f"grid {name} has no runs for datasets={list(datasets or [])} models={list(models or [])}")
    return cells


def _make_cell(grid: str, dataset: str, style: str, seed: int, variant: Variant, run_id: str, scale: Scale,
               attacks: tuple[str, ...], preset: str, overrides: Sequence[str], configs: Path | None) -> Cell:
    raw, source = base_recipe(dataset, style, variant.model, configs)
    kwargs = {**raw.get("model", {}).get("kwargs", {}), **scaled_model_kwargs(variant.model, variant.kwargs, scale)}
    target = None
    if variant.match_params_of is not None:
        reference = scaled_model_kwargs(variant.match_params_of, {}, scale)
        target = count_params(variant.match_params_of, reference)
        if variant.derive is None:
            kwargs["target_params"] = target
            kwargs.pop("width", None)
    raw["model"] = {"name": variant.model, "kwargs": kwargs} if kwargs else {"name": variant.model}
    raw.setdefault("train", {})["seed"] = seed
    raw = apply_overrides(raw, _taken(raw, scale.overrides))
    raw = apply_overrides(raw, list(overrides))
    logger.debug("%s: recipe from %s", run_id, source)
    trained_with = str(raw["objective"]["name"])  # the paper preset's evaluation step is paired with it
    overrides_for = {k: v for k, v in scale.attack_overrides.items() if k in attacks}
    fraction = scale.autoattack_fraction if "autoattack" in attacks and scale.n_examples is None else None
    spec = EvalSpec(preset=preset, attacks=attacks, trained_with=trained_with, n_examples=scale.n_examples,
                    attack_overrides=overrides_for, autoattack_fraction=fraction, sanity=scale.eval_sanity)
    parent_id = _safe(f"{dataset}-{style}-{variant.parent}-seed{seed}") if variant.parent else None
    return Cell(grid, dataset, style, seed, variant, run_id, raw, spec, parent_id, variant.derive, target, source)


def _taken(raw: dict[str, Any], overrides: Sequence[str]) -> list[str]:
    """The overrides a recipe's sections take: an objective's or schedule's key only where that entry has such a
    parameter (the `standard` objective has no attack steps); a key of the other sections always."""
    from dsnet.objectives import OBJECTIVES
    from dsnet.schedules import SCHEDULES

    registries = {"objective": OBJECTIVES, "schedule": SCHEDULES}
    taken = []
    for text in overrides:
        path, _ = parse_override(text)
        registry = registries.get(path[0])
        if registry is not None and len(path) == 2:
            entry = registry.get((raw.get(path[0]) or {}).get("name", "at" if path[0] == "objective" else "piecewise"))
            if path[1] not in {f.name for f in dataclasses.fields(entry)}:
                continue
        taken.append(text)
    return taken


def with_scale(scale: Scale | str, *, epochs: int | None = None, width: int | None = None,
               n_examples: int | None = None, train_subset: int | None = None) -> Scale:
    """`scale` with the command line's changes (None: unset, the scale's): more or fewer epochs and training images
    are overrides appended to the scale's, the width and the number of test points replace its own."""
    base = SCALES[scale] if isinstance(scale, str) else scale
    extra = tuple(f"{key}={value}" for key, value in (("train.epochs", epochs), ("data.train_subset", train_subset))
                  if value is not None)
    changes = {k: v for k, v in (("width", width), ("n_examples", n_examples)) if v is not None}
    return replace(base, overrides=base.overrides + extra, **changes)
