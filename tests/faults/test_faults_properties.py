"""Property-based tests (hypothesis) of the recipe loader and the command-line parser.

Promises (README "Guarantees"):
- whatever a recipe or an override holds, loading it either gives a validated config or raises `ConfigError` /
  `UnknownNameError` with a one-line message; never another exception;
- a valid override reaches the config unchanged, and a resolved config reloads to itself;
- whatever the command line holds, `dsnet` exits 0, 1 (one `dsnet: error:` line) or 2 (usage), never with a
  traceback.

Example counts are modest so that the suite stays fast; raise them locally with HYPOTHESIS_PROFILE=thorough.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from urllib.error import URLError

import pytest
import yaml
from faultkit import fresh_cli_logging, run_cli, tiny_recipe, write_recipe  # noqa: F401 - fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dsnet.data.download
from dsnet.config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)
from dsnet.errors import ConfigError, UnknownNameError

settings.register_profile("fault-suite", max_examples=60, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=1000, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "fault-suite"))

# ------------------------------------------------------------------------------------------------ strategies

FIELDS = {cls: [f.name for f in dataclasses.fields(cls)] for cls in (ModelConfig, DataConfig, OptimConfig, TrainConfig)}
SECTION_KEYS = {
    "model": FIELDS[ModelConfig],
    "data": FIELDS[DataConfig],
    "optim": FIELDS[OptimConfig],
    "train": FIELDS[TrainConfig],
    "objective": ["name", "eps", "step_size", "steps", "beta", "start", "tau_schedule", "noise", "epss"],
    "schedule": ["name", "milestones", "factors", "warmup_epochs", "final_lr", "peak_fraction", "milestone"],
}
NAMES = ["dsnet_tiny", "resnet_tiny", "dsnet_tiyn", "cifar10", "svhn", "cifar11", "at", "trades", "mart", "fat",
         "fast_at", "standard", "tradez", "piecewise", "cosine", "cyclic", "auto", "cpu", "cuda", "cuda:3", "tpu",
         "bf16", "fp8", "last", "best_val_pgd", "uniform", "normal", "8/255", "1/0", "0/0", "1e400", "-0.5", "3e-2",
         "nan", "inf", ""]

small_ints = st.integers(-3, 12)
scalars = st.one_of(
    st.none(), st.booleans(), small_ints, st.integers(), st.floats(), st.text(max_size=8), st.sampled_from(NAMES),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4),
                                                                                           inner, max_size=3),
                      max_leaves=6)
# Model constructor arguments stay small: a DS-Net of depth 10**6 is valid input, it just takes long to build.
model_kwargs = st.dictionaries(
    st.sampled_from(["width", "width_factor", "depth", "blocks", "attention", "attention_init", "widht"]),
    st.one_of(small_ints, st.text(max_size=6), st.lists(st.sampled_from(["residual", "mbconv", "foo"]), max_size=3),
              st.floats(), st.none()),
    max_size=3,
)


@st.composite
def sections(draw: st.DrawFn, name: str) -> object:
    if draw(st.integers(0, 9)) == 0:
        return draw(values)  # not a mapping at all
    keys = st.sampled_from(SECTION_KEYS[name]) | st.text(max_size=6)
    section = draw(st.dictionaries(keys, values, max_size=4))
    if name == "model":
        section["name"] = draw(st.sampled_from(["dsnet_tiny", "resnet_tiny", "dsnet_tiyn"]) | scalars)
        if draw(st.booleans()):
            section["kwargs"] = draw(model_kwargs)
    return section


@st.composite
def recipes(draw: st.DrawFn) -> object:
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    chosen = draw(st.lists(st.sampled_from(list(SECTION_KEYS) + ["trian", "extra"]), unique=True, max_size=6))
    return {name: draw(sections(name)) if name in SECTION_KEYS else draw(values) for name in chosen}


dotted_keys = st.lists(st.sampled_from(list(SECTION_KEYS) + ["kwargs", "x"]) | st.text(max_size=5), min_size=0,
                       max_size=3).map(".".join)
override_texts = st.one_of(
    st.text(max_size=20),
    st.tuples(dotted_keys, st.text(max_size=12)).map("=".join),
    st.tuples(st.sampled_from([f"{s}.{k}" for s, keys in SECTION_KEYS.items() for k in keys]),
              st.sampled_from(NAMES) | st.integers(-5, 200).map(str) | st.text(max_size=6)).map("=".join),
)


def _one_line_problem(error: Exception) -> None:
    """Only our own error types escape, with a message (the CLI prints it on one line: see the last test)."""
    assert isinstance(error, (ConfigError, UnknownNameError)), f"{type(error).__name__}: {error}"
    assert str(error).strip(), repr(error)


# ----------------------------------------------------------------------------------------------- the loader


@PROFILE
@given(recipes())
def test_any_recipe_loads_or_fails_with_a_config_error(raw: object) -> None:
    try:
        config = config_from_dict(raw)  # type: ignore[arg-type]
    except Exception as error:  # noqa: BLE001 - the property is about which exceptions escape
        _one_line_problem(error)
    else:
        assert isinstance(config, RunConfig)


@PROFILE
@given(st.lists(override_texts, max_size=4))
def test_any_override_loads_or_fails_with_a_config_error(overrides: list[str]) -> None:
    base = tiny_recipe()
    try:
        config_from_dict(apply_overrides(base, overrides))
    except Exception as error:  # noqa: BLE001
        _one_line_problem(error)
    assert base == tiny_recipe(), "apply_overrides must not change its input"


@PROFILE
@given(st.lists(st.sampled_from(list(SECTION_KEYS)), min_size=1, max_size=3).map(".".join),
       st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=10),
                 st.lists(st.integers(-9, 9), max_size=3)))
def test_parse_override_reads_back_what_was_written(key: str, value: object) -> None:
    if "." not in key:
        with pytest.raises(ConfigError, match="dotted"):
            parse_override(f"{key}=1")
        return
    text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()
    path, parsed = parse_override(f"{key}={text}")
    assert path == key.split(".")
    if text:
        assert parsed == value or (isinstance(value, str) and not value.strip() and parsed is None)


@PROFILE
@given(eps=st.floats(0, 1, exclude_max=True), steps=st.integers(1, 50), epochs=st.integers(1, 300),
       lr=st.floats(1e-6, 10), batch=st.integers(1, 4096), seed=st.integers(0, 2**31 - 1))
def test_valid_overrides_reach_the_config_unchanged(eps: float, steps: int, epochs: int, lr: float, batch: int,
                                                     seed: int) -> None:
    overrides = [f"objective.eps={eps!r}", f"objective.step_size={eps / 4!r}", f"objective.steps={steps}",
                 f"train.epochs={epochs}", f"optim.lr={lr!r}", f"train.batch_size={batch}", f"train.seed={seed}",
                 f"schedule.milestones=[{epochs}]", "schedule.factors=[0.1]"]
    config = load_config(None, overrides)
    assert config.objective["eps"] == eps and config.objective["step_size"] == eps / 4
    assert config.objective["steps"] == steps and config.train.epochs == epochs and config.optim.lr == lr
    assert config.train.batch_size == batch and config.train.seed == seed


@PROFILE
@given(recipes())
def test_a_resolved_config_reloads_to_itself(raw: object) -> None:
    try:
        config = config_from_dict(raw)  # type: ignore[arg-type]
    except (ConfigError, UnknownNameError):
        return
    plain = config_to_dict(config)
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(plain))) == config


def test_fractions_and_exponents_are_numbers_everywhere() -> None:
    config = load_config(None, ["objective.eps=8/255", "objective.step_size=2e-3", "optim.weight_decay=5e-4"])
    assert config.objective["eps"] == 8 / 255 and config.objective["step_size"] == 2e-3
    assert config.optim.weight_decay == 5e-4


# ------------------------------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Paths the fuzzed command lines point at: a valid recipe, a bare state dict, an empty data folder, a file
    where a folder belongs. None of them lets a command do real work (no dataset anywhere)."""
    import torch

    from dsnet.models import create_model

    root = tmp_path_factory.mktemp("cli")
    (root / "empty-data").mkdir()
    (root / "a-file").write_text("x")
    torch.save(create_model("resnet_tiny").state_dict(), root / "weights.pt")
    write_recipe(root / "recipe.yaml", tiny_recipe(data={"download": False}))
    return {"root": root, "recipe": root / "recipe.yaml"}


