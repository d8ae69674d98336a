"""`evaluate()`: what `dsnet eval` runs. Clean accuracy, FGSM, PGD-20, CW∞-30 and AutoAttack on a checkpoint.

How one evaluation goes:

1. Rebuild the model from the checkpoint (fp32, eval mode) and read the dataset and training objective from
   its config (`dsnet.evaluation.loading`); the objective picks the paper preset's PGD/CW step.
2. Choose the points: all of the split, the first N (`n_examples`), or a seeded fraction (`subset`).
3. Clean accuracy, then each attack on the points classified correctly, batch by batch; a point counts as
   robust to an attack when its clean and adversarial inputs are both classified correctly. The worst case
   ANDs the per-point flags of every metric. AutoAttack runs through `dsnet.attacks.AutoAttack.run`, which
   keeps its per-stage accuracies and check warnings.
4. After every metric, its flags, settings, statistics and runtime go to `eval_state.json` (atomically); a
   rerun with the same settings skips what is finished, and AutoAttack resumes inside an attack from its own
   per-rank state file.
5. Sanity checks for gradient masking (`dsnet.evaluation.sanity`), including an ε sweep of PGD on a sample.
6. `report.json` and `report.md` in `out_dir` (default `<checkpoint folder>/eval-<preset>`).

Under `torchrun` every rank attacks its share of the points (blocks of `batch_size`, dealt round-robin, see
`dsnet.evaluation.points.shard_positions`); per-point results are summed across ranks, and rank 0 alone
writes files and shows progress. FGSM, PGD and CW∞ give the same flags on any number of processes.
AutoAttack runs the reference on each rank's share, so its random draws depend on the sharding (its
settings record the number of processes, and a resume needs the same number).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import platform
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

import dsnet
from dsnet.attacks import ATTACKS, DEFAULT_ATTACKS, PGD, PRESETS, Attack, AutoAttack, build_attacks, resolve_preset
from dsnet.errors import ConfigError, UnknownNameError
from dsnet.evaluation.loading import LoadedModel, load_model_for_evaluation
from dsnet.evaluation.points import PointSelection, select_points
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
from dsnet.runtime.files import ensure_writable_folder
from dsnet.runtime.lock import FolderLock
from dsnet.runtime.precision import full_fp32
from dsnet.runtime.distributed import (
    DistributedContext,
    all_reduce,
    barrier,
    gather_objects,
    setup_distributed,
    shard_positions,
    teardown_distributed,
)

__all__ = ["evaluate", "resolve_attack_names", "default_out_dir", "SWEEP_STEPS"]

logger = logging.getLogger(__name__)

SWEEP_STEPS = 20
"""PGD steps of the sanity sweep (step ε/4 at every ε)."""

_AA_STATE = "autoattack-state.rank{rank}of{world}.pt"


def resolve_attack_names(names: Iterable[str] | None, preset: str = "paper") -> list[str]:
    """The metrics to compute, clean first, then the attacks in the paper's order.

    Args:
        names: attack names ("clean", "fgsm", "pgd", "cw_inf", "autoattack", ...); comma-separated items are
            split. None means the default: clean, fgsm, pgd, cw_inf, autoattack.
        preset: the preset whose attacks are valid names.

    Raises:
        UnknownNameError: an unknown preset or attack name (the message lists the valid ones).
    """
    if preset not in PRESETS:
        raise UnknownNameError(f"unknown attack preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    valid = ["clean"] + [name for name in ATTACKS.names() if name in PRESETS[preset]]
    requested: list[str] = []
    for item in (["clean", *DEFAULT_ATTACKS] if names is None else names):
        requested += [part.strip() for part in str(item).split(",") if part.strip()]
    for name in requested:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownNameError(f"unknown attack {name!r}; {hint}valid attacks: {', '.join(valid)}")
    order = {name: i for i, name in enumerate(METRIC_ORDER)}
    unique = list(dict.fromkeys(requested))
    ranked = sorted(unique, key=lambda name: (order.get(name, len(order)), unique.index(name)))
    return ["clean"] + [name for name in ranked if name != "clean"]


def default_out_dir(checkpoint: str | Path, preset: str) -> Path:
    """`<checkpoint folder>/eval-<preset>`."""
    return Path(checkpoint).parent / f"eval-{preset}"


def _versions() -> dict[str, str]:
    try:
        autoattack = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        autoattack = "not installed"
    return {"dsnet": dsnet.__version__, "torch": str(torch.__version__), "pyautoattack": autoattack,
            "python": platform.python_version()}


class _Evaluation:
    """One call of `evaluate`; a class so that every step has a name. See the module docstring."""

    def __init__(self, loaded: LoadedModel, images: torch.Tensor, labels: torch.Tensor, selection: PointSelection,
                 ctx: DistributedContext, *, batch_size: int, progress: bool) -> None:
        self.loaded = loaded
        self.model: nn.Module = loaded.model
        self.images = images  # (n, 3, H, W) uint8 on the device, the selected points in order
        self.labels = labels
        self.selection = selection
        self.ctx = ctx
        self.batch_size = batch_size
        self.progress = progress and ctx.is_main and sys.stderr.isatty()
        self.n = selection.n
        self.positions = shard_positions(self.n, ctx.rank, ctx.world_size, batch_size)
        self.clean: torch.Tensor | None = None  # (n,) bool on the device, once known

    # ----------------------------------------------------------------------------------------- helpers
    def _batches(self, positions: torch.Tensor, label: str) -> Iterator[tuple[int, torch.Tensor]]:
        """(offset, positions) of each batch; with a progress bar on rank 0 when asked."""
        starts = range(0, positions.numel(), self.batch_size)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(starts), desc=label, file=sys.stderr, leave=False, mininterval=0.25,
                       dynamic_ncols=True, unit="batch")
        try:
            for start in starts:
                yield start, positions[start : start + self.batch_size]
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()

    def _batch(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        index = positions.to(self.images.device)
        return self.images[index].to(torch.float32).div_(255), self.labels[index]

    def _gather(self, local: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        """Per-point values of every rank's positions as one (n,) tensor on the CPU (each position has one owner)."""
        full = torch.zeros(self.n, dtype=dtype, device=self.ctx.device)
        full[positions.to(self.ctx.device)] = local.to(device=self.ctx.device, dtype=dtype)
        return all_reduce(full, "sum").cpu()

    def _reduce_stats(self, stats: dict[str, torch.Tensor], eps: float) -> dict[str, Any]:
        device = self.ctx.device
        values = {
            "max_linf": all_reduce(stats["max_linf"].to(device, torch.float64), "max").item(),
            "min_value": all_reduce(stats["min_value"].to(device, torch.float64), "min").item(),
            "max_value": all_reduce(stats["max_value"].to(device, torch.float64), "max").item(),
            "nan_count": int(all_reduce(stats["nan_count"].to(device, torch.int64), "sum").item()),
            "n_attacked": int(all_reduce(stats["n_attacked"].to(device, torch.int64), "sum").item()),
        }
        if values["n_attacked"] == 0:
            values.update(max_linf=0.0, min_value=0.0, max_value=0.0)
        return {**values, "eps": eps}

    @staticmethod
    def _empty_stats(device: torch.device) -> dict[str, torch.Tensor]:
        return {"max_linf": torch.zeros((), dtype=torch.float64, device=device),
                "min_value": torch.full((), float("inf"), dtype=torch.float64, device=device),
                "max_value": torch.full((), float("-inf"), dtype=torch.float64, device=device),
                "nan_count": torch.zeros((), dtype=torch.int64, device=device),
                "n_attacked": torch.zeros((), dtype=torch.int64, device=device)}

    @staticmethod
    def _update_stats(stats: dict[str, torch.Tensor], x: torch.Tensor, x_adv: torch.Tensor) -> None:
        if x_adv.numel() == 0:
            return
        delta = (x_adv - x).abs().nan_to_num(nan=0.0)
        stats["max_linf"] = torch.maximum(stats["max_linf"], delta.max().double())
        finite = x_adv.nan_to_num(nan=0.5)
        stats["min_value"] = torch.minimum(stats["min_value"], finite.min().double())
        stats["max_value"] = torch.maximum(stats["max_value"], finite.max().double())
        stats["nan_count"] += torch.isnan(x_adv).sum()
        stats["n_attacked"] += x_adv.shape[0]

    # ---------------------------------------------------------------------------------------- metrics
    def clean_flags(self) -> torch.Tensor:
        """(n,) bool on the CPU: classified correctly without attack."""
        local = torch.zeros(self.positions.numel(), dtype=torch.bool, device=self.ctx.device)
        with torch.no_grad():
            for start, positions in self._batches(self.positions, "clean"):
                x, y = self._batch(positions)
                local[start : start + positions.numel()] = self.model(x).argmax(dim=1) == y
        return self._gather(local, self.positions).bool()

    def attack_flags(self, attack: Attack, positions: torch.Tensor, label: str) -> tuple[torch.Tensor, dict[str, Any]]:
        """Attacks the correctly classified points among `positions` (this rank's), batch by batch.

        Returns:
            (n,) bool robust flags on the CPU, gathered over ranks (False outside the ranks' positions), and
            statistics of the adversarial points.
        """
        assert self.clean is not None
        local = torch.zeros(positions.numel(), dtype=torch.bool, device=self.ctx.device)
        stats = self._empty_stats(self.ctx.device)
        for start, batch in self._batches(positions, label):
            x, y = self._batch(batch)
            correct = self.clean[batch.to(self.clean.device)]
            if not bool(correct.any()):
                continue
            x_adv = attack(self.model, x[correct], y[correct])
            with torch.no_grad():
                robust = self.model(x_adv).argmax(dim=1) == y[correct]
            local[start : start + batch.numel()][correct] = robust
            self._update_stats(stats, x[correct], x_adv)
        eps = float(getattr(attack, "eps", float("nan")))
        return self._gather(local, positions).bool(), self._reduce_stats(stats, eps)

    def autoattack(self, attack: AutoAttack, state_path: Path | None) -> tuple[torch.Tensor, dict[str, Any],
                                                                               dict[str, Any]]:
        """AutoAttack on this rank's points through the reference; per-stage accuracies over all ranks.

        Returns:
            (n,) bool robust flags on the CPU, statistics of the adversarial points, and {stage_accuracy,
            stages_run, warnings}.
        """
        positions = self.positions
        stats = self._empty_stats(self.ctx.device)
        stages_run: list[str] = []
        warnings: list[str] = []
        stages = list(attack.config()["stages"])
        local = torch.zeros(positions.numel(), dtype=torch.int64, device=self.ctx.device)
        if positions.numel():
            x, y = self._batch(positions)
            result = attack.run(self.model, x, y, state_path=state_path)
            local = result.fallen_at.to(torch.int64)
            stages, stages_run, warnings = list(result.stages), list(result.stages_run), list(result.warnings)
            broken = result.fallen_at >= 1
            self._update_stats(stats, x[broken], result.x_adv[broken])
            stats["n_attacked"] = result.clean.sum().to(torch.int64)
        fallen_at = self._gather(local, positions)
        all_stages_run = set().union(*[set(s) for s in gather_objects(stages_run)])
        all_warnings: list[str] = []
        for rank_warnings in gather_objects(warnings):
            all_warnings += [w for w in rank_warnings if w not in all_warnings]
        n = max(self.n, 1)
        stage_accuracy = {"clean": int((fallen_at != 0).sum()) / n}
        for number, stage in enumerate(stages, start=1):
            stage_accuracy[stage] = int(((fallen_at == -1) | (fallen_at > number)).sum()) / n
        extra = {"stage_accuracy": stage_accuracy, "stages_run": [s for s in stages if s in all_stages_run],
                 "warnings": all_warnings}
        return fallen_at == -1, self._reduce_stats(stats, attack.eps), extra


