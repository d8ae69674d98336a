"""The paper's experiment grids: which training runs and evaluations make up each table and figure.

A grid is a list of `Cell`s, one per (dataset, training style, model variant, seed). A cell is one training
run (a recipe from `configs/`, with the model, objective and seed set) plus one evaluation of its selected
checkpoint. Cells are shared between tables: the DS-Net-4 AT run of seed 0 is the same folder whether Table 2,
Table 4 or Figure 4 asked for it, so nothing is trained twice.

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

The scale (`Scale`) decides how big each run is: `paper` uses the recipes as written; `mini` shrinks epochs,
widths, data and attacks so that a miniature of every grid runs on a CPU in minutes.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import itertools
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dsnet
from dsnet.config import read_recipe
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
    "with_scale",
]

logger = logging.getLogger(__name__)

METRICS = ("natural", "fgsm", "pgd", "cw_inf", "autoattack")
"""Accuracy columns of the paper's tables; attack names are those of `dsnet.attacks.ATTACKS`."""

METRIC_LABELS = {"natural": "Natural", "fgsm": "FGSM", "pgd": "PGD", "cw_inf": "C&W∞", "autoattack": "AA"}


@dataclass(frozen=True)
class StyleInfo:
    """A training style: the recipe file part, the objective it trains with, and its display label."""

    label: str
    objective: str
    recipe_style: str


