"""`evaluate()`: what `dsnet eval` runs. Clean accuracy and the attacks of a threat model (L∞ by default: FGSM,
PGD-20, CW∞-30 and AutoAttack), or accuracy under common corruptions, on any model.

How one evaluation goes (`Evaluation.run`):

1. Ready the model (fp32, eval mode): rebuilt from a checkpoint of ours, whose config names the dataset and the
   training objective (the objective picks the paper preset's PGD/CW step), or built by a user's factory, or
   given as an `nn.Module` (`dsnet.evaluation.loading`).
2. Choose the points: all of the split, the first N (`n_examples`), or a seeded fraction (`subset`).
3. Clean accuracy, then each metric of the threat model (`dsnet.evaluation.presets.THREAT_MODELS`: a threat model
   is data, this evaluator runs them all). For a norm ball, each attack runs through its `evaluate` (the one
   robust-flags loop, `dsnet.attacks.metrics`; AutoAttack runs the reference on the whole set and keeps its
   per-stage accuracies and check warnings); a point counts as robust to an attack when its clean and
   adversarial inputs are both classified correctly, and the worst case ANDs the per-point flags of every metric.
   For corruptions, each corruption at each severity is a metric: the accuracy on the corrupted copies of the
   same points (`dsnet.data.corruptions`).
4. After every metric, its flags, settings, statistics and runtime go to `eval_state.json` (atomically); a
   rerun with the same settings skips what is finished, and an attack with resume state of its own (AutoAttack)
   continues inside itself.
5. Sanity checks for gradient masking (`dsnet.evaluation.sanity`), including an ε sweep of PGD on a sample, in the
   threat model's norm.
6. `report.json` and `report.md` (and for corruptions a heat map) in `out_dir` (default
   `<checkpoint folder>/eval-<preset>`, `eval-<threat model>-<preset>` for the others).

Under `torchrun` every rank attacks its share of the points (`dsnet.runtime.shard_positions`); per-point results
are summed across ranks, and rank 0 alone writes files and shows progress. FGSM, PGD and the CW attacks give the
same flags on any number of processes; AutoAttack's random draws depend on the sharding (recorded, and a resume
needs the same number of processes).
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

import dsnet
from dsnet.attacks.base import ATTACKS
from dsnet.attacks.gradient import PGD
from dsnet.attacks.metrics import AttackRun, clean_flags
from dsnet.errors import ConfigError, DataError, NonFiniteError, OverwriteError
from dsnet.evaluation.loading import WEIGHT_CHOICES, LoadedModel, check_normalization, load_model_for_evaluation
from dsnet.evaluation.points import PointSelection, select_points
from dsnet.evaluation.presets import ThreatModel, build_attacks, get_preset, get_threat_model, resolve_preset
from dsnet.evaluation.report import (
    METRIC_ORDER,
    REPORT_FILES,
    REPORT_JSON,
    AttackOutcome,
    EvalReport,
    flags_from_string,
    flags_to_string,
)
from dsnet.evaluation.sanity import (
    SWEEP_EPS_FACTORS,
    SanityCheck,
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
from dsnet.runtime.hashing import tensors_sha256
from dsnet.runtime.lock import FolderLock
from dsnet.runtime.ownership import FolderFiles
from dsnet.runtime.precision import full_fp32
from dsnet.validate import Problems

__all__ = ["evaluate", "EvalSettings", "Evaluation", "resolve_attack_names", "default_out_dir", "SWEEP_STEPS"]

logger = logging.getLogger(__name__)

SWEEP_STEPS = 20
"""PGD steps of the sanity sweep (step ε/4 at every ε)."""


def resolve_attack_names(names: Iterable[str] | None, preset: str | None = None,
                         threat_model: str = "Linf") -> list[str]:
    """The metrics to compute, clean first, then the attacks in the paper's order.

    Args:
        names: attack names ("clean", "fgsm", "pgd", "cw_inf", "autoattack", ...), or for the corruptions threat
            model corruption names ("fog", ...); comma-separated items are split. None means the threat model's
            default: clean, fgsm, pgd, cw_inf, autoattack under L∞; every benchmark corruption for corruptions.
        preset: the preset (default: the threat model's).
        threat_model: "Linf", "L2", "L1" or "corruptions".

    Raises:
        UnknownNameError: an unknown threat model, preset or attack name (the message lists the valid ones).
    """
    threat = get_threat_model(threat_model)
    chosen = get_preset(threat, preset)
    if threat.norm is None:
        from dsnet.data.corruptions import CORRUPTIONS, EXTRA_CORRUPTIONS

        valid, default, kind = ["clean", *CORRUPTIONS, *EXTRA_CORRUPTIONS], list(chosen.corruptions), "corruption"
    else:  # the attacks of this threat model's presets, and registered attacks no threat model claims (yours)
        from dsnet.evaluation.presets import THREAT_MODELS

        claimed = {name for key in THREAT_MODELS.names() for preset in THREAT_MODELS.get(key).presets.names()
                   for name in THREAT_MODELS.get(key).presets.get(preset)}
        ours = {name for preset in threat.presets.names() for name in threat.presets.get(preset)}
        valid = ["clean", *(n for n in ATTACKS.names() if n in ours or n not in claimed)]
        default, kind = list(threat.default_attacks), "attack"
    requested: list[str] = []
    for item in (["clean", *default] if names is None else names):
        requested += [part.strip() for part in str(item).split(",") if part.strip()]
    for name in requested:
        if name not in valid:
            raise unknown_name(kind, name, valid)
    if threat.norm is None:
        return ["clean"] + [name for name in dict.fromkeys(requested) if name != "clean"]
    order = {name: i for i, name in enumerate(METRIC_ORDER)}
    unique = list(dict.fromkeys(requested))
    ranked = sorted(unique, key=lambda name: (order.get(name, len(order)), unique.index(name)))
    return ["clean"] + [name for name in ranked if name != "clean"]


EVAL_WRITER = "dsnet eval"
_OUT_DIR_HINT = "evaluate into another --out-dir"


def _evaluation_files() -> tuple[str, ...]:
    """Every name an evaluation writes in its folder (the AutoAttack resume files as a pattern)."""
    from dsnet.attacks.autoattack import STATE_FILES

    return (*REPORT_FILES, STATE_NAME, STATE_FILES)


def check_evaluation_folder(out: Path, restart: bool) -> None:
    """Refuses, before anything is loaded, a folder whose files `dsnet eval` may not write: files of another command
    or of a person under the report's names (`dsnet.runtime.ownership`), or the report of an evaluation whose
    state file is gone, which nothing can show to be this evaluation's (`--restart` replaces it).

    Raises:
        OverwriteError: naming the file.
    """
    FolderFiles(out).check(_evaluation_files(), EVAL_WRITER, hint=_OUT_DIR_HINT)
    if not restart and (out / REPORT_JSON).is_file() and not (out / STATE_NAME).is_file():
        raise OverwriteError(f"{out / REPORT_JSON} is the report of an earlier evaluation whose {STATE_NAME} is gone, "
                             "so it cannot be shown to be this one's; rerun with --restart to replace it, or "
                             f"{_OUT_DIR_HINT} (nothing was written)")


def default_out_dir(checkpoint: str | Path | None, preset: str, threat_model: str = "Linf",
                    model_name: str | None = None) -> Path:
    """`<checkpoint folder>/eval-<preset>` under L∞, `eval-<threat model>-<preset>` otherwise; for a model without
    a checkpoint, the same name with the model's, in the working directory."""
    threat = get_threat_model(threat_model)
    name = f"eval-{preset}" if threat.key == "linf" else f"eval-{threat.name}-{preset}"
    if checkpoint is None:
        return Path(f"{name}-{model_name or 'model'}")
    return Path(checkpoint).parent / name


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an evaluation besides the model and the data folder (see `evaluate`).

    Built from `evaluate`'s keyword arguments and checked at once: every problem is named in one error.
    """

    attacks: Sequence[str] | None = None
    threat_model: str = "Linf"
    preset: str | None = None
    eps: float | None = None
    severities: Sequence[int] | None = None
    n_examples: int | None = None
    subset: float | None = None
    split: str = "test"
    batch_size: int = 256
    seed: int = 0
    model_name: str | None = None
    dataset: str | None = None
    trained_with: str | None = None
    model_factory: str | None = None
    model_kwargs: Mapping[str, Any] | str | None = None
    normalize: tuple[Sequence[float], Sequence[float]] | None = None
    weights: str = "auto"
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sanity: bool = True
    sanity_n: int = 128
    restart: bool = False
    device: str | torch.device | None = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        threat = get_threat_model(self.threat_model)
        problems = Problems()
        problems.integer("--batch-size", self.batch_size, minimum=1)
        problems.integer("--sanity-n", self.sanity_n, minimum=1)
        problems.integer("--seed", self.seed, minimum=0)
        problems.choice("--weights", self.weights, WEIGHT_CHOICES)
        if self.eps is not None and problems.number("--eps", self.eps, strict=True) and threat.norm is not None:
            if self.eps > threat.max_eps:
                unit = (" (ε is in pixel units of images in [0, 1]: 8/255 ≈ 0.031, not 8)" if threat.norm == "Linf"
                        else "")
                problems.add(f"--eps {self.eps:g} is outside (0, {threat.max_eps:.4g}], the largest distance between "
                             f"two images under {threat.name}{unit}")
        if self.n_examples is not None and self.subset is not None:
            problems.add("--n-examples and --subset exclude each other; pass one of them")
        if threat.norm is None:
            if self.eps is not None:
                problems.add(f"--eps does not apply to the {threat.name} threat model")
            if self.overrides:
                problems.add(f"attack overrides do not apply to the {threat.name} threat model")
        elif self.severities is not None:
            problems.add(f"--severities applies to the corruptions threat model, not to {threat.name}")
        if self.normalize is not None:
            try:
                mean, std = self.normalize
                object.__setattr__(self, "normalize", check_normalization(mean, std))
            except (TypeError, ValueError) as error:
                problems.add(f"--normalize: {error}" if isinstance(error, ConfigError) else
                             "--normalize takes a mean and a std of 3 values each: --normalize 0.49,0.48,0.45 "
                             "0.25,0.24,0.26")
        if self.dataset is not None:
            _check_data_choice(self.dataset, self.split, threat)
        problems.raise_if_any()
        object.__setattr__(self, "threat_model", threat.name)
        object.__setattr__(self, "preset", get_preset(threat, self.preset).name)
        object.__setattr__(self, "overrides", {k: dict(v or {}) for k, v in dict(self.overrides or {}).items()})
        object.__setattr__(self, "device", "auto" if self.device is None else str(self.device))
        object.__setattr__(self, "attacks", tuple(resolve_attack_names(self.attacks, self.preset, threat.name)))
        if threat.norm is None:
            chosen = threat.presets.get(self.preset)
            severities = tuple(chosen.severities if self.severities is None else self.severities)
            bad = [s for s in severities if s not in chosen.severities]
            if bad or not severities:
                raise ConfigError(f"--severities must be among {', '.join(map(str, chosen.severities))}, got "
                                  f"{', '.join(map(str, severities)) or 'none'}")
            object.__setattr__(self, "severities", tuple(sorted(set(severities))))

    @property
    def threat(self) -> ThreatModel:
        return get_threat_model(self.threat_model)

    @property
    def attack_names(self) -> list[str]:
        """The attacks (corruptions, for the corruptions threat model) to run, without "clean"."""
        return [name for name in self.attacks if name != "clean"]  # type: ignore[union-attr]


def _check_data_choice(dataset: str, split: str, threat: ThreatModel) -> None:
    """The dataset exists, has `split`, and for corruptions has a corrupted test set: checked as soon as the dataset is
    known (from `--dataset`, or else from the checkpoint), before any folder is compared or any data is read.

    Raises:
        UnknownNameError: an unknown dataset or split (naming the valid ones).
        ConfigError: corruptions of a dataset without a corrupted copy (SVHN).
    """
    from dsnet.data import DATASETS

    DATASETS.get(dataset).check_split(split)
    if threat.norm is None:
        from dsnet.data.corruptions import corruption_set_for

        corruption_set_for(dataset)
        if split != "test":
            raise ConfigError(f"common corruptions are corrupted copies of the test split, not of {split!r}; pass "
                              "--split test")


def _versions() -> dict[str, str]:
    try:
        autoattack = importlib.metadata.version("pyautoattack")
    except importlib.metadata.PackageNotFoundError:
        autoattack = "not installed"
    return {"dsnet": dsnet.__version__, "torch": str(torch.__version__), "pyautoattack": autoattack,
            "python": platform.python_version()}


def _step_note(settings: EvalSettings, trained_with: str, source: str) -> str:
    """One sentence on the PGD/CW step and why (empty when the threat model has no PGD)."""
    from dsnet.objectives import OBJECTIVES

    threat = settings.threat
    if threat.norm is None:
        return ""
    resolved = resolve_preset(settings.preset, trained_with, threat, settings.eps)
    if "pgd" not in resolved:
        return f"no PGD in the {threat.name} {settings.preset} preset; the model was trained with '{trained_with}' " \
               f"({source})"
    step = resolved["pgd"]["step_size"]
    cw = "CW∞" if threat.norm == "Linf" else f"CW-{threat.name}"
    scaled = " scaled with --eps" if settings.eps is not None else ""
    if threat.key == "linf" and settings.preset == "paper":
        why = OBJECTIVES.get(trained_with).paper_eval_step_note
        return f"PGD and {cw} step {step:.5g} ({why}{scaled}); the model was trained with '{trained_with}' ({source})"
    return (f"PGD and {cw} step {step:.5g} (ε/4 for every model under the {threat.name} {settings.preset} "
            f"preset{scaled}); the model was trained with '{trained_with}' ({source})")


@dataclass
class Metric:
    """One column of the report, before it is computed.

    Attributes:
        name: its key in the report and the state file ("pgd", "fog_s3").
        label: its display name ("PGD-20", "fog 3").
        config: what a stored result must have been made with to be reused.
        compute: computes it.
        done: called once its result is recorded (an attack drops its own resume state).
        prepare: for a metric with inputs of its own (a corruption's images): loads them for `compute` and returns
            their digests, which join `config`, so a stored result is reused only for the same images.
    """

    name: str
    label: str
    config: dict[str, Any]
    compute: Callable[[], AttackRun]
    done: Callable[[], None] = lambda: None
    prepare: Callable[[], dict[str, Any]] | None = None


class Evaluation:
    """One call of `evaluate`: a class so that every step has a name. See the module docstring.

    Args:
        ctx: this process's place among the processes.
        settings: what to compute.
        checkpoint: the model's file (None for a model given or built without one).
        data_dir: the dataset folder.
        out: the report folder (locked by the caller).
        model: a model of the user's own, or None.
    """

    def __init__(self, ctx: DistributedContext, settings: EvalSettings, checkpoint: str | Path | None,
                 data_dir: str | Path, out: Path, model: nn.Module | None = None) -> None:
        self.ctx = ctx
        self.settings = settings
        self.checkpoint = checkpoint
        self.data_dir = data_dir
        self.out = out
        self.user_model = model
        self.started = time.perf_counter()
        self.outcomes: list[AttackOutcome] = []

    # ------------------------------------------------------------------------------------------------ setup
    def _load(self) -> None:
        from dsnet.data import load_dataset

        s = self.settings
        self.loaded: LoadedModel = load_model_for_evaluation(
            self.checkpoint, model_name=s.model_name, dataset=s.dataset, trained_with=s.trained_with,
            device=self.ctx.device, model=self.user_model, model_factory=s.model_factory,
            model_kwargs=dict(s.model_kwargs) if isinstance(s.model_kwargs, Mapping) else s.model_kwargs,
            normalize=s.normalize, weights=s.weights)
        # The dataset is known now (given, or the checkpoint's): a wrong split or a dataset without corruptions is
        # named before an earlier evaluation in the folder is compared or any data is read.
        _check_data_choice(self.loaded.dataset, s.split, s.threat)
        self.key = {
            "model_name": self.loaded.model_name, "model_kwargs": self.loaded.model_kwargs,
            "weights_sha256": self.loaded.weights_sha256, "model_code": self.loaded.code,
            "versions": {"dsnet": dsnet.__version__, "torch": str(torch.__version__)},
            "dataset": self.loaded.dataset, "split": s.split,
            "threat_model": s.threat_model, "preset": s.preset, "eps": s.eps, "trained_with": self.loaded.trained_with,
            "batch_size": s.batch_size, "seed": s.seed, "overrides": s.overrides,
            "normalize": self.loaded.source.get("normalize"),
        }
        if not s.restart:  # an earlier evaluation of other settings, weights or code is refused before data is read
            EvalState.check(self.out / STATE_NAME, self.key)
        # Several ranks downloading into one folder would race; under torchrun the data must be there already.
        data = load_dataset(self.loaded.dataset, self.data_dir, s.split, download=not self.ctx.distributed,
                            progress=self.ctx.is_main)
        self.selection: PointSelection = select_points(len(data), n_examples=s.n_examples, subset=s.subset,
                                                       seed=s.seed)
        images = data.images.index_select(0, self.selection.indices)  # uint8
        labels = data.labels.index_select(0, self.selection.indices)
        # The points' content, digested as they are loaded: results are reused only for the very same images.
        self.key.update(n=self.selection.n, points_sha256=self.selection.sha256,
                        data_sha256=tensors_sha256([("images", images), ("labels", labels)]))
        self.images = images.to(self.ctx.device)
        self.labels = labels.to(self.ctx.device)

    @property
    def eps(self) -> float:
        """The radius of the evaluation (nan for corruptions)."""
        s = self.settings
        return float(s.eps if s.eps is not None else s.threat.presets.get(s.preset).eps)

    def _attack_metrics(self) -> list[Metric]:
        s = self.settings
        stray = sorted(set(s.overrides) - set(s.attack_names))
        if stray:
            raise ConfigError(f"overrides for {', '.join(stray)}, which this evaluation does not run "
                              f"({', '.join(s.attack_names) or 'no attack'})")
        if not s.attack_names:
            return []
        overrides = {name: {"seed": s.seed, **s.overrides.get(name, {})} for name in s.attack_names}
        attacks = build_attacks(s.preset, self.loaded.trained_with, s.attack_names, overrides,
                                threat_model=s.threat, eps=s.eps)
        return [Metric(name, attack.label, attack.resume_key(self.ctx.world_size),
                       lambda a=attack: a.evaluate(self.loaded.model, self.images, self.labels, clean=self.clean,
                                                   batch_size=s.batch_size, progress=self._bar(a.label),
                                                   state_dir=self.out),
                       lambda a=attack: a.discard_state(self.out))
                for name, attack in attacks.items()]

    def _corruption_metrics(self) -> list[Metric]:
        from dsnet.data.corruptions import corruption_set_for

        s = self.settings
        entry = corruption_set_for(self.loaded.dataset)
        return [self._corruption_metric(entry.name, corruption, severity)
                for corruption in s.attack_names for severity in s.severities]  # type: ignore[union-attr]

    def _corruption_metric(self, set_name: str, corruption: str, severity: int) -> Metric:
        """Accuracy on the corrupted copies of the selected points (a corruption is not an attack: a point that is
        wrong on the clean image may be right on the corrupted one, and counts as such, as RobustBench counts).

        The corrupted points are read once, in `prepare`, and their digest decides whether a stored result is
        theirs."""
        from dsnet.data.corruptions import load_corrupted

        inputs: dict[str, torch.Tensor] = {}

        def prepare() -> dict[str, Any]:
            corrupted = load_corrupted(self.loaded.dataset, self.data_dir, corruption, severity,
                                       self.selection.indices, test_size=self.selection.total,
                                       download=not self.ctx.distributed, progress=self.ctx.is_main)
            labels = corrupted.labels.to(self.ctx.device)
            if not torch.equal(labels, self.labels):
                wrong = int((labels != self.labels).sum())
                raise DataError(f"{corrupted.name}: {wrong} of {labels.numel()} labels differ from the clean test "
                                "set's; the corrupted files do not belong to this dataset")
            inputs["images"] = corrupted.images
            return {"inputs_sha256": tensors_sha256([("images", corrupted.images), ("labels", corrupted.labels)])}

        def compute() -> AttackRun:
            images = inputs.pop("images").to(self.ctx.device)
            return AttackRun(clean_flags(self.loaded.model, images, self.labels, batch_size=self.settings.batch_size,
                                         progress=self._bar(f"{corruption} {severity}")))

        return Metric(f"{corruption}_s{severity}", f"{corruption} {severity}",
                      {"set": set_name, "corruption": corruption, "severity": severity}, compute, prepare=prepare)

    def _open_state(self, metrics: list[Metric]) -> EvalState:
        path = self.out / STATE_NAME
        if self.ctx.is_main:  # the folder's names are this evaluation's from now on (checked before loading)
            FolderFiles(self.out).reserve(_evaluation_files(), EVAL_WRITER, hint=_OUT_DIR_HINT)
        if self.ctx.is_main and self.settings.restart:
            path.unlink(missing_ok=True)
            for metric in metrics:
                metric.done()
        barrier()
        state = EvalState.open(path, self.key, restart=self.settings.restart)
        if not self.ctx.is_main:
            state.path = None  # rank 0 alone writes
        return state

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
                run: AttackRun = metric.compute()
            except NonFiniteError as error:
                kept = (f"the finished metrics ({', '.join(state.results)}) are kept in {self.out / STATE_NAME}"
                        if state.results else "nothing had finished before it")
                raise NonFiniteError(f"{metric.label}: {error}; {kept}") from None
            outcome = AttackOutcome(metric.name, metric.label, config, run.flags, time.perf_counter() - t0,
                                    run.stats, extra=run.extra)
            state.record(metric.name, {"config": config, "flags": flags_to_string(run.flags),
                                       "runtime_s": outcome.runtime_s, "stats": run.stats, "extra": run.extra})
            how = f"in {outcome.runtime_s:.1f} s"
        if self.ctx.is_main:
            logger.info("%s: %.2f%% (%d/%d) %s", metric.label, 100 * outcome.accuracy, outcome.robust, n, how)
        self.outcomes.append(outcome)
        return outcome

    def _eps_sweep(self, state: EvalState, clean: torch.Tensor) -> list[tuple[float, float]] | None:
        """PGD accuracy at ε × (0.5, 1, 2, 4) and at a large ε, in the threat model's norm, on the first `sanity_n`
        points (stored for resume); None where the threat model has no sweep."""
        s = self.settings
        threat = s.threat
        if not s.sanity or threat.sweep_large_eps is None:
            return None
        n = min(s.sanity_n, self.selection.n)
        levels = [factor * self.eps for factor in SWEEP_EPS_FACTORS]
        if threat.sweep_large_eps > levels[-1]:
            levels.append(threat.sweep_large_eps)
        config = {"n": n, "eps": levels, "steps": SWEEP_STEPS, "step_size": "eps/4", "seed": s.seed}
        if threat.norm != "Linf":
            config["norm"] = threat.norm
        if state.sweep is not None and state.sweep.get("config") == config:
            return [(float(e), float(a)) for e, a in state.sweep["accuracy"]]
        results = []
        for level in levels:
            attack = PGD(eps=level, step_size=level / 4, steps=SWEEP_STEPS, seed=s.seed, norm=threat.norm or "Linf")
            run = attack.evaluate(self.loaded.model, self.images[:n], self.labels[:n], clean=clean[:n],
                                  batch_size=s.batch_size, progress=self._bar(f"sweep ε={level:.4g}"))
            results.append((level, int(run.flags.sum()) / max(n, 1)))
        state.record_sweep({"config": config, "accuracy": [[e, a] for e, a in results]})
        if self.ctx.is_main:
            logger.info("ε sweep (PGD-%d %s on %d points): %s", SWEEP_STEPS, threat.name, n,
                        ", ".join(f"{100 * a:.1f}% at {e:.4g}" for e, a in results))
        return results

    def _bar(self, label: str) -> str | None:
        return label if self.settings.progress and self.ctx.is_main else None

    # -------------------------------------------------------------------------------------------------- run
    def run(self) -> EvalReport:
        s = self.settings
        self._load()
        model, loaded, selection = self.loaded.model, self.loaded, self.selection
        if self.ctx.is_main:
            radius = f", ε = {self.eps:.5g}" if s.threat.norm else ""
            logger.info("evaluating %s (%s, %s) on %s/%s: n = %d, %s; %s preset %s%s; %s", loaded.checkpoint,
                        loaded.model_name, f"{loaded.parameters:,} parameters", loaded.dataset, s.split, selection.n,
                        selection.description, s.threat_model, s.preset, radius, ", ".join(s.attacks))
        clean_metric = Metric("clean", "Natural", {}, lambda: AttackRun(
            clean_flags(model, self.images, self.labels, batch_size=s.batch_size, progress=self._bar("clean"))))
        metrics = self._corruption_metrics() if s.threat.norm is None else self._attack_metrics()
        state = self._open_state(metrics)
        # True fp32: no autocast, no TF32 convolutions or matmuls (cuDNN's default on Ampere and newer GPUs).
        with full_fp32(self.ctx.device.type) as math_mode:
            self.clean = self._metric(state, clean_metric).flags
            for metric in metrics:
                self._metric(state, metric)
                barrier()
                metric.done()  # the result is in eval_state.json now
            sweep = self._eps_sweep(state, self.clean)
        return self._report(sweep, math_mode)

    def _checks(self, sweep: list[tuple[float, float]] | None) -> list[SanityCheck]:
        s, outcomes = self.settings, self.outcomes
        if s.threat.norm is None:
            return []  # gradient masking is a question about attacks; corruptions are not attacks
        by_name = {o.name: o for o in outcomes}
        labels = {o.name: o.short_label for o in outcomes}
        aa = by_name["autoattack"].extra if "autoattack" in by_name else None
        if not s.sanity:
            why = "skipped (--no-sanity)."
        elif s.threat.sweep_large_eps is None:
            why = f"skipped: the {s.threat.name} presets have no PGD of their own to sweep."
        else:
            why = ""
        return [
            check_ordering({o.name: o.accuracy for o in outcomes}, labels),
            check_eps_sweep(sweep, min(s.sanity_n, self.selection.n), reason_skipped=why),
            check_square(aa.get("stage_accuracy") if aa else None, aa.get("stages_run") if aa else None),
            check_perturbations({o.name: o.stats for o in outcomes if o.name != "clean"}, labels, self.eps,
                                norm=s.threat.norm),
            check_pgd_vs_margin({o.name: o.flags for o in outcomes}, labels),
        ]

    def _warnings(self) -> list[str]:
        """What the numbers cannot say by themselves: a model that ignores its input, an ε beyond the usual."""
        from dsnet.evaluation.loading import PROBE_BATCH

        threat, notes = self.settings.threat, []
        if not self.loaded.responds_to_input:
            notes.append(f"the model gave the same logits to {PROBE_BATCH} different images (black, white, grey and "
                         "noise): it ignores its input, so these accuracies say nothing about robustness")
        if threat.norm is not None and self.eps > threat.usual_eps:
            notes.append(f"ε = {self.eps:.4g} is beyond the {threat.usual_eps:.4g} that {threat.name} evaluations "
                         "usually go up to; numbers at this radius are not comparable with published ones")
        for note in notes:
            logger.warning("%s", note)
        return notes

    def _report(self, sweep: list[tuple[float, float]] | None, math_mode: dict[str, Any]) -> EvalReport:
        s, loaded, outcomes = self.settings, self.loaded, self.outcomes
        device = self.ctx.device
        device_name = (f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
                       else f"cpu ({torch.get_num_threads()} threads)")
        report = EvalReport(
            checkpoint=str(loaded.checkpoint),
            model={"name": loaded.model_name, "kwargs": loaded.model_kwargs, "num_classes": loaded.num_classes,
                   "parameters": loaded.parameters, "weights_sha256": loaded.weights_sha256,
                   "epoch": loaded.trained_epochs, "trained_with": loaded.trained_with,
                   "trained_with_source": loaded.trained_with_source, "source": dict(loaded.source),
                   "code": dict(loaded.code)},
            dataset=loaded.dataset,
            split=s.split,
            selection=self.selection,
            preset=s.preset,  # type: ignore[arg-type]
            eps=self.eps,
            step_note=_step_note(s, loaded.trained_with, loaded.trained_with_source),
            outcomes=outcomes,
            sanity_checks=self._checks(sweep),
            eps_sweep=sweep,
            eps_sweep_n=min(s.sanity_n, self.selection.n),
            seeds={"seed": s.seed, "subset": self.selection.seed,
                   **{o.name: o.config.get("seed") for o in outcomes if o.name != "clean" and "seed" in o.config},
                   "eps_sweep": s.seed if sweep is not None else None},
            versions=_versions(),
            device={"type": device.type, "name": device_name, "world_size": self.ctx.world_size,
                    "dtype": "float32", "math": math_mode},
            runtime_s=time.perf_counter() - self.started,
            overrides={k: dict(v) for k, v in s.overrides.items()},
            threat_model=s.threat_model,
            eps_override=s.eps,
            warnings=self._warnings(),
            data={"dir": str(Path(self.data_dir).expanduser().resolve()), "sha256": self.key["data_sha256"]},
        )
        if self.ctx.is_main:
            for check in report.failed_checks:
                logger.warning("sanity check failed: %s: %s", check.title, check.message)
            paths = report.write(self.out)
            headline = (f"mean corruption accuracy {100 * report.corruption_mean:.2f}%" if s.threat.norm is None
                        else f"worst case {100 * report.worst_case_accuracy:.2f}%")
            logger.info("%s; reports: %s", headline, ", ".join(str(p) for p in paths))
        else:
            report.out_dir = self.out
        return report


def evaluate(checkpoint: str | Path | None = None, data_dir: str | Path | None = None, *,
             out_dir: str | Path | None = None, model: nn.Module | None = None, **options: Any) -> EvalReport:
    """Evaluates a model's robustness and writes `report.json` and `report.md`.

    Args:
        checkpoint: a checkpoint written by `dsnet train`, or a tensors-only state dict (with `model_name`, or the
            weights of `model` / `model_factory`); None for a `model` or factory used with the weights it has.
        data_dir: dataset folder (downloaded there when missing, on a single process).
        out_dir: folder for the reports and the resume state; default `<checkpoint folder>/eval-<preset>`
            (`eval-<threat model>-<preset>` for the other threat models; in the working directory, with the
            model's class name, when there is no checkpoint).
        model: an `nn.Module` of your own mapping (B, 3, H, W) images in [0, 1] to logits (pass `dataset`).
        **options: the fields of `EvalSettings`:
            attacks: metrics to compute: "clean", and the threat model's attacks ("fgsm", "fgsm_textbook", "pgd",
                "cw_inf" / "cw_l2", "autoattack", or any registered attack) or, for corruptions, corruption names.
                Default: clean, fgsm, pgd, cw_inf, autoattack under L∞ (cw_l2 under L2; autoattack under L1);
                the 15 benchmark corruptions. Clean accuracy is always computed.
            threat_model: "Linf" (default), "L2", "L1" or "corruptions".
            preset: "paper" (ε = 0.031, the authors' steps) or "standard" (ε = 8/255, RobustBench) under L∞;
                "standard" for the others; default "paper" under L∞, "standard" otherwise.
            eps: a radius replacing the preset's; the step sizes scale with it.
            severities: the corruption severities to evaluate (default 1 to 5).
            n_examples: evaluate the first N points in file order (RobustBench convention).
            subset: evaluate a seeded random fraction of the points (0.125 is the paper's 12.5 %).
            split: the dataset split ("test"; SVHN also "extra").
            batch_size: points per forward pass and per attack call. AutoAttack keeps the reference's own
                default of 250 (its random draws depend on it); `overrides={"autoattack": {"batch_size": N}}`
                changes it.
            seed: seed of the subset draw, of every attack and of the ε sweep.
            model_name: the architecture, for a bare state dict (`dsnet models` lists them).
            dataset: the dataset; default the checkpoint's training dataset (required for a model of your own).
            trained_with: the training objective; default the checkpoint's (it picks the paper preset's step).
            model_factory: `FILE.py:FUNCTION` or `package.module:FUNCTION` that builds your model.
            model_kwargs: the factory's keyword arguments (a dict, or JSON text).
            normalize: (mean, std), three values each, for a model that expects normalised inputs.
            weights: for a training checkpoint with a weight average: "auto" (default) and "ema" evaluate the
                average, "raw" the trained weights.
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
        UnknownNameError: an unknown attack, preset, threat model, model, dataset or split.
        ConfigError: conflicting or out-of-range options, or an `out_dir` holding an evaluation with other
            settings (without `restart`).
        CheckpointError: an unreadable checkpoint or one of another architecture.
        DataError: missing or corrupt dataset files.
    """
    if data_dir is None:
        raise ConfigError("evaluate() needs data_dir, the dataset folder")
    settings = EvalSettings(**options)
    owns_group = not (dist.is_available() and dist.is_initialized())
    ctx = setup_distributed(str(settings.device), option="--device")
    if out_dir is not None:
        out = Path(out_dir)
    else:
        name = type(model).__name__ if model is not None else (settings.model_factory or "").rpartition(":")[2]
        out = default_out_dir(checkpoint, settings.preset, settings.threat_model, name or None)  # type: ignore[arg-type]
    lock = None
    try:
        if ctx.is_main:  # before anything is loaded: a folder that cannot take the report fails in a second
            ensure_writable_folder(out)
            lock = FolderLock(out, "evaluation", hint="wait for it to finish, or evaluate into another --out-dir")
            lock.acquire()
            check_evaluation_folder(out, settings.restart)
        return Evaluation(ctx, settings, checkpoint, data_dir, out, model).run()
    finally:
        if lock is not None:
            lock.release()
        if owns_group and ctx.distributed:
            teardown_distributed()
