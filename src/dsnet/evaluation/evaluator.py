"""`evaluate()`: what `dsnet eval` runs. Clean accuracy and the attacks of a threat model (L∞ by default: FGSM,
PGD-20, CW∞-30 and AutoAttack), or accuracy under common corruptions, on any model.

How one evaluation goes (`Evaluation.run`):

1. The options (`dsnet.evaluation.config.EvalConfig`) are resolved once into a plan: the suite (a threat model of
   `dsnet.evaluation.threat_models`, or the corruptions of `dsnet.evaluation.corruptions`), its preset, the metrics.
2. Ready the model (fp32, eval mode): rebuilt from a checkpoint of ours, whose config names the dataset and the
   training objective (the objective picks the paper preset's PGD/CW step), or built by a user's factory, or
   given as an `nn.Module` (`dsnet.evaluation.loading`).
3. Choose the points: all of the split, the first N (`n_examples`), or a seeded fraction (`subset`).
4. Clean accuracy, then each metric the suite lists (`Suite.metrics`): for a threat model, each attack through its
   `evaluate` (the one robust-flags loop, `dsnet.attacks.metrics`); a point counts as robust to an attack when its
   clean and adversarial inputs are both classified correctly, and the worst case ANDs the per-point flags of every
   metric. For corruptions, the accuracy on the corrupted copies of the same points.
5. After every metric, its flags, settings, statistics and runtime go to `eval_state.json` (atomically); a rerun
   of the same content and settings skips what is finished (`dsnet.evaluation.state`), and an attack with resume
   state of its own (AutoAttack) continues inside itself.
6. The suite's sanity checks for gradient masking (`dsnet.evaluation.sanity`), with an ε sweep of PGD on a sample.
7. `report.json` and `report.md` (and the suite's own files) in the output folder (default
   `<checkpoint folder>/eval-<preset>`, `eval-<threat model>-<preset>` for the others).

Under `torchrun` every rank attacks its share of the points (`dsnet.runtime.shard_positions`); per-point results
are summed across ranks, and rank 0 alone writes files and shows progress. FGSM, PGD and the CW attacks give the
same flags on any number of processes; AutoAttack's random draws depend on the sharding (recorded, and a resume
needs the same number of processes).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import inspect
import logging
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

import dsnet
from dsnet.attacks.metrics import AttackRun, clean_flags
from dsnet.attacks.queries import count_queries
from dsnet.errors import ConfigError, NonFiniteError, OverwriteError
from dsnet.evaluation.config import EvalConfig, EvalPlan, check_data_choice, default_out_dir
from dsnet.evaluation.loading import PROBE_BATCH, LoadedModel, load_model_for_evaluation
from dsnet.evaluation.points import PointSelection, select_points
from dsnet.evaluation.curves import (
    CURVE_FILES,
    check_convergence,
    check_security_curve,
    convergence_curve,
    fixed_eps_points,
    security_curve,
)
from dsnet.evaluation.randomness import (
    EOT_REMEDY,
    PROBE_PASSES,
    SPREAD_PASSES,
    check_randomness,
    clean_spread,
    seeded_global_rng,
)
from dsnet.evaluation.report import REPORT_FILES, REPORT_JSON, AttackOutcome, EvalReport, Evidence, \
    flags_from_string, flags_to_string
from dsnet.evaluation.state import STATE_NAME, EvalState
from dsnet.evaluation.suite import Metric, Suite
from dsnet.options import field_doc_block, keyword_signature
from dsnet.runtime.distributed import DistributedContext, barrier, setup_distributed, teardown_distributed
from dsnet.runtime.hashing import tensors_sha256
from dsnet.runtime.precision import evaluation_math
from dsnet.runtime.run_folder import FolderKind, RunFolder

__all__ = ["evaluate", "Evaluation", "EVAL_WRITER", "evaluation_folder", "check_evaluation_folder"]

logger = logging.getLogger(__name__)

EVAL_WRITER = "dsnet eval"
_OUT_DIR_HINT = "evaluate into another --out-dir"


def _evaluation_files(suite: Suite) -> tuple[str, ...]:
    """Every name an evaluation of `suite` writes in its folder (the AutoAttack resume files as a pattern)."""
    from dsnet.attacks.autoattack import STATE_FILES

    return (*REPORT_FILES, *suite.files, *CURVE_FILES, STATE_NAME, STATE_FILES)


def evaluation_folder(out: Path, suite: Suite, *, is_main: bool = True) -> RunFolder:
    """The report folder of an evaluation of `suite` (its lock, its file names, the never-overwrite rule)."""
    kind = FolderKind(EVAL_WRITER, "evaluation", _evaluation_files(suite),
                      busy_hint="wait for it to finish, or evaluate into another --out-dir", taken_hint=_OUT_DIR_HINT)
    return RunFolder(out, kind, is_main=is_main)


def check_evaluation_folder(folder: RunFolder, restart: bool) -> None:
    """Refuses, before anything is loaded, a folder whose files `dsnet eval` may not write: files of another command
    or of a person under the report's names (`dsnet.runtime.ownership`), or the report of an evaluation whose
    state file is gone, which nothing can show to be this evaluation's (`--restart` replaces it).

    Raises:
        OverwriteError: naming the file.
    """
    folder.check_files()
    out = folder.path
    if not restart and (out / REPORT_JSON).is_file() and not (out / STATE_NAME).is_file():
        raise OverwriteError(f"{out / REPORT_JSON} is the report of an earlier evaluation whose {STATE_NAME} is gone, "
                             "so it cannot be shown to be this one's; rerun with --restart to replace it, or "
                             f"{_OUT_DIR_HINT} (nothing was written)")


def _versions() -> dict[str, str]:
    try:
        autoattack = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        autoattack = "not installed"
    return {"dsnet": dsnet.__version__, "torch": str(torch.__version__), "pyautoattack": autoattack,
            "python": platform.python_version()}


class Evaluation:
    """One call of `evaluate`: a class so that every step has a name. See the module docstring.

    Args:
        ctx: this process's place among the processes.
        plan: what to compute, resolved.
        out: the report folder (locked by the caller).
        model: a model of the user's own, or None.
    """

    def __init__(self, ctx: DistributedContext, plan: EvalPlan, folder: RunFolder,
                 model: nn.Module | None = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.data_dir = plan.config.data_dir
        self.folder = folder
        self.out = folder.path
        self.user_model = model
        self.started = time.perf_counter()
        self.outcomes: list[AttackOutcome] = []

    # ------------------------------------------------------------------------------------------------ setup
    def _load(self) -> None:
        from dsnet.data import load_dataset

        c = self.plan.config
        self.loaded: LoadedModel = load_model_for_evaluation(
            c.checkpoint, model_name=c.model_name, dataset=c.dataset, trained_with=c.trained_with,
            device=self.ctx.device, model=self.user_model, model_factory=c.model_factory,
            model_kwargs=dict(c.model_kwargs) if isinstance(c.model_kwargs, Mapping) else c.model_kwargs,
            normalize=self.plan.normalize, weights=c.weights, model_dir=c.model_dir)
        # The dataset is known now (given, or the checkpoint's): a wrong split or a dataset without corruptions is
        # named before an earlier evaluation in the folder is compared or any data is read.
        check_data_choice(self.loaded.dataset, c.split, self.plan.suite)
        self.key = {
            "model_name": self.loaded.model_name, "model_kwargs": self.loaded.model_kwargs,
            "weights_sha256": self.loaded.weights_sha256, "model_code": self.loaded.code,
            "versions": {"dsnet": dsnet.__version__, "torch": str(torch.__version__)},
            "dataset": self.loaded.dataset, "split": c.split,
            "threat_model": self.plan.suite.name, "preset": self.plan.preset.name, "eps": c.eps,
            "trained_with": self.loaded.trained_with, "batch_size": c.batch_size, "seed": c.seed,
            "overrides": self.plan.attack_overrides, "normalize": self.loaded.source.get("normalize"),
        }
        if c.math != "fp32":  # (an evaluation in IEEE fp32 keeps the key it had before --math existed)
            self.key["math"] = c.math
        if not c.restart:  # an earlier evaluation of other settings, weights or code is refused before data is read
            EvalState.check(self.out / STATE_NAME, self.key)
        # Several ranks downloading into one folder would race; under torchrun the data must be there already.
        data = load_dataset(self.loaded.dataset, self.data_dir, c.split, download=not self.ctx.distributed,
                            progress=self.ctx.is_main)
        self.selection: PointSelection = select_points(len(data), n_examples=c.n_examples, subset=c.subset,
                                                       seed=c.seed)
        images = data.images.index_select(0, self.selection.indices)  # uint8
        labels = data.labels.index_select(0, self.selection.indices)
        # The points' content, digested as they are loaded: results are reused only for the very same images.
        self.key.update(n=self.selection.n, points_sha256=self.selection.sha256,
                        data_sha256=tensors_sha256([("images", images), ("labels", labels)]))
        self.images = images.to(self.ctx.device)
        self.labels = labels.to(self.ctx.device)

    def _open_state(self, metrics: list[Metric]) -> EvalState:
        path = self.out / STATE_NAME
        restart = self.plan.config.restart
        self.folder.reserve_files()  # the folder's names are this evaluation's from now on (checked before loading)
        if self.ctx.is_main and restart:
            path.unlink(missing_ok=True)
            for metric in metrics:
                metric.done()
        barrier()
        state = EvalState.open(path, self.key, restart=restart)
        if not self.ctx.is_main:
            state.path = None  # rank 0 alone writes
        return state

    def bar(self, label: str) -> str | None:
        """The label of a progress bar, on rank 0 when progress bars are on; else None (no bar)."""
        return label if self.plan.config.progress and self.ctx.is_main else None

    # ---------------------------------------------------------------------------------------------- metrics
    def _metric(self, state: EvalState, metric: Metric) -> AttackOutcome:
        """A finished metric from the state file, or computed now and recorded there.

        Raises:
            NonFiniteError: the model or the attack produced NaN or inf; the message names the metric, and every
                metric finished before it stays in the state file.
        """
        config = {**metric.config, **(metric.prepare() if metric.prepare is not None else {})}
        stored = state.finished(metric.name, config)
        n = self.selection.n
        if stored is not None:
            outcome = AttackOutcome(metric.name, metric.label, config, flags_from_string(stored["flags"]),
                                    stored["runtime_s"], stored.get("stats", {}), resumed=True,
                                    extra=stored.get("extra", {}))
            how = "from the earlier run"
        else:
            t0 = time.perf_counter()
            try:
                # torch's global generator seeded per metric: a randomised model draws the same noise in a rerun
                with count_queries(self.loaded.model) as count, seeded_global_rng(self.plan.config.seed,
                                                                                   self.ctx.device):
                    run: AttackRun = metric.compute()
            except NonFiniteError as error:
                kept = (f"the finished metrics ({', '.join(state.results)}) are kept in {self.out / STATE_NAME}"
                        if state.results else "nothing had finished before it")
                raise NonFiniteError(f"{metric.label}: {error}; {kept}") from None
            runtime = time.perf_counter() - t0
            points = int(run.stats.get("n_attacked", n if metric.name == "clean" else int(self.clean.sum())))
            run.stats["queries"] = count.totals().to_dict(points)
            run.stats["images_per_s"] = points / runtime if runtime > 0 else None
            outcome = AttackOutcome(metric.name, metric.label, config, run.flags, runtime, run.stats, extra=run.extra)
            state.record(metric.name, {"config": config, "flags": flags_to_string(run.flags),
                                       "runtime_s": outcome.runtime_s, "stats": run.stats, "extra": run.extra})
            how = f"in {outcome.runtime_s:.1f} s"
        if self.ctx.is_main:
            logger.info("%s: %.2f%% (%d/%d) %s", metric.label, 100 * outcome.accuracy, outcome.robust, n, how)
        self.outcomes.append(outcome)
        return outcome

    # -------------------------------------------------------------------------------------------------- run
    def run(self) -> EvalReport:
        plan, c = self.plan, self.plan.config
        self._load()
        model, loaded, selection = self.loaded.model, self.loaded, self.selection
        if self.ctx.is_main:
            radius = f", ε = {plan.eps:.5g}" if plan.suite.norm else ""
            logger.info("evaluating %s (%s, %s) on %s/%s: n = %d, %s; %s preset %s%s; %s", loaded.checkpoint,
                        loaded.model_name, f"{loaded.parameters:,} parameters", loaded.dataset, c.split, selection.n,
                        selection.description, plan.suite.name, plan.preset.name, radius, ", ".join(plan.names))
        clean_metric = Metric("clean", "Natural", {}, lambda: AttackRun(
            clean_flags(model, self.images, self.labels, batch_size=c.batch_size, progress=self.bar("clean"))))
        metrics = plan.suite.metrics(self)
        state = self._open_state(metrics)
        # True fp32 (no autocast, no TF32 convolutions or matmuls, cuDNN's default on Ampere and newer GPUs) unless
        # --math tf32 asks for TF32 on the GPU.
        with evaluation_math(c.math, self.ctx.device.type) as math_mode:
            self.clean = self._metric(state, clean_metric).flags
            for metric in metrics:
                self._metric(state, metric)
                barrier()
                metric.done()  # the result is in eval_state.json now
            sweep = plan.suite.sweep(self, state, self.clean)
            randomness = self._randomness(state)
            security = security_curve(self, state) if "eps" in c.curves else None
            convergence = convergence_curve(self, state) if "steps" in c.curves else None
        return self._report(sweep, math_mode, Evidence(security, convergence, fixed_eps_points(self, sweep),
                                                       randomness))

    def _randomness(self, state: EvalState) -> dict[str, Any]:
        """Whether the model is randomised and, if it is, its clean accuracy over repeated passes (stored)."""
        found = {"randomized": self.loaded.randomized, "probe_difference": self.loaded.randomness}
        if not self.loaded.randomized:
            return found
        c = self.plan.config
        key = {"passes": SPREAD_PASSES, "seed": c.seed, "batch_size": c.batch_size}
        spread = state.extra("clean_spread", key)
        if spread is None:
            def one_pass(number: int) -> torch.Tensor:
                with seeded_global_rng(c.seed + 1 + number, self.ctx.device):
                    return clean_flags(self.loaded.model, self.images, self.labels, batch_size=c.batch_size)

            spread = clean_spread(one_pass)
            state.record_extra("clean_spread", key, spread)
        return {**found, "clean_spread": spread}

    def _warnings(self) -> list[str]:
        """What the numbers cannot say by themselves: a model that ignores its input, and the suite's own notes."""
        notes = []
        if not self.loaded.responds_to_input:
            notes.append(f"the model gave the same logits to {PROBE_BATCH} different images (black, white, grey and "
                         "noise): it ignores its input, so these accuracies say nothing about robustness")
        if self.loaded.randomized:
            notes.append(f"the model is randomised: {PROBE_PASSES} passes of the same images gave different logits "
                         f"(by {self.loaded.randomness:.2g}), so every accuracy here is one draw (the clean accuracy's "
                         f"spread over {SPREAD_PASSES} passes is in the report); attack it with {EOT_REMEDY}")
        notes += self.plan.suite.warnings(self)
        for note in notes:
            logger.warning("%s", note)
        return notes

    def _checks(self, sweep: list[tuple[float, float]] | None, evidence: Evidence) -> list[Any]:
        """The suite's checks, then the evidence's: randomness (always), the curves (when asked for)."""
        checks = list(self.plan.suite.checks(self, sweep))
        if self.plan.suite.norm is None:
            return checks
        from dsnet.attacks import ATTACKS

        eot = {o.label: int(o.config.get("eot", 1)) for o in self.outcomes  # the attacks that follow gradients
               if o.name in ATTACKS and "eot" in inspect.signature(ATTACKS.get(o.name)).parameters}
        version = next((o.config.get("version") for o in self.outcomes if o.name == "autoattack"), None)
        checks.append(check_randomness(self.loaded.randomness, eot, version))
        if evidence.security is not None:
            checks.append(check_security_curve(evidence.security, evidence.fixed))
        if evidence.convergence is not None:
            checks.append(check_convergence(evidence.convergence))
        return checks

    def _report(self, sweep: list[tuple[float, float]] | None, math_mode: dict[str, Any],
                evidence: Evidence) -> EvalReport:
        plan, loaded, outcomes = self.plan, self.loaded, self.outcomes
        c = plan.config
        device = self.ctx.device
        device_name = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                       else f"cpu ({torch.get_num_threads()} threads)")
        report = EvalReport(
            checkpoint=(loaded.source["hub"]["pinned"] if loaded.source.get("hub") else str(loaded.checkpoint)),
            model={"name": loaded.model_name, "kwargs": loaded.model_kwargs, "num_classes": loaded.num_classes,
                   "parameters": loaded.parameters, "weights_sha256": loaded.weights_sha256,
                   "epoch": loaded.trained_epochs, "trained_with": loaded.trained_with,
                   "trained_with_source": loaded.trained_with_source, "source": dict(loaded.source),
                   "code": dict(loaded.code)},
            dataset=loaded.dataset,
            split=c.split,
            selection=self.selection,
            preset=plan.preset.name,
            eps=plan.eps,
            step_note=plan.suite.step_note(self),
            outcomes=outcomes,
            sanity_checks=self._checks(sweep, evidence),
            eps_sweep=sweep,
            eps_sweep_n=min(c.sanity_n, self.selection.n),
            seeds={"seed": c.seed, "subset": self.selection.seed,
                   **{o.name: o.config.get("seed") for o in outcomes if o.name != "clean" and "seed" in o.config},
                   "eps_sweep": c.seed if sweep is not None else None},
            versions=_versions(),
            device={"type": device.type, "name": device_name, "world_size": self.ctx.world_size,
                    "dtype": "float32", "math_setting": c.math, "math": math_mode},
            runtime_s=time.perf_counter() - self.started,
            overrides={k: dict(v) for k, v in plan.attack_overrides.items()},
            threat_model=plan.suite.name,
            eps_override=c.eps,
            warnings=self._warnings(),
            data={"dir": str(Path(self.data_dir).expanduser().resolve()), "sha256": self.key["data_sha256"]},
            suite=plan.suite,
            evidence=evidence,
        )
        if self.ctx.is_main:
            for check in report.failed_checks:
                logger.warning("sanity check failed: %s: %s", check.title, check.message)
            paths = report.write(self.out)
            logger.info("%s; reports: %s", plan.suite.headline(report), ", ".join(str(p) for p in paths))
        else:
            report.out_dir = self.out
        return report


