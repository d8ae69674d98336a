"""Every named recipe and every reproduce cell resolves to the recipe it resolved to before recipes became data.

`data/pinned_recipes.json.gz` was written from the code as it stood before the redesign of issue #20 (one recipe per
dataset and style, models as overrides, grids and scales as data): each `configs/*.yaml` and every cell of every grid
at the paper and mini scales, fully resolved (`config_to_dict` of the validated recipe), with the cell's evaluation,
derivation and parameter target. The same names must give the same recipes, value for value.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dsnet.config import config_from_dict, config_to_dict, load_config
from dsnet.experiments.grids import GRIDS, build_grid
from dsnet.runtime.records import differences

ROOT = Path(__file__).resolve().parents[2]
PINNED = json.loads(gzip.decompress((Path(__file__).parent / "data" / "pinned_recipes.json.gz").read_bytes()))

ADDED_SINCE = {("objective", "attack_mode"): "eval", ("objective", "label_smoothing"): 0.0,
               ("optim", "norm_weight_decay"): True, ("optim", "grad_clip"): None, ("train", "bn_warm_start"): False}
"""Keys added after the pinning (issue #21, the leaders' recipes), each with the value that computes what the pinned
recipe computed; a recipe that holds one of them at another value differs from its pinned self, and fails."""


def _without_added_defaults(recipe: dict, pinned: dict) -> dict:
    """`recipe` without the keys added since that hold their neutral value and that `pinned` does not have."""
    out = json.loads(json.dumps(recipe))
    for (section, key), neutral in ADDED_SINCE.items():
        if key in out.get(section, {}) and out[section][key] == neutral and key not in pinned.get(section, {}):
            del out[section][key]
    return out


@pytest.mark.parametrize("name", sorted(PINNED["recipes"]))
def test_a_named_recipe_resolves_as_pinned(name: str) -> None:
    resolved = config_to_dict(load_config(ROOT / "configs" / f"{name}.yaml"))
    assert differences(PINNED["recipes"][name], _without_added_defaults(resolved, PINNED["recipes"][name])) == []


@pytest.mark.parametrize("name", sorted(PINNED["recipes"]))
def test_a_named_recipe_is_reachable_by_its_bare_name(name: str) -> None:
    """`--config cifar10_at_wrn34_10` works from anywhere in a source checkout, with or without a file of that name."""
    resolved = config_to_dict(load_config(name))
    assert differences(PINNED["recipes"][name], _without_added_defaults(resolved, PINNED["recipes"][name])) == []


@pytest.mark.parametrize("scale", ["paper", "mini"])
def test_every_reproduce_cell_resolves_as_pinned(scale: str) -> None:
    pinned = {key.split("/", 2)[1:][0] + "/" + key.split("/", 2)[2]: value
              for key, value in PINNED["cells"].items() if key.startswith(f"{scale}/")}
    pinned_grids = {key.split("/")[0] for key in pinned}
    now = {}
    for grid in sorted(pinned_grids):  # grids added since (the architectures grid) have nothing pinned
        for cell in build_grid(grid, scale=scale, configs_dir=ROOT / "configs"):
            now[f"{grid}/{cell.run_id}"] = json.loads(json.dumps({
                "recipe": _without_added_defaults(config_to_dict(config_from_dict(cell.recipe)),
                                                  pinned.get(f"{grid}/{cell.run_id}", {}).get("recipe", {})),
                "eval": cell.eval.to_dict(), "parent_id": cell.parent_id, "derive": cell.derive,
                "target_params": cell.target_params}))
    assert pinned_grids <= set(GRIDS.names())
    assert sorted(now) == sorted(pinned)
    changed = {key: differences(pinned[key], now[key]) for key in pinned if pinned[key] != now[key]}
    assert changed == {}
