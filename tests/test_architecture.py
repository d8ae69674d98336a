"""The package's shape, as tests: every package only looks down its layers, no import circle, the trainer names no
objective or model, and a new objective is one file.

The import graph is read from the source (every `import` statement, also those inside functions), so an import
added in a function body to dodge a circle at import time is caught as well.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from dsnet_testing import tiny_recipe

import dsnet
from dsnet.errors import ConfigError

PACKAGE = Path(dsnet.__file__).parent

LAYERS = (
    ("errors", "lazy"),
    ("dsnet", "registry", "coerce", "options"),
    ("validate", "runtime"),
    ("models", "data", "attacks", "schedules"),
    ("objectives",),
    ("config", "evaluation"),
    ("training",),
    ("analysis",),
    ("experiments",),
    ("cli",),
    ("__main__",),
)
"""Every top-level module and package of dsnet, lowest first ("dsnet" is the package's own face). A package imports
only from lower layers: no arrow runs back up, and nothing in a layer imports its neighbours in the same layer."""

LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = ("dsnet",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, module_level_only: bool) -> set[str]:
    """The dsnet modules `path` imports (relative imports resolved), TYPE_CHECKING blocks included: an import that
    only a type checker runs still ties the two files together for a reader."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                found.add(module)
                found.update(f"{module}.{alias.name}" for alias in node.names)
            if module_level_only and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for field in ("body", "orelse", "finalbody", "handlers"):
                visit([n for n in getattr(node, field, []) if isinstance(n, (ast.stmt, ast.ExceptHandler))])

    visit(tree.body)
    return {m for m in found if m == "dsnet" or m.startswith("dsnet.")}


SOURCES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _package(module: str) -> str:
    """The top-level package or module of a dsnet module ("dsnet.evaluation.export" -> "evaluation")."""
    return module.split(".")[1] if "." in module else "dsnet"


def test_every_package_has_a_layer() -> None:
    packages = {_package(name) for name in SOURCES}
    missing, gone = sorted(packages - set(LAYER)), sorted(set(LAYER) - packages)
    assert not missing and not gone, f"add {missing} to LAYERS; drop {gone}"


def test_every_package_imports_only_from_the_layers_below() -> None:
    offenders = []
    for name, path in SOURCES.items():
        for imported in _imports(path, module_level_only=False):
            mine, theirs = _package(name), _package(imported)
            if mine != theirs and LAYER[theirs] >= LAYER[mine]:
                offenders.append(f"{name} imports {imported} ({theirs} is not below {mine})")
    assert not offenders, offenders


def _resolve(module: str) -> str | None:
    """A module of the graph for an imported name (`dsnet.attacks.core.eval_mode` -> `dsnet.attacks.core`)."""
    while module and module not in SOURCES:
        module = module.rpartition(".")[0]
    return module or None


def test_there_is_no_import_circle() -> None:
    """No two modules import each other, even through a chain and even inside functions."""
    graph = {name: {m for m in map(_resolve, _imports(path, module_level_only=False)) if m and m != name}
             for name, path in SOURCES.items()}
    # a package's face (__init__) hands names on lazily and imports nothing but dsnet.lazy: parent edges are fine
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt])
            elif nxt not in state:
                walk(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            walk(name, [name])
    assert not cycles, cycles


def test_the_trainer_names_no_objective_and_no_model() -> None:
    from dsnet.models import list_models
    from dsnet.objectives import OBJECTIVES

    source = (PACKAGE / "training" / "trainer.py").read_text()
    literals = {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
                and isinstance(node.value, str)}
    names = {node.id for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Name)}
    assert not literals & set(OBJECTIVES.names()), literals & set(OBJECTIVES.names())
    assert not literals & set(list_models()), literals & set(list_models())
    assert not names & {"DSNet", "AdaRKNet", "WideResNet", "ResNet"}, names