@st.composite
def argvs(draw: st.DrawFn, files: dict[str, Path]) -> list[str]:
    """Mostly well-formed commands (so the handlers run, not only argparse) with random values, sometimes a
    required option dropped or random words inserted."""
    root = files["root"]
    path = st.sampled_from([str(root / name) for name in ("recipe.yaml", "empty-data", "a-file", "a-file/sub",
                                                          "missing.pt", "weights.pt", "out", "recipe.yaml.nope")])
    path = path | st.text(max_size=10)
    word = st.sampled_from(NAMES + ["pgd", "fgsm", "cw_inf", "autoattack", "clean", "paper", "train", "test"])
    word = word | st.text(max_size=8)
    number = st.sampled_from(["0", "1", "-1", "0.5", "2", "1e9", "nan", "x"])
    command = draw(st.sampled_from(["train", "download", "eval", "export"]))
    options: list[list[str]] = {
        "train": [["--config", draw(path)], ["--data-dir", draw(path)], ["--out-dir", draw(path)]],
        "download": [[draw(word)], ["--data-dir", draw(path)]],
        "eval": [["--checkpoint", draw(path)], ["--data-dir", draw(path)]],
        "export": [["--checkpoint", draw(path)], ["--out-dir", draw(path)]],
    }[command]
    if draw(st.integers(0, 9)) == 0:
        options.pop(draw(st.integers(0, len(options) - 1)))
    optional = {
        "train": [["--set", draw(override_texts)], ["--set", draw(override_texts)], ["--resume"], ["--no-progress"]],
        "download": [["--splits", draw(word)], ["--no-progress"]],
        "eval": [["--attacks", draw(word), draw(word)], ["--n-examples", draw(number)], ["--subset", draw(number)],
                 ["--preset", draw(word)], ["--model", draw(word)], ["--out-dir", draw(path)],
                 ["--batch-size", draw(number)], ["--dataset", draw(word)], ["--split", draw(word)],
                 ["--trained-with", draw(word)], ["--device", draw(word)], ["--no-sanity"], ["--restart"]],
        "export": [["--report", draw(path)], ["--name", draw(word)], ["--model", draw(word)],
                   ["--dataset", draw(word)]],
    }[command]
    chosen = draw(st.lists(st.sampled_from(range(len(optional))), unique=True, max_size=4))
    options += [optional[i] for i in chosen]
    options = draw(st.permutations(options))
    argv = [command] + [token for option in options for token in option]
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(word | path | st.sampled_from(["-h", "-v", "--"])))
    return argv


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request, timeout: float | None = None):  # noqa: ANN001, ANN202
        raise URLError("no network in tests")

    monkeypatch.setattr(dsnet.data.download, "urlopen", refuse)


@pytest.mark.usefixtures("fresh_cli_logging", "no_network")
def test_any_command_line_exits_0_1_or_2_without_a_traceback(cli_files: dict[str, Path], capsys,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(cli_files["root"])  # relative paths land in the test's folder

    @PROFILE
    @given(argvs(cli_files))
    def check(argv: list[str]) -> None:
        try:
            code, _, err = run_cli(argv, capsys)
        except SystemExit as exit_:
            assert exit_.code in (0, 2), argv  # argparse: --help, or a usage error
            capsys.readouterr()
            return
        assert code in (0, 1, 2), argv
        if code == 1:
            lines = err.strip().splitlines()
            assert lines and lines[-1].startswith("dsnet: error: ") and "Traceback" not in err, (argv, err)
            assert sum(line.startswith("dsnet:") for line in lines) == 1, (argv, err)

    check()