STYLES: dict[str, StyleInfo] = {
    "standard": StyleInfo("ST", "standard", "at"),  # the paper gives no ST recipe: the AT schedule, no attack
    "at": StyleInfo("AT", "at", "at"),
    "trades1": StyleInfo("TRADES (β=1)", "trades", "trades1"),
    "trades6": StyleInfo("TRADES (β=6)", "trades", "trades6"),
    "mart": StyleInfo("MART (β=6)", "mart", "mart"),
}


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
    """

    name: str
    title: str
    entries: tuple[Entry, ...]
    attacks: dict[str, tuple[str, ...]]
    default_seeds: tuple[int, ...] = (0, 1, 2)


_BLOCKS = ("residual", "mbconv", "dense", "ada_rk")
_INITS = ("normal", "uniform", "lognormal", "exponential", "geometric")


def _plain_models(*names: str) -> tuple[Variant, ...]:
    """Registered models as they are, one row each, labelled as their `ModelInfo` says."""
    return tuple(Variant(name, name) for name in names)


def _fig4_variants() -> tuple[Variant, ...]:
    # Panel b's reference, DS-Net-4 under AT, is the same run as panel a's first row.
    return tuple(Variant(f"dsnet4-same-{b}", "dsnet4", {"attention": "same_block", "blocks": [b]},
                         label="4 × {blocks}", panel="b")
                 for b in ("dense", "residual", "ada_rk", "mbconv"))


def _fig6_variants() -> tuple[Variant, ...]:
    out = [Variant("dsnet4", "dsnet4", label="4 blocks (DS-Net-4)")]
    for size in (3, 2):
        for combo in itertools.combinations(_BLOCKS, size):
            out.append(Variant(f"dsnet4-blocks-{'+'.join(combo)}", "dsnet4", {"blocks": list(combo)},
                               label=f"{size} blocks: {{blocks}}",
                               match_params_of="dsnet4"))
    return tuple(out)


GRIDS: Registry[GridSpec] = Registry("grid", hint="dsnet reproduce -h lists them")
for _spec in (
    GridSpec(
        "table1", "Table 1: ST accuracy vs AT robustness, and their rankings (CIFAR-10)",
        (Entry("cifar10", ("standard", "at"),
               _plain_models("wrn28_10", "resnet62", "densenet121", "mobilenetv2", "resnet50", "adark_net")),),
        {"standard": (), "at": ("pgd",)},
    ),
    GridSpec(
        "table2", "Table 2: AT on CIFAR-10 and SVHN",
        (Entry("cifar10", ("at",), _plain_models("resnet50", "wrn34_10", "sat_resnet50", "sat_wrn34_10", "ie_resnet50",
                                                  "ie_wrn34_10", "adark_net", "robnet_large_v2", "dsnet4", "dsnet6")),
         Entry("svhn", ("at",), _plain_models("resnet50", "wrn34_10", "dsnet4", "dsnet6"))),
        {"at": ("*",)},
    ),
    GridSpec(
        "table3", "Table 3: MART (β = 6) on CIFAR-10 and SVHN",
        (Entry("cifar10", ("mart",), _plain_models("robnet_large_v2", "wrn34_10", "ie_wrn34_10", "dsnet4", "dsnet6")),
         Entry("svhn", ("mart",), _plain_models("wrn34_10", "dsnet4", "dsnet6"))),
        {"mart": ("*",)},
    ),
    GridSpec(
        "trades", "TRADES (β = 1 and 6) on CIFAR-10 and SVHN (the paper's Appendix C)",
        (Entry("cifar10", ("trades1", "trades6"),
               _plain_models("robnet_large_v2", "wrn34_10", "ie_wrn34_10", "dsnet4", "dsnet6")),
         Entry("svhn", ("trades1", "trades6"), _plain_models("wrn34_10", "dsnet4", "dsnet6"))),
        {"trades1": ("*",), "trades6": ("*",)},
    ),
    GridSpec(
        "table4", "Table 4: pruning to the top-m blocks per module, retrained with fixed weights (AT, CIFAR-10)",
        (Entry("cifar10", ("at",), tuple(
            Variant(f"dsnet4-prune{m}", "dsnet4", label=f"{m} block{'s' if m > 1 else ''}"
                    + (" (fixed learned weights)" if m == 4 else ""), parent="dsnet4", derive=f"prune:{m}",
                    match_params_of="dsnet4") for m in (1, 2, 3, 4)) + (Variant("dsnet4", "dsnet4",
                                                                                  label="Ours (DS-Net-4-softmax)"),)),),
        {"at": ("pgd",)},
    ),
    GridSpec(
        "fig4", "Figure 4: (a) fixed uniform vs learned attention weights; (b) four copies of one block (CIFAR-10)",
        (Entry("cifar10", ("at", "trades1", "mart"),
               (Variant("dsnet4", "dsnet4", label="DS-Net-4-softmax", panel="a"),
                Variant("dsnet4-fixed", "dsnet4", {"attention": "fixed"}, label="DS-Net-4-fixed", panel="a"))),
         Entry("cifar10", ("at",), _fig4_variants())),
        {"at": ("pgd",), "trades1": ("pgd",), "mart": ("pgd",)},
    ),
    GridSpec(
        "fig5", "Figure 5: attention initialisations (AT, CIFAR-10, drawn as the authors' code draws them)",
        (Entry("cifar10", ("at",), tuple(
            Variant(f"dsnet4-init-{kind}", "dsnet4", {"attention_init": kind},
                    label=kind + (" (reference)" if kind == "normal" else "")) for kind in _INITS)
            + (Variant("dsnet4-init-learned", "dsnet4", label="learned (from the normal run)",
                       parent="dsnet4-init-normal", derive="init_from_parent"),)),),
        {"at": ("pgd",)},
    ),
    GridSpec(
        "fig6", "Figure 6: block space reduced to 2 or 3 blocks, parameters matched to DS-Net-4 (AT, CIFAR-10)",
        (Entry("cifar10", ("at",), _fig6_variants()),),
        {"at": ("pgd",)},
        default_seeds=(0,),
    ),
):
    GRIDS.add(_spec.name, _spec)

# ---------------------------------------------------------------------------------------------------- scale

@dataclass(frozen=True)
class Scale:
    """How big each run of a grid is. None keeps what the recipe (or the evaluation preset) says.

    Attributes:
        name: "paper" or "mini".
        tiny_models: build each model at the size of its family's registered tiny variant (same builder and
            activation, a few channels; `dsnet.models.miniature_arguments`).
        epochs: training epochs.
        width: C0 of the DS-Nets (the reference width for parameter matching too).
        train_subset: training images used (before the validation split).
        val_size: validation images held out for model selection.
        batch_size: training batch size.
        train_attack_steps: attack steps of the training objective (capped).
        val_pgd_steps: PGD steps of the per-epoch validation check.
        selection: checkpoint selection policy.
        n_examples: test images evaluated, the first N in file order (None: the whole test set).
        attacks: every attack this scale can run; a grid's cells use the subset they need.
        attack_overrides: attack name -> settings that replace the preset's (e.g. fewer PGD steps).
        autoattack_fraction: AutoAttack runs on this seeded fraction of the test set (the paper: 12.5%); only
            when the whole test set is evaluated.
        eval_sanity: run the evaluation's ε-sweep sanity check.
    """

    name: str
    tiny_models: bool = False
    epochs: int | None = None
    width: int | None = None
    train_subset: int | None = None
    val_size: int | None = None
    batch_size: int | None = None
    train_attack_steps: int | None = None
    val_pgd_steps: int | None = None
    selection: str | None = None
    n_examples: int | None = None
    attacks: tuple[str, ...] = ("fgsm", "pgd", "cw_inf", "autoattack")
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoattack_fraction: float | None = 0.125
    eval_sanity: bool = True


SCALES: Registry[Scale] = Registry("scale", hint="--scale paper or mini")
for _scale in (
    Scale("paper"),
    Scale("mini", tiny_models=True, epochs=2, train_subset=512, val_size=64, batch_size=64,
                  train_attack_steps=3, val_pgd_steps=2, selection="last", n_examples=128,
                  attacks=("fgsm", "pgd", "cw_inf"), attack_overrides={"pgd": {"steps": 5}, "cw_inf": {"steps": 5}},
                  autoattack_fraction=None, eval_sanity=False),
):
    SCALES.add(_scale.name, _scale)


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

def default_configs_dir() -> Path | None:
    """`./configs` when it exists, else the `configs/` folder of a source checkout of dsnet, else None."""
    here = Path("configs")
    if here.is_dir():
        return here
    checkout = Path(dsnet.__file__).resolve().parents[2] / "configs"
    return checkout if checkout.is_dir() else None


def base_recipe(dataset: str, style: str, model: str, configs_dir: Path | None) -> tuple[dict[str, Any], str]:
    """The recipe of `model` trained in `style` on `dataset`, and where it came from.

    Looks for `<dataset>_<style>_<model>.yaml`, then `<dataset>_<style>_dsnet4.yaml` (the paper trains every
    model with the same setting). The recipe files are the one source of the paper's settings. The ST style uses
    the AT recipe with the `standard` objective.

    Raises:
        ConfigError: neither file is in `configs_dir` (or no recipe folder was found).
    """
    info = STYLES[style]
    stems = (f"{dataset}_{info.recipe_style}_{model}", f"{dataset}_{info.recipe_style}_dsnet4")
    path = next((Path(configs_dir) / f"{stem}.yaml" for stem in stems
                 if configs_dir is not None and (Path(configs_dir) / f"{stem}.yaml").is_file()), None)
    if path is None:
        where = f"in {configs_dir}" if configs_dir is not None else "(no configs/ folder here or in the dsnet source)"
        raise ConfigError(f"no recipe for {dataset} {info.recipe_style} {model} {where}: expected {stems[0]}.yaml or "
                          f"{stems[1]}.yaml; pass --configs-dir with the recipes of dsnet's configs/ folder")
    raw, source = copy.deepcopy(read_recipe(path)), str(path)
    if raw.get("model", {}).get("name") != model:
        raw["model"] = {"name": model}
    if info.objective == "standard":
        raw["objective"] = {"name": "standard"}
    return raw, source


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
def _count_params_cached(model: str, frozen_kwargs: str) -> int:
    import json

    import torch

    from dsnet.models import create_model
    from dsnet.models.profile import count_parameters

    kwargs = json.loads(frozen_kwargs)
    with torch.device("meta"):
        return count_parameters(create_model(model, **kwargs))[0]


def count_params(model: str, kwargs: dict[str, Any]) -> int:
    """Parameters as the paper counts them (tied copies included, attention excluded), built on the meta device."""
    import json

    return _count_params_cached(model, json.dumps(kwargs, sort_keys=True))


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
    from dsnet.config import apply_overrides

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
                                            chosen, preset, overrides, configs, apply_overrides))
    if not cells:
        raise ConfigError(f"grid {name} has no runs for datasets={list(datasets or [])} models={list(models or [])}")
    return cells


def _make_cell(grid: str, dataset: str, style: str, seed: int, variant: Variant, run_id: str, scale: Scale,
               attacks: tuple[str, ...], preset: str, overrides: Sequence[str], configs: Path | None,
               apply_overrides: Any) -> Cell:
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
    _apply_scale(raw, scale)
    raw = apply_overrides(raw, list(overrides))
    logger.debug("%s: recipe from %s", run_id, source)
    trained_with = STYLES[style].objective
    overrides_for = {k: v for k, v in scale.attack_overrides.items() if k in attacks}
    fraction = scale.autoattack_fraction if "autoattack" in attacks and scale.n_examples is None else None
    spec = EvalSpec(preset=preset, attacks=attacks, trained_with=trained_with, n_examples=scale.n_examples,
                    attack_overrides=overrides_for, autoattack_fraction=fraction, sanity=scale.eval_sanity)
    parent_id = _safe(f"{dataset}-{style}-{variant.parent}-seed{seed}") if variant.parent else None
    return Cell(grid, dataset, style, seed, variant, run_id, raw, spec, parent_id, variant.derive, target, source)


def _apply_scale(raw: dict[str, Any], scale: Scale) -> None:
    data, train, objective = raw.setdefault("data", {}), raw.setdefault("train", {}), raw.setdefault("objective", {})
    if scale.epochs is not None:
        train["epochs"] = scale.epochs
    if scale.train_subset is not None:
        data["train_subset"] = scale.train_subset
    if scale.val_size is not None:
        data["val_size"] = scale.val_size
    if scale.batch_size is not None:
        train["batch_size"] = scale.batch_size
    if scale.train_attack_steps is not None and "steps" in objective:
        objective["steps"] = min(int(objective["steps"]), scale.train_attack_steps)
    if scale.val_pgd_steps is not None:
        train["val_pgd_steps"] = scale.val_pgd_steps
    if scale.selection is not None:
        train["selection"] = scale.selection
    if scale.name != "paper":
        schedule = raw.get("schedule") or {}
        if schedule.get("warmup_epochs"):
            schedule["warmup_epochs"] = 0  # a 5-epoch warm-up would leave a 2-epoch miniature at a tiny LR


def with_scale(scale: Scale | str, **changes: Any) -> Scale:
    """`scale` with some fields replaced; None values are ignored (unset command-line flags)."""
    base = SCALES[scale] if isinstance(scale, str) else scale
    return replace(base, **{k: v for k, v in changes.items() if v is not None})