def test_an_objective_in_one_file_trains_and_is_evaluated_with_its_own_step(
        cifar10_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's worked example, verbatim in spirit: one file, one decorator, nothing else edited."""
    from dsnet.config import config_from_dict
    from dsnet.evaluation.threat_models import resolve_preset
    from dsnet.objectives import OBJECTIVES
    from dsnet.training.trainer import train

    OBJECTIVES.names()  # the package scanned first: what it registers must outlive the copy below
    monkeypatch.setattr(OBJECTIVES, "_entries", dict(OBJECTIVES._entries))  # unregistered again afterwards
    source = tmp_path / "clean_logit_pairing.py"
    source.write_text('''
from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F

from dsnet.objectives import ObjectiveOutput, PGDObjective, ce_attack_loss, register_objective


@register_objective
@dataclass(frozen=True)
class CleanLogitPairing(PGDObjective):
    """PGD-AT plus λ times the mean squared distance between clean and adversarial logits."""

    name: ClassVar[str] = "clean_logit_pairing"
    paper_eval_step: ClassVar[float] = 0.005
    weight: float = 0.5

    def attack_loss(self, model, x, y):
        return ce_attack_loss(y)

    def outer(self, model, x, x_adv, y):
        logits_adv, logits_nat = model(x_adv), model(x)
        pairing = (logits_adv - logits_nat).pow(2).sum(dim=1).mean()
        loss = F.cross_entropy(logits_adv, y) + self.weight * pairing
        return ObjectiveOutput(loss, logits_adv, y, {"pairing": pairing.detach()})
''')
    spec = importlib.util.spec_from_file_location("clean_logit_pairing", source)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "clean_logit_pairing", module)
    spec.loader.exec_module(module)

    recipe = tiny_recipe(objective={"name": "clean_logit_pairing", "steps": 1, "weight": 0.25},
                         train={"epochs": 1, "max_steps_per_epoch": 2})
    config = config_from_dict(recipe)
    assert config.objective.weight == 0.25
    result = train(config, cifar10_dir, tmp_path / "run")
    assert torch.isfinite(torch.tensor(result.final["train_loss"]))
    assert result.final["train_pairing"] >= 0  # the objective's own metric reaches the log
    # L2 training and AWP come with the base class, through the objective's own outer loss
    extended = {"name": "clean_logit_pairing", "steps": 1, "norm": "L2", "eps": 0.5, "step_size": 0.125,
                "awp_gamma": 0.01}
    result = train(config_from_dict(tiny_recipe(objective=extended, train={"epochs": 1, "max_steps_per_epoch": 2})),
                   cifar10_dir, tmp_path / "run-l2-awp")
    assert torch.isfinite(torch.tensor(result.final["train_loss"]))
    assert resolve_preset("paper", "clean_logit_pairing")["pgd"]["step_size"] == 0.005
    with pytest.raises(ConfigError, match="weigth.*did you mean 'weight'"):
        config_from_dict(tiny_recipe(objective={"name": "clean_logit_pairing", "weigth": 1.0}))