def _step_note(preset: str, trained_with: str, source: str) -> str:
    settings = resolve_preset(preset, trained_with)
    step = settings["pgd"]["step_size"]
    if preset == "paper":
        why = ("0.003, the paper's step for TRADES-trained models" if trained_with == "trades"
               else "0.031/4, the paper's step for AT/MART-trained models")
        return f"PGD and CW∞ step {step:.5g} ({why}); the model was trained with '{trained_with}' ({source})"
    return (f"PGD and CW∞ step {step:.5g} (ε/4 for every model under the {preset} preset); the model was trained "
            f"with '{trained_with}' ({source})")


def evaluate(
    checkpoint: str | Path,
    data_dir: str | Path,
    *,
    out_dir: str | Path | None = None,
    attacks: Sequence[str] | None = None,
    preset: str = "paper",
    n_examples: int | None = None,
    subset: float | None = None,
    split: str = "test",
    batch_size: int = 256,
    seed: int = 0,
    model_name: str | None = None,
    dataset: str | None = None,
    trained_with: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    sanity: bool = True,
    sanity_n: int = 128,
    restart: bool = False,
    device: str | torch.device | None = "auto",
    progress: bool = True,
) -> EvalReport:
    """Evaluates a checkpoint's robustness and writes `report.json` and `report.md`.

    Args:
        checkpoint: a checkpoint written by `dsnet train`, or a tensors-only state dict with `model_name`.
        data_dir: dataset folder (downloaded there when missing, on a single process).
        out_dir: folder for the reports and the resume state; default `<checkpoint folder>/eval-<preset>`.
        attacks: metrics to compute, from "clean", "fgsm", "fgsm_textbook", "pgd", "cw_inf", "autoattack";
            default clean, fgsm, pgd, cw_inf, autoattack. Clean accuracy is always computed; the attacks run
            and are reported in the paper's order.
        preset: "paper" (ε = 0.031, the authors' steps) or "standard" (ε = 8/255, RobustBench).
        n_examples: evaluate the first N points in file order (RobustBench convention).
        subset: evaluate a seeded random fraction of the points (0.125 is the paper's 12.5 %).
        split: the dataset split ("test"; SVHN also "extra").
        batch_size: points per forward pass and per attack call. AutoAttack keeps the reference's own default of
            250 (its random draws depend on it); `overrides={"autoattack": {"batch_size": N}}` changes it.
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
    started = time.perf_counter()
    names = resolve_attack_names(attacks, preset)
    for option, value in (("--batch-size", batch_size), ("--sanity-n", sanity_n)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"--seed must be an integer >= 0, got {seed!r}")
    if n_examples is not None and subset is not None:
        raise ConfigError("--n-examples and --subset exclude each other; pass one of them")

    device = "auto" if device is None else str(device)
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = setup_distributed(device, option="--device")
    out = Path(out_dir) if out_dir is not None else default_out_dir(checkpoint, preset)
    lock = None
    try:
        if ctx.is_main:  # before anything is loaded: a folder that cannot take the report fails in a second
            ensure_writable_folder(out)
            lock = FolderLock(out, "evaluation", hint="wait for it to finish, or evaluate into another --out-dir")
            lock.acquire()
        return _evaluate(ctx, started, names, checkpoint, data_dir, out, preset, n_examples, subset, split,
                         batch_size, seed, model_name, dataset, trained_with, dict(overrides or {}), sanity,
                         sanity_n, restart, progress)
    finally:
        if lock is not None:
            lock.release()
        if owns_group and ctx.distributed:
            teardown_distributed()


def _evaluate(ctx: DistributedContext, started: float, names: list[str], checkpoint: str | Path,
              data_dir: str | Path, out: Path, preset: str, n_examples: int | None,
              subset: float | None, split: str, batch_size: int, seed: int, model_name: str | None,
              dataset: str | None, trained_with: str | None, overrides: dict[str, Any], sanity: bool,
              sanity_n: int, restart: bool, progress: bool) -> EvalReport:
    from dsnet.data import load_dataset

    loaded = load_model_for_evaluation(checkpoint, model_name=model_name, dataset=dataset,
                                       trained_with=trained_with, device=ctx.device)
    settings = {
        "model_name": loaded.model_name, "model_kwargs": loaded.model_kwargs, "weights_sha256": loaded.weights_sha256,
        "dataset": loaded.dataset, "split": split, "preset": preset, "trained_with": loaded.trained_with,
        "batch_size": batch_size, "seed": seed, "overrides": overrides,
    }
    state_path = out / STATE_NAME
    if not restart:  # an earlier evaluation with other settings is refused before the data is read
        EvalState.check(state_path, settings)
    # Several ranks downloading into one folder would race; under torchrun the data must be there already.
    data = load_dataset(loaded.dataset, data_dir, split, download=not ctx.distributed, progress=ctx.is_main)
    selection = select_points(len(data), n_examples=n_examples, subset=subset, seed=seed)
    images = data.images.index_select(0, selection.indices).to(ctx.device)
    labels = data.labels.index_select(0, selection.indices).to(ctx.device)
    del data

    attack_names = [name for name in names if name != "clean"]
    attack_overrides: dict[str, dict[str, Any]] = {name: {"seed": seed, **dict(overrides.get(name) or {})}
                                                   for name in attack_names}
    stray = sorted(set(overrides) - set(attack_names))
    if stray:
        raise ConfigError(f"overrides for {', '.join(stray)}, which this evaluation does not run "
                          f"({', '.join(attack_names) or 'no attack'})")
    built = build_attacks(preset, loaded.trained_with, attack_names, attack_overrides) if attack_names else {}

    settings.update(n=selection.n, points_sha256=selection.sha256)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if restart:
            state_path.unlink(missing_ok=True)
            for stale in out.glob("autoattack-state.rank*.pt"):
                stale.unlink()
    barrier()
    state = EvalState.open(state_path, settings, restart=restart)
    if not ctx.is_main:
        state.path = None  # rank 0 alone writes
    if ctx.is_main:
        logger.info("evaluating %s (%s, %s) on %s/%s: n = %d, %s; preset %s, ε = %.5g; %s", checkpoint,
                    loaded.model_name, f"{loaded.parameters:,} parameters", loaded.dataset, split, selection.n,
                    selection.description, preset, PRESETS[preset]["pgd"]["eps"], ", ".join(names))

    run = _Evaluation(loaded, images, labels, selection, ctx, batch_size=batch_size, progress=progress)
    outcomes: list[AttackOutcome] = []

    def finish(name: str, label: str, config: dict[str, Any], compute: Any) -> AttackOutcome:
        stored = state.finished(name, config)
        if stored is not None:
            outcome = AttackOutcome(name, label, config, flags_from_string(stored["flags"]), stored["runtime_s"],
                                    stored.get("stats", {}), resumed=True, extra=stored.get("extra", {}))
            if ctx.is_main:
                logger.info("%s: %.2f%% (%d/%d), from the earlier run", label, 100 * outcome.accuracy,
                            outcome.robust, selection.n)
        else:
            t0 = time.perf_counter()
            flags, stats, extra = compute()
            outcome = AttackOutcome(name, label, config, flags, time.perf_counter() - t0, stats, extra=extra)
            state.record(name, {"config": config, "flags": flags_to_string(flags), "runtime_s": outcome.runtime_s,
                                "stats": stats, "extra": extra})
            if ctx.is_main:
                logger.info("%s: %.2f%% (%d/%d) in %.1f s", label, 100 * outcome.accuracy, outcome.robust,
                            selection.n, outcome.runtime_s)
        outcomes.append(outcome)
        return outcome

    # True fp32: no autocast, no TF32 convolutions or matmuls (cuDNN's default on Ampere and newer GPUs).
    with full_fp32(ctx.device.type) as math:
        clean = finish("clean", "Natural", {}, lambda: (run.clean_flags(), {}, {}))
        run.clean = clean.flags.to(ctx.device)
        for name, attack in built.items():
            if isinstance(attack, AutoAttack):
                config = {**attack.config(), "world_size": ctx.world_size}
                aa_state = out / _AA_STATE.format(rank=ctx.rank, world=ctx.world_size)
                finish(name, attack.label, config, lambda a=attack, p=aa_state: run.autoattack(a, p))
                barrier()
                aa_state.unlink(missing_ok=True)  # the result is in eval_state.json now
            else:
                finish(name, attack.label, attack.config(),
                       lambda a=attack: (*run.attack_flags(a, run.positions, a.label), {}))

        eps = float(PRESETS[preset]["pgd"]["eps"] if "pgd" not in built else built["pgd"].config()["eps"])
        sweep, sweep_n = None, min(sanity_n, selection.n)
        if sanity:
            sweep = _eps_sweep(run, state, eps, sweep_n, seed, ctx)

    by_name = {o.name: o for o in outcomes}
    labels_short = {o.name: o.short_label for o in outcomes}
    aa = by_name["autoattack"].extra if "autoattack" in by_name else None
    checks = [
        check_ordering({o.name: o.accuracy for o in outcomes}, labels_short),
        check_eps_sweep(sweep, sweep_n, reason_skipped="skipped (--no-sanity)."),
        check_square(aa.get("stage_accuracy") if aa else None, aa.get("stages_run") if aa else None),
        check_perturbations({o.name: o.stats for o in outcomes if o.name != "clean"}, labels_short, eps),
        check_pgd_vs_margin({o.name: o.flags for o in outcomes}, labels_short),
    ]
    device_name = (f"{ctx.device} ({torch.cuda.get_device_name(ctx.device)})" if ctx.device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)")
    report = EvalReport(
        checkpoint=str(checkpoint),
        model={"name": loaded.model_name, "kwargs": loaded.model_kwargs, "num_classes": loaded.num_classes,
               "parameters": loaded.parameters, "weights_sha256": loaded.weights_sha256,
               "epoch": loaded.trained_epochs,
               "trained_with": loaded.trained_with, "trained_with_source": loaded.trained_with_source},
        dataset=loaded.dataset,
        split=split,
        selection=selection,
        preset=preset,
        eps=eps,
        step_note=_step_note(preset, loaded.trained_with, loaded.trained_with_source),
        outcomes=outcomes,
        sanity_checks=checks,
        eps_sweep=sweep,
        eps_sweep_n=sweep_n,
        seeds={"seed": seed, "subset": selection.seed,
               **{f"{o.name}": o.config.get("seed") for o in outcomes if o.name != "clean"},
               "eps_sweep": seed if sanity else None},
        versions=_versions(),
        device={"type": ctx.device.type, "name": device_name, "world_size": ctx.world_size,
                "dtype": "float32", "math": math},
        runtime_s=time.perf_counter() - started,
        overrides={k: dict(v) for k, v in overrides.items()},
    )
    if ctx.is_main:
        for check in report.failed_checks:
            logger.warning("sanity check failed: %s: %s", check.title, check.message)
        json_path, md_path = report.write(out)
        logger.info("worst case %.2f%%; reports: %s, %s", 100 * report.worst_case_accuracy, json_path, md_path)
    else:
        report.out_dir = out
    return report


def _eps_sweep(run: _Evaluation, state: EvalState, eps: float, n: int, seed: int,
               ctx: DistributedContext) -> list[tuple[float, float]]:
    """PGD accuracy at ε × (0.5, 1, 2, 4) and at a large ε, on the first `n` points (stored for resume)."""
    levels = [factor * eps for factor in SWEEP_EPS_FACTORS]
    if SWEEP_LARGE_EPS > levels[-1]:
        levels.append(SWEEP_LARGE_EPS)
    config = {"n": n, "eps": levels, "steps": SWEEP_STEPS, "step_size": "eps/4", "seed": seed}
    if state.sweep is not None and state.sweep.get("config") == config:
        return [(float(e), float(a)) for e, a in state.sweep["accuracy"]]
    positions = shard_positions(n, ctx.rank, ctx.world_size, run.batch_size)
    results = []
    for level in levels:
        attack = PGD(eps=level, step_size=level / 4, steps=SWEEP_STEPS, seed=seed)
        flags, _ = run.attack_flags(attack, positions, f"sweep ε={level:.4g}")
        results.append((level, int(flags.sum()) / max(n, 1)))
    state.record_sweep({"config": config, "accuracy": [[e, a] for e, a in results]})
    if ctx.is_main:
        logger.info("ε sweep (PGD-%d on %d points): %s", SWEEP_STEPS, n,
                    ", ".join(f"{100 * a:.1f}% at {e:.4g}" for e, a in results))
    return results

