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


@pytest.mark.parametrize("name", sorted(PINNED["recipes"]))
def test_a_named_recipe_resolves_as_pinned(name: str) -> None:
    resolved = config_to_dict(load_config(ROOT / "configs" / f"{name}.yaml"))
    assert differences(PINNED["recipes"][name], json.loads(json.dumps(resolved))) == []


@pytest.mark.parametrize("name", sorted(PINNED["recipes"]))
def test_a_named_recipe_is_reachable_by_its_bare_name(name: str) -> None:
    """`--config cifar10_at_wrn34_10` works from anywhere in a source checkout, with or without a file of that name."""
    resolved = config_to_dict(load_config(name))
    assert differences(PINNED["recipes"][name], json.loads(json.dumps(resolved))) == []


@pytest.mark.parametrize("scale", ["paper", "mini"])
def test_every_reproduce_cell_resolves_as_pinned(scale: str) -> None:
    pinned = {key.split("/", 2)[1:][0] + "/" + key.split("/", 2)[2]: value
              for key, value in PINNED["cells"].items() if key.startswith(f"{scale}/")}
    now = {}
    for grid in GRIDS.names():
        for cell in build_grid(grid, scale=scale, configs_dir=ROOT / "configs"):
            now[f"{grid}/{cell.run_id}"] = json.loads(json.dumps({
                "recipe": config_to_dict(config_from_dict(cell.recipe)), "eval": cell.eval.to_dict(),
                "parent_id": cell.parent_id, "derive": cell.derive, "target_params": cell.target_params}))
    assert sorted(now) == sorted(pinned)
    changed = {key: differences(pinned[key], now[key]) for key in pinned if pinned[key] != now[key]}
    assert changed == {}