def test_the_command_line_is_built_without_importing_torch() -> None:
    """`dsnet -h` answers at once: building every subcommand's parser imports no torch (each command imports what it
    runs when it runs)."""
    import subprocess

    code = "import sys, dsnet.cli; dsnet.cli.build_parser(); print(sorted(m for m in sys.modules if m == 'torch'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def _drop_into_package(package: str, registry: object, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes `folder` part of `package` (as if its files had been saved into the package's own folder) and lets
    `registry` scan the package again; both are undone after the test."""
    module = importlib.import_module(package)
    registry.names()  # type: ignore[attr-defined]  # scanned first: a module imported during the test would
    # otherwise register into the copy only, and be missing from the registry for every later test in this process
    monkeypatch.setattr(module, "__path__", [*module.__path__, str(folder)])
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    monkeypatch.setattr(registry, "_meta", dict(registry._meta))
    monkeypatch.setattr(registry, "_scanned", False)


def test_an_attack_is_one_file_in_the_attacks_package(cifar10_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One new file with one decorator, nothing else edited: `dsnet eval --attacks NAME` finds and runs it through the
    one robust-flags loop, with the threat model's ε."""
    from dsnet.attacks import ATTACKS
    from dsnet.cli import main
    from dsnet.config import config_from_dict
    from dsnet.training.trainer import train

    folder = tmp_path / "new_files"
    folder.mkdir()
    (folder / "two_step_pgd.py").write_text('''
from dsnet.attacks.base import register_attack
from dsnet.attacks.gradient import PGD


@register_attack("two_step_pgd", "PGD with two half-epsilon steps from a uniform start")
def two_step_pgd(*, eps: float, seed: int = 0, norm: str = "Linf") -> PGD:
    return PGD(eps=eps, step_size=eps / 2, steps=2, seed=seed, norm=norm)
''')
    _drop_into_package("dsnet.attacks", ATTACKS, folder, monkeypatch)
    monkeypatch.delitem(sys.modules, "dsnet.attacks.two_step_pgd", raising=False)
    train(config_from_dict(tiny_recipe(objective={"name": "standard"}, train={"epochs": 1})), cifar10_dir,
          tmp_path / "run")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data-dir", str(cifar10_dir),
                 "--out-dir", str(out), "--attacks", "clean", "two_step_pgd", "--preset", "standard",
                 "--n-examples", "16", "--no-sanity", "--no-progress"]) == 0
    attack = json.loads((out / "report.json").read_text())["attacks"]["two_step_pgd"]
    assert attack["settings"]["eps"] == 8 / 255 and attack["settings"]["steps"] == 2
    sys.modules.pop("dsnet.attacks.two_step_pgd", None)


def test_a_threat_model_is_one_file_in_the_threat_models_package(cifar10_dir: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A new threat model (an L∞ ball of 4/255 with its own preset) is one file: `--threat-model` takes it, the
    evaluator runs its attacks and checks, and its report names it."""
    from dsnet.cli import main
    from dsnet.config import config_from_dict
    from dsnet.evaluation.threat_models import THREAT_MODELS
    from dsnet.training.trainer import train

    folder = tmp_path / "new_files"
    folder.mkdir()
    (folder / "linf_small.py").write_text('''
from dsnet.evaluation.suite import Preset
from dsnet.evaluation.threat_models.base import ThreatModel, norm_preset, register_threat_model
from dsnet.registry import Registry

PRESETS = Registry("Linf4 attack preset")
PRESETS.add("standard", norm_preset("standard", 4 / 255, 1 / 255, "Linf", "L-inf at 4/255, steps of 1/255"))
register_threat_model(ThreatModel("Linf4", "L∞ (4/255)", "Linf", ("fgsm", "pgd"), PRESETS, "standard",
                                  sweep_large_eps=0.5, usual_eps=16 / 255, max_eps=1.0))
''')
    _drop_into_package("dsnet.evaluation.threat_models", THREAT_MODELS, folder, monkeypatch)
    monkeypatch.delitem(sys.modules, "dsnet.evaluation.threat_models.linf_small", raising=False)
    train(config_from_dict(tiny_recipe(objective={"name": "standard"}, train={"epochs": 1})), cifar10_dir,
          tmp_path / "run")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data-dir", str(cifar10_dir),
                 "--out-dir", str(out), "--threat-model", "Linf4", "--n-examples", "16", "--sanity-n", "8",
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["threat_model"]["name"] == "Linf4" and report["threat_model"]["eps"] == 4 / 255
    assert list(report["accuracy"]) == ["clean", "fgsm", "pgd", "worst_case"]
    assert report["attacks"]["pgd"]["settings"]["step_size"] == 1 / 255
    assert {c["name"]: c["status"] for c in report["sanity_checks"]}["eps_sweep"] != "skipped"
    sys.modules.pop("dsnet.evaluation.threat_models.linf_small", None)