def evaluate(checkpoint: str | Path | None = None, data_dir: str | Path | None = None, *,
             model: nn.Module | None = None, config: EvalConfig | None = None, **options: Any) -> EvalReport:
    """Evaluates a model's robustness and writes `report.json` and `report.md`.

    Args:
        checkpoint: a checkpoint written by `dsnet train`, or a tensors-only state dict (with `model_name`, or the
            weights of `model` / `model_factory`); None for a `model` or factory used with the weights it has.
        data_dir: dataset folder (downloaded there when missing, on a single process).
        model: an `nn.Module` of your own mapping (B, 3, H, W) images in [0, 1] to logits (pass `dataset`).
        config: an `EvalConfig` holding the options below; keywords given beside it replace its values.
{options}

    Returns:
        The report (every rank returns it; rank 0 writes the files).

    Raises:
        UnknownNameError: an unknown attack, preset, threat model, model, dataset or split.
        ConfigError: conflicting or out-of-range options, or an `out_dir` holding an evaluation of other content or
            settings (without `restart`).
        CheckpointError: an unreadable checkpoint or one of another architecture.
        DataError: missing or corrupt dataset files.
        OverwriteError: an `out_dir` with files of another command or of a person under the report's names.
        NonFiniteError: NaN or infinite weights, logits or adversarial points.
    """
    given = {k: v for k, v in (("checkpoint", checkpoint), ("data_dir", data_dir)) if v is not None}
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(EvalConfig)})
    if unknown:
        from dsnet.registry import suggest

        raise ConfigError(f"evaluate() has no option {unknown[0]!r}; "
                          f"{suggest(unknown[0], [f.name for f in dataclasses.fields(EvalConfig)])}")
    changes = {**given, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in options.items()}}
    config = dataclasses.replace(config, **changes) if config is not None else EvalConfig(**changes)
    if config.data_dir is None:
        raise ConfigError("evaluate() needs data_dir, the dataset folder")
    plan = config.resolve()
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = setup_distributed(str(config.device or "auto"), option="--device")
    if config.out_dir is not None:
        out = Path(config.out_dir)
    else:
        name = type(model).__name__ if model is not None else (config.model_factory or "").rpartition(":")[2]
        out = default_out_dir(config.checkpoint, plan.preset.name, plan.suite, name or None)
    folder = evaluation_folder(out, plan.suite, is_main=ctx.is_main)
    try:
        folder.take()  # before anything is loaded: a folder that cannot take the report fails in a second
        if ctx.is_main:
            check_evaluation_folder(folder, config.restart)
        return Evaluation(ctx, plan, folder, model).run()
    finally:
        folder.release()
        if owns_group and ctx.distributed:
            teardown_distributed()


# The options are `EvalConfig`'s fields: the signature and the docstring show every one of them.
evaluate.__signature__ = keyword_signature(  # type: ignore[attr-defined]
    EvalConfig, [inspect.Parameter("checkpoint", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
                 inspect.Parameter("data_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
                 inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, default=None),
                 inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None)],
    returns="EvalReport")
evaluate.__doc__ = (evaluate.__doc__ or "").replace(
    "{options}", field_doc_block(EvalConfig, exclude=("checkpoint", "data_dir")))
