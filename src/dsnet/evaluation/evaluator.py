"""`evaluate()`: what `dsnet eval` runs. Clean accuracy, FGSM, PGD-20, CW∞-30 and AutoAttack on a checkpoint.

How one evaluation goes (`Evaluation.run`):

1. Rebuild the model from the checkpoint (fp32, eval mode) and read the dataset and training objective from
   its config (`dsnet.evaluation.loading`); the objective picks the paper preset's PGD/CW step.
2. Choose the points: all of the split, the first N (`n_examples`), or a seeded fraction (`subset`).
3. Clean accuracy, then each attack through its `evaluate` (the one robust-flags loop, `dsnet.attacks.metrics`;
   AutoAttack runs the reference on the whole set and keeps its per-stage accuracies and check warnings). A
   point counts as robust to an attack when its clean and adversarial inputs are both classified correctly; the
   worst case ANDs the per-point flags of every metric.
4. After every metric, its flags, settings, statistics and runtime go to `eval_state.json` (atomically); a
   rerun with the same settings skips what is finished, and an attack with resume state of its own (AutoAttack)
   continues inside itself.
5. Sanity checks for gradient masking (`dsnet.evaluation.sanity`), including an ε sweep of PGD on a sample.
6. `report.json` and `report.md` in `out_dir` (default `<checkpoint folder>/eval-<preset>`).

Under `torchrun` every rank attacks its share of the points (`dsnet.runtime.shard_positions`); per-point results
are summed across ranks, and rank 0 alone writes files and shows progress. FGSM, PGD and CW∞ give the same flags
on any number of processes; AutoAttack's random draws depend on the sharding (recorded, and a resume needs the
same number of processes).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import dsnet
from dsnet.attacks.base import ATTACKS, Attack
from dsnet.attacks.linf import PGD
from dsnet.attacks.metrics import AttackRun, clean_flags
from dsnet.errors import ConfigError
from dsnet.evaluation.loading import LoadedModel, load_model_for_evaluation
from dsnet.evaluation.points import PointSelection, select_points
from dsnet.evaluation.presets import DEFAULT_ATTACKS, PRESETS, build_attacks, resolve_preset
from dsnet.evaluation.report import METRIC_ORDER, AttackOutcome, EvalReport, flags_from_string, flags_to_string
from dsnet.evaluation.sanity import (
    SWEEP_EPS_FACTORS,
    SWEEP_LARGE_EPS,
    check_eps_sweep,
    check_ordering,
    check_perturbations,
    check_pgd_vs_margin,
    check_square,
)
from dsnet.evaluation.state import STATE_NAME, EvalState
from dsnet.registry import unknown_name
from dsnet.runtime.distributed import DistributedContext, barrier, setup_distributed, teardown_distributed
from dsnet.runtime.files import ensure_writable_folder
from dsnet.runtime.lock import FolderLock
from dsnet.runtime.precision import full_fp32
from dsnet.validate import Problems

__all__ = ["evaluate", "EvalSettings", "Evaluation", "resolve_attack_names", "default_out_dir", "SWEEP_STEPS"]

logger = logging.getLogger(__name__)

SWEEP_STEPS = 20
"""PGD steps of the sanity sweep (step ε/4 at every ε)."""


def resolve_attack_names(names: Iterable[str] | None, preset: str = "paper") -> list[str]:
    """The metrics to compute, clean first, then the attacks in the paper's order.

    Args:
        names: attack names ("clean", "fgsm", "pgd", "cw_inf", "autoattack", ...); comma-separated items are
            split. None means the default: clean, fgsm, pgd, cw_inf, autoattack.
        preset: the preset whose attacks are valid names.

    Raises:
        UnknownNameError: an unknown preset or attack name (the message lists the valid ones).
    """
    PRESETS.get(preset)  # an unknown preset is an error here too
    valid = ["clean"] + ATTACKS.names()
    requested: list[str] = []
    for item in (["clean", *DEFAULT_ATTACKS] if names is None else names):
        requested += [part.strip() for part in str(item).split(",") if part.strip()]
    for name in requested:
        if name not in valid:
            raise unknown_name("attack", name, valid)
    order = {name: i for i, name in enumerate(METRIC_ORDER)}
    unique = list(dict.fromkeys(requested))
    ranked = sorted(unique, key=lambda name: (order.get(name, len(order)), unique.index(name)))
    return ["clean"] + [name for name in ranked if name != "clean"]


def default_out_dir(checkpoint: str | Path, preset: str) -> Path:
    """`<checkpoint folder>/eval-<preset>`."""
    return Path(checkpoint).parent / f"eval-{preset}"


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an evaluation besides the model's file and the data folder (see `evaluate`).

    Built from `evaluate`'s keyword arguments and checked at once: every problem is named in one error.
    """

    attacks: Sequence[str] | None = None
    preset: str = "paper"
    n_examples: int | None = None
    subset: float | None = None
    split: str = "test"
    batch_size: int = 256
    seed: int = 0
    model_name: str | None = None
    dataset: str | None = None
    trained_with: str | None = None
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sanity: bool = True
    sanity_n: int = 128
    restart: bool = False
    device: str | torch.device | None = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        problems = Problems()
        problems.integer("--batch-size", self.batch_size, minimum=1)
        problems.integer("--sanity-n", self.sanity_n, minimum=1)
        problems.integer("--seed", self.seed, minimum=0)
        if self.n_examples is not None and self.subset is not None:
            problems.add("--n-examples and --subset exclude each other; pass one of them")
        problems.raise_if_any()
        object.__setattr__(self, "overrides", {k: dict(v or {}) for k, v in dict(self.overrides or {}).items()})
        object.__setattr__(self, "device", "auto" if self.device is None else str(self.device))
        object.__setattr__(self, "attacks", tuple(resolve_attack_names(self.attacks, self.preset)))

    @property
    def attack_names(self) -> list[str]:
        """The attacks to run, without "clean"."""
        return [name for name in self.attacks if name != "clean"]  # type: ignore[union-attr]


