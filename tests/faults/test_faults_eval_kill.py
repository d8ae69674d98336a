"""An evaluation killed with SIGKILL and rerun resumes without recomputing finished attacks and gives the same
report as an uninterrupted one.

Promise (README "Guarantees"). `dsnet eval` (clean, FGSM, PGD-20, CW∞-30 and the ε sweep on 16 points) is killed
three times and rerun with the same command each time:

1. just after `eval_state.json` recorded FGSM (the second write), before PGD starts;
2. in the rerun, after CW∞ finished but before its record was renamed into place;
3. at a seeded random moment of the next rerun;

and a last rerun finishes. After every kill `eval_state.json` must parse (never half-written) and keep every
result it had; a finished attack must never run again (its stored runtime and result stay those of the run that
computed it, and the log says it came from the earlier run); the final report must equal the uninterrupted one
apart from runtimes and the `resumed` marks.
"""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from faultkit import KILL_ENV, run_and_kill, small_cifar10, tiny_recipe

from dsnet.config import config_from_dict
from dsnet.evaluation import evaluate
from dsnet.training.trainer import train

ATTACKS = ["clean", "fgsm", "pgd", "cw_inf"]
OPTIONS = ["--attacks", *ATTACKS, "--n-examples", "16", "--sanity-n", "8", "--no-progress"]
ATTEMPT_TIMEOUT_S = 240.0


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-epoch checkpoint and its uninterrupted evaluation (in this process, one thread)."""
    root = tmp_path_factory.mktemp("evalkill")
    data = small_cifar10(root / "data")
    recipe = tiny_recipe(data={"val_size": 16}, objective={"name": "at", "eps": 0.031, "step_size": 0.01, "steps": 1},
                         train={"epochs": 1, "batch_size": 16, "val_pgd_steps": 1})
    train(config_from_dict(recipe), data, root / "run")
    checkpoint = root / "run" / "last.pt"
    evaluate(checkpoint, data, out_dir=root / "reference", attacks=ATTACKS, n_examples=16, sanity_n=8,
             progress=False)
    return {"root": root, "data": data, "checkpoint": checkpoint, "reference": root / "reference"}


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what legitimately differs between two runs of the same evaluation."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("runtime_s", "resumed", "images_per_s")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(report)


def _state(out: Path) -> dict[str, Any]:
    path = out / "eval_state.json"
    return json.loads(path.read_text()) if path.exists() else {"results": {}}


def _attempt(argv: list[str], cwd: Path, log: Path, kill_after_s: float | None = None, **env: str) -> int:
    """Runs one `dsnet eval`; with `kill_after_s`, SIGKILLs it that long after it logged its first result."""
    return run_and_kill(argv, cwd, log, started=lambda text: "Natural:" in text, what="logged its first result",
                        kill_after_s=kill_after_s, timeout_s=ATTEMPT_TIMEOUT_S, **env)


def test_killed_evaluation_resumes_without_recomputing_and_gives_the_same_report(evaluated: dict[str, Any]) -> None:
    root, out = evaluated["root"], evaluated["root"] / "killed"
    argv = ["eval", "--checkpoint", str(evaluated["checkpoint"]), "--data-dir", str(evaluated["data"]),
            "--out-dir", str(out), *OPTIONS]
    attempts = [
        ({KILL_ENV: "after:eval_state.json:2"}, None),
        ({KILL_ENV: "rename:eval_state.json:2"}, None),
        ({}, random.Random(7).uniform(0.0, 2.0)),
        ({}, None),
    ]
    first_seen: dict[str, dict[str, Any]] = {}  # attack -> its record when it first appeared in the state
    for i, (env, kill_after_s) in enumerate(attempts):
        log = root / f"eval-attempt{i}.stderr"
        code = _attempt(argv, root, log, kill_after_s, **env)
        text = log.read_text(errors="replace")
        if env:
            assert code == -signal.SIGKILL, f"attempt {i} ({env}) was not killed: exit {code}\n{text}"
        assert code in (0, -signal.SIGKILL), f"attempt {i} failed with exit {code}:\n{text}"
        results = _state(out)["results"]  # parses: never half-written
        assert set(first_seen) <= set(results), "a rerun lost a finished attack"
        for name, record in results.items():
            assert record == first_seen.setdefault(name, record), f"{name} was recomputed in attempt {i}"
        if i == 0:
            assert list(results) == ["clean", "fgsm"]
        if i == 1:
            assert list(results) == ["clean", "fgsm", "pgd"], "CW∞ was killed before its record was renamed"
            for label in ("Natural", "FGSM"):
                assert any(line.startswith(f"{label}:") and "from the earlier run" in line
                           for line in text.splitlines()), f"{label} was not taken from the earlier run"
    assert code == 0

    ours = json.loads((out / "report.json").read_text())
    theirs = json.loads((evaluated["reference"] / "report.json").read_text())
    assert _comparable(ours) == _comparable(theirs)
    assert all(ours["attacks"][name]["resumed"] for name in ("clean", "fgsm", "pgd"))
    # A kill inside a write leaves its hidden temporary file (`.eval_state.json.*.tmp`, a few kB); nothing reads
    # it, and no result file is ever incomplete.
    assert all(p.name.startswith(".") for p in out.iterdir() if p.name.endswith(".tmp"))
