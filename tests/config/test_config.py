"""The recipe loader: validation on load, helpful errors, dotted overrides, fractions like 8/255."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsnet.config import apply_overrides, config_from_dict, config_to_dict, load_config, parse_override
from dsnet.errors import ConfigError


def test_defaults_validate() -> None:
    config = config_from_dict({})
    assert config.model.name == "dsnet_small" and config.objective["name"] == "at"


def test_unknown_key_names_it_and_suggests() -> None:
    with pytest.raises(ConfigError, match=r"unknown key train\.epoch; did you mean train\.epochs\?"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="unknown section 'trian'; did you mean 'train'"):
        config_from_dict({"trian": {"epochs": 3}})


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"train": {"epochs": "many", "batch_size": 0}, "optim": {"lr": -1}})
    message = str(info.value)
    assert "train.epochs must be an integer" in message
    assert "optim.lr must be > 0" in message


@pytest.mark.parametrize(("raw", "match"), [
    ({"train": {"batch_size": 0}}, "train.batch_size must be >= 1"),
    ({"train": {"amp": "fp8"}}, "train.amp must be one of"),
    ({"train": {"selection": "best_test"}}, "train.selection must be one of"),
    ({"objective": {"name": "at", "eps": -0.1}}, "eps"),
    ({"objective": {"name": "at", "steps": 0}}, "steps"),
    ({"objective": {"name": 3}}, "needs a 'name'"),
    ({"schedule": {"name": "piecewise", "milestones": [90, 60], "factors": [0.1, 0.01]}}, "increasing"),
    ({"data": {"val_size": -1}}, "data.val_size"),
])
def test_bad_values_are_errors_naming_the_key(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


@pytest.mark.parametrize(("raw", "match"), [
    ({"model": {"name": "dsnet44"}}, "did you mean 'dsnet4'"),
    ({"data": {"dataset": "cifar11"}}, "unknown dataset"),
    ({"objective": {"name": "tradez"}}, "did you mean 'trades'"),
    ({"schedule": {"name": "cosin"}}, "did you mean 'cosine'"),
])
def test_unknown_registry_names(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        config_from_dict(raw)


def test_fractions_are_accepted_for_floats() -> None:
    config = config_from_dict({"objective": {"name": "at", "eps": "8/255", "step_size": "2/255"}})
    assert config.objective["eps"] == pytest.approx(8 / 255)
    assert config.objective["step_size"] == pytest.approx(2 / 255)
    config = load_config(None, ["optim.lr=1/10"])
    assert config.optim.lr == pytest.approx(0.1)


def test_dotted_overrides_apply_after_the_file(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {epochs: 5}\nschedule: {name: piecewise, milestones: [3], factors: [0.1]}\n")
    config = load_config(recipe, ["train.epochs=7", "schedule.milestones=[2]", "model.kwargs.width=8"])
    assert config.train.epochs == 7 and config.schedule["milestones"] == [2]
    assert config.model.kwargs == {"width": 8}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="dotted"):
        parse_override("epochs=3")


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_round_trip_through_plain_dict() -> None:
    config = load_config(None, ["objective.eps=8/255", "train.epochs=3"])
    again = config_from_dict(config_to_dict(config))
    assert again == config
    assert apply_overrides({}, ["a.b=1"]) == {"a": {"b": 1}}
    assert config.objective["name"] == "at"  # parameters without a name keep the default objective