def _versions() -> dict[str, str]:
    try:
        autoattack = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        autoattack = "not installed"
    return {"dsnet": dsnet.__version__, "torch": str(torch.__version__), "pyautoattack": autoattack,
            "python": platform.python_version()}


def _step_note(preset: str, trained_with: str, source: str) -> str:
    from dsnet.objectives import OBJECTIVES

    step = resolve_preset(preset, trained_with)["pgd"]["step_size"]
    if preset == "paper":
        why = OBJECTIVES.get(trained_with).paper_eval_step_note
        return f"PGD and CW∞ step {step:.5g} ({why}); the model was trained with '{trained_with}' ({source})"
    return (f"PGD and CW∞ step {step:.5g} (ε/4 for every model under the {preset} preset); the model was trained "
            f"with '{trained_with}' ({source})")


class Evaluation:
    """One call of `evaluate`: a class so that every step has a name. See the module docstring.

    Args:
        ctx: this process's place among the processes.
        settings: what to compute.
        checkpoint: the model's file.
        data_dir: the dataset folder.
        out: the report folder (locked by the caller).
    """

    def __init__(self, ctx: DistributedContext, settings: EvalSettings, checkpoint: str | Path,
                 data_dir: str | Path, out: Path) -> None:
        self.ctx = ctx
        self.settings = settings
        self.checkpoint = checkpoint
        self.data_dir = data_dir
        self.out = out
        self.started = time.perf_counter()
        self.outcomes: list[AttackOutcome] = []

    # ------------------------------------------------------------------------------------------------ setup
    def _load(self) -> None:
        from dsnet.data import load_dataset

        s = self.settings
        self.loaded: LoadedModel = load_model_for_evaluation(self.checkpoint, model_name=s.model_name,
                                                             dataset=s.dataset, trained_with=s.trained_with,
                                                             device=self.ctx.device)
        self.key = {
            "model_name": self.loaded.model_name, "model_kwargs": self.loaded.model_kwargs,
            "weights_sha256": self.loaded.weights_sha256, "dataset": self.loaded.dataset, "split": s.split,
            "preset": s.preset, "trained_with": self.loaded.trained_with, "batch_size": s.batch_size,
            "seed": s.seed, "overrides": s.overrides,
        }
        if not s.restart:  # an earlier evaluation with other settings is refused before the data is read
            EvalState.check(self.out / STATE_NAME, self.key)
        # Several ranks downloading into one folder would race; under torchrun the data must be there already.
        data = load_dataset(self.loaded.dataset, self.data_dir, s.split, download=not self.ctx.distributed,
                            progress=self.ctx.is_main)
        self.selection: PointSelection = select_points(len(data), n_examples=s.n_examples, subset=s.subset,
                                                       seed=s.seed)
        self.images = data.images.index_select(0, self.selection.indices).to(self.ctx.device)  # uint8
        self.labels = data.labels.index_select(0, self.selection.indices).to(self.ctx.device)
        self.key.update(n=self.selection.n, points_sha256=self.selection.sha256)

    def _build_attacks(self) -> dict[str, Attack]:
        s = self.settings
        stray = sorted(set(s.overrides) - set(s.attack_names))
        if stray:
            raise ConfigError(f"overrides for {', '.join(stray)}, which this evaluation does not run "
                              f"({', '.join(s.attack_names) or 'no attack'})")
        if not s.attack_names:
            return {}
        overrides = {name: {"seed": s.seed, **s.overrides.get(name, {})} for name in s.attack_names}
        return build_attacks(s.preset, self.loaded.trained_with, s.attack_names, overrides)

    def _open_state(self, attacks: dict[str, Attack]) -> EvalState:
        path = self.out / STATE_NAME
        if self.ctx.is_main and self.settings.restart:
            path.unlink(missing_ok=True)
            for attack in attacks.values():
                attack.discard_state(self.out)
        barrier()
        state = EvalState.open(path, self.key, restart=self.settings.restart)
        if not self.ctx.is_main:
            state.path = None  # rank 0 alone writes
        return state

    # ---------------------------------------------------------------------------------------------- metrics
    def _metric(self, state: EvalState, name: str, label: str, config: dict[str, Any],
                compute: Any) -> AttackOutcome:
        """A finished metric from the state file, or computed now and recorded there."""
        stored = state.finished(name, config)
        n = self.selection.n
        if stored is not None:
            outcome = AttackOutcome(name, label, config, flags_from_string(stored["flags"]), stored["runtime_s"],
                                    stored.get("stats", {}), resumed=True, extra=stored.get("extra", {}))
            how = "from the earlier run"
        else:
            t0 = time.perf_counter()
            run: AttackRun = compute()
            outcome = AttackOutcome(name, label, config, run.flags, time.perf_counter() - t0, run.stats,
                                    extra=run.extra)
            state.record(name, {"config": config, "flags": flags_to_string(run.flags), "runtime_s": outcome.runtime_s,
                                "stats": run.stats, "extra": run.extra})
            how = f"in {outcome.runtime_s:.1f} s"
        if self.ctx.is_main:
            logger.info("%s: %.2f%% (%d/%d) %s", label, 100 * outcome.accuracy, outcome.robust, n, how)
        self.outcomes.append(outcome)
        return outcome

    def _eps_sweep(self, state: EvalState, eps: float, clean: torch.Tensor) -> list[tuple[float, float]]:
        """PGD accuracy at ε × (0.5, 1, 2, 4) and at a large ε, on the first `sanity_n` points (stored for resume)."""
        s = self.settings
        n = min(s.sanity_n, self.selection.n)
        levels = [factor * eps for factor in SWEEP_EPS_FACTORS]
        if SWEEP_LARGE_EPS > levels[-1]:
            levels.append(SWEEP_LARGE_EPS)
        config = {"n": n, "eps": levels, "steps": SWEEP_STEPS, "step_size": "eps/4", "seed": s.seed}
        if state.sweep is not None and state.sweep.get("config") == config:
            return [(float(e), float(a)) for e, a in state.sweep["accuracy"]]
        results = []
        for level in levels:
            attack = PGD(eps=level, step_size=level / 4, steps=SWEEP_STEPS, seed=s.seed)
            run = attack.evaluate(self.loaded.model, self.images[:n], self.labels[:n], clean=clean[:n],
                                  batch_size=s.batch_size, progress=self._bar(f"sweep ε={level:.4g}"))
            results.append((level, int(run.flags.sum()) / max(n, 1)))
        state.record_sweep({"config": config, "accuracy": [[e, a] for e, a in results]})
        if self.ctx.is_main:
            logger.info("ε sweep (PGD-%d on %d points): %s", SWEEP_STEPS, n,
                        ", ".join(f"{100 * a:.1f}% at {e:.4g}" for e, a in results))
        return results

    def _bar(self, label: str) -> str | None:
        return label if self.settings.progress and self.ctx.is_main else None

    # -------------------------------------------------------------------------------------------------- run
    def run(self) -> EvalReport:
        s = self.settings
        self._load()
        attacks = self._build_attacks()
        state = self._open_state(attacks)
        model, loaded, selection = self.loaded.model, self.loaded, self.selection
        eps = float(attacks["pgd"].config()["eps"] if "pgd" in attacks else PRESETS.get(s.preset).eps)
        if self.ctx.is_main:
            logger.info("evaluating %s (%s, %s) on %s/%s: n = %d, %s; preset %s, ε = %.5g; %s", self.checkpoint,
                        loaded.model_name, f"{loaded.parameters:,} parameters", loaded.dataset, s.split, selection.n,
                        selection.description, s.preset, PRESETS.get(s.preset).eps, ", ".join(s.attacks))
        # True fp32: no autocast, no TF32 convolutions or matmuls (cuDNN's default on Ampere and newer GPUs).
        with full_fp32(self.ctx.device.type) as math:
            clean = self._metric(state, "clean", "Natural", {}, lambda: AttackRun(
                clean_flags(model, self.images, self.labels, batch_size=s.batch_size, progress=self._bar("clean"))))
            for name, attack in attacks.items():
                self._metric(state, name, attack.label, attack.resume_key(self.ctx.world_size), lambda a=attack: a.evaluate(
                    model, self.images, self.labels, clean=clean.flags, batch_size=s.batch_size,
                    progress=self._bar(a.label), state_dir=self.out))
                barrier()
                attack.discard_state(self.out)  # the result is in eval_state.json now
            sweep = self._eps_sweep(state, eps, clean.flags) if s.sanity else None
        return self._report(eps, sweep, math)

    def _report(self, eps: float, sweep: list[tuple[float, float]] | None, math: dict[str, Any]) -> EvalReport:
        s, loaded, outcomes = self.settings, self.loaded, self.outcomes
        by_name = {o.name: o for o in outcomes}
        labels = {o.name: o.short_label for o in outcomes}
        aa = by_name["autoattack"].extra if "autoattack" in by_name else None
        sweep_n = min(s.sanity_n, self.selection.n)
        checks = [
            check_ordering({o.name: o.accuracy for o in outcomes}, labels),
            check_eps_sweep(sweep, sweep_n, reason_skipped="skipped (--no-sanity)."),
            check_square(aa.get("stage_accuracy") if aa else None, aa.get("stages_run") if aa else None),
            check_perturbations({o.name: o.stats for o in outcomes if o.name != "clean"}, labels, eps),
            check_pgd_vs_margin({o.name: o.flags for o in outcomes}, labels),
        ]
        device = self.ctx.device
        device_name = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                       else f"cpu ({torch.get_num_threads()} threads)")
        report = EvalReport(
            checkpoint=str(self.checkpoint),
            model={"name": loaded.model_name, "kwargs": loaded.model_kwargs, "num_classes": loaded.num_classes,
                   "parameters": loaded.parameters, "weights_sha256": loaded.weights_sha256,
                   "epoch": loaded.trained_epochs, "trained_with": loaded.trained_with,
                   "trained_with_source": loaded.trained_with_source},
            dataset=loaded.dataset,
            split=s.split,
            selection=self.selection,
            preset=s.preset,
            eps=eps,
            step_note=_step_note(s.preset, loaded.trained_with, loaded.trained_with_source),
            outcomes=outcomes,
            sanity_checks=checks,
            eps_sweep=sweep,
            eps_sweep_n=sweep_n,
            seeds={"seed": s.seed, "subset": self.selection.seed,
                   **{o.name: o.config.get("seed") for o in outcomes if o.name != "clean"},
                   "eps_sweep": s.seed if s.sanity else None},
            versions=_versions(),
            device={"type": device.type, "name": device_name, "world_size": self.ctx.world_size,
                    "dtype": "float32", "math": math},
            runtime_s=time.perf_counter() - self.started,
            overrides={k: dict(v) for k, v in s.overrides.items()},
        )
        if self.ctx.is_main:
            for check in report.failed_checks:
                logger.warning("sanity check failed: %s: %s", check.title, check.message)
            json_path, md_path = report.write(self.out)
            logger.info("worst case %.2f%%; reports: %s, %s", 100 * report.worst_case_accuracy, json_path, md_path)
        else:
            report.out_dir = self.out
        return report


def evaluate(checkpoint: str | Path, data_dir: str | Path, *, out_dir: str | Path | None = None,
             **options: Any) -> EvalReport:
    """Evaluates a checkpoint's robustness and writes `report.json` and `report.md`.

    Args:
        checkpoint: a checkpoint written by `dsnet train`, or a tensors-only state dict with `model_name`.
        data_dir: dataset folder (downloaded there when missing, on a single process).
        out_dir: folder for the reports and the resume state; default `<checkpoint folder>/eval-<preset>`.
        **options: the fields of `EvalSettings`:
            attacks: metrics to compute, from "clean", "fgsm", "fgsm_textbook", "pgd", "cw_inf", "autoattack";
                default clean, fgsm, pgd, cw_inf, autoattack. Clean accuracy is always computed; the attacks run
                and are reported in the paper's order.
            preset: "paper" (ε = 0.031, the authors' steps) or "standard" (ε = 8/255, RobustBench).
            n_examples: evaluate the first N points in file order (RobustBench convention).
            subset: evaluate a seeded random fraction of the points (0.125 is the paper's 12.5 %).
            split: the dataset split ("test"; SVHN also "extra").
            batch_size: points per forward pass and per attack call. AutoAttack keeps the reference's own
                default of 250 (its random draws depend on it); `overrides={"autoattack": {"batch_size": N}}`
                changes it.
            seed: seed of the subset draw, of every attack and of the ε sweep.
            model_name: the architecture, for a bare state dict (`dsnet models` lists them).
            dataset: the dataset; default the checkpoint's training dataset.
            trained_with: the training objective; default the checkpoint's (it picks the paper preset's step).
            overrides: attack name -> settings replacing the preset's (e.g. {"pgd": {"steps": 100}}); recorded in
                the report, which then calls the evaluation custom.
            sanity: run the ε sweep of the sanity checks (the other checks cost nothing and always run).
            sanity_n: points in the ε sweep (the first ones of the selection).
            restart: discard the results of an earlier run in `out_dir` instead of resuming it.
            device: "auto", "cpu", "cuda" or a torch device.
            progress: show progress bars on stderr (rank 0, and only when stderr is a terminal).

    Returns:
        The report (every rank returns it; rank 0 writes the files).

    Raises:
        UnknownNameError: an unknown attack, preset, model, dataset or split.
        ConfigError: conflicting or out-of-range options, or an `out_dir` holding an evaluation with other
            settings (without `restart`).
        CheckpointError: an unreadable checkpoint or one of another architecture.
        DataError: missing or corrupt dataset files.
    """
    settings = EvalSettings(**options)
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = setup_distributed(str(settings.device), option="--device")
    out = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint, settings.preset)
    lock = None
    try:
        if ctx.is_main:  # before anything is loaded: a folder that cannot take the report fails in a second
            ensure_writable_folder(out)
            lock = FolderLock(out, "evaluation", hint="wait for it to finish, or evaluate into another --out-dir")
            lock.acquire()
        return Evaluation(ctx, settings, checkpoint, data_dir, out).run()
    finally:
        if lock is not None:
            lock.release()
        if owns_group and ctx.distributed:
            teardown_distributed()
