"""The one declaration of an evaluation's options, `EvalConfig`, and what it resolves to, `EvalPlan`.

Every option of `dsnet eval` and every keyword of `dsnet.evaluation.evaluate(...)` is a field here, with its type,
default and a one-line docstring. The command line is built from these fields (`dsnet.options.add_arguments`), and
so are `evaluate`'s signature and docstring: an option is added, documented or changed in one place.

`EvalConfig` checks itself when it is built (every problem in one error, before anything is loaded) and never
changes; `EvalConfig.resolve()` looks every name up once, into an `EvalPlan` of objects (the suite: a threat model or
the corruption benchmark; its preset; the metrics; the ε) that the evaluator and the report use as they are.

Only argparse-level code runs when this module is imported, so `dsnet -h` stays fast.
"""

from __future__ import annotations

import argparse
import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dsnet.errors import ConfigError
from dsnet.evaluation.hub import is_hub_reference, parse_hub_reference
from dsnet.options import option

if TYPE_CHECKING:
    from dsnet.evaluation.suite import Preset, Suite

__all__ = ["EvalConfig", "EvalPlan", "get_suite", "suite_names", "default_out_dir", "check_normalization",
           "check_data_choice", "parse_channels", "WEIGHT_CHOICES", "CURVES", "AUTOATTACK_VERSION_CHOICES",
           "MATH_CHOICES"]

CURVES = ("eps", "steps")
"""The curves `--curve` draws: accuracy against ε (security curve), against attack iterations (convergence)."""

AUTOATTACK_VERSION_CHOICES = ("standard", "plus", "rand")
"""`--autoattack-version` (the reference's versions; the same as `dsnet.attacks.autoattack.AUTOATTACK_VERSIONS`,
spelt here so that `dsnet -h` imports no torch)."""

MATH_CHOICES = ("fp32", "tf32")
"""`--math` (the same as `dsnet.runtime.precision.MATH_MODES`, spelt here so that `dsnet -h` imports no torch)."""

WEIGHT_CHOICES = ("auto", "ema", "raw")
"""Which weights of a training checkpoint to evaluate: auto (the weight average when there is one), ema, raw."""

CORRUPTIONS = "corruptions"
"""The `--threat-model` value of the common-corruption benchmark (`dsnet.evaluation.corruptions`)."""


# ------------------------------------------------------------------------------------------- option parsers

def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.125, got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], e.g. 0.125 for the paper's 12.5 %, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _radius(text: str) -> float:
    """A radius such as 0.5, 8/255 or 2e-3."""
    try:
        if "/" in text:
            top, bottom = text.split("/", 1)
            value = float(top) / float(bottom)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"expected a radius such as 0.5 or 8/255, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def parse_channels(text: str) -> tuple[float, ...]:
    """Three comma-separated finite numbers (a per-channel mean or std; negative means are fine)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers such as 0.4914,0.4822,0.4465, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers (one per channel), got {text!r}")
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers (NaN or inf would make every logit NaN), "
                                         f"got {text!r}")
    return values


_MODEL = "the model"
_POINTS = "points"
_EVIDENCE = "the evidence behind the numbers"


def check_normalization(mean: Any, std: Any, channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A per-channel (mean, std) as floats, checked: `channels` finite means and `channels` finite stds > 0.

    Every place that takes a normalisation (`--normalize`, `evaluate(normalize=...)`, an export's input convention)
    checks it here, before anything is loaded: a NaN mean or a zero std would make every logit NaN.

    Raises:
        ConfigError: naming the bad value.
    """
    try:
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        raise ConfigError(f"the normalisation takes {channels} numbers for the mean and {channels} for the std, got "
                          f"{mean!r} and {std!r}") from None
    if len(mean) != channels or len(std) != channels:
        raise ConfigError(f"the normalisation takes {channels} numbers for the mean and {channels} for the std "
                          f"(one per channel), got {len(mean)} and {len(std)}: --normalize 0.49,0.48,0.45 "
                          "0.25,0.24,0.26")
    bad = [f"mean {v}" for v in mean if not math.isfinite(v)] + [f"std {v}" for v in std
                                                                    if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ConfigError(f"the normalisation needs finite means and finite stds > 0, got {', '.join(bad)}")
    return mean, std


# ----------------------------------------------------------------------------------------------- the config

@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Everything that decides an evaluation, checked when built (see the module docstring)."""

    checkpoint: str | None = option(None, group=_MODEL)
    """A checkpoint of `dsnet train`, a tensors-only state dict (.pt or .safetensors, with --model or
    --model-factory), an export of `dsnet export` (its folder), hf://ORG/REPO[@REVISION][/FILE] for one on the
    Hugging Face Hub, or robustbench:NAME, a RobustBench entry read from --model-dir (`dsnet models --robustbench`)."""
    model_dir: str | None = option(None, metavar="DIR", group=_MODEL)
    """RobustBench's model_dir, for --checkpoint robustbench:NAME: the file is DIR/<dataset>/<threat model>/NAME.pt
    (default ./models, RobustBench's)."""
    model_name: str | None = option(None, flag="--model", metavar="NAME", group=_MODEL)
    """Our architecture of a bare state dict (`dsnet models` lists them)."""
    model_factory: str | None = option(None, metavar="FILE.py:FUNCTION", group=_MODEL)
    """Builds your own model (or package.module:FUNCTION); --checkpoint then holds its weights, and --dataset is
    required."""
    model_kwargs: Mapping[str, Any] | str | None = option(None, metavar="JSON", group=_MODEL)
    """Keyword arguments of the factory, or of --model for a bare state dict, as a JSON object (a dict from
    Python)."""
    normalize: tuple[Sequence[float], Sequence[float]] | None = option(
        None, nargs=2, parse=parse_channels, metavar=("MEAN", "STD"), group=_MODEL)
    """Normalise inputs for a model trained on normalised images, e.g. 0.4914,0.4822,0.4465 0.2471,0.2435,0.2616."""
    weights: str = option("auto", choices=WEIGHT_CHOICES, group=_MODEL)
    """Of a checkpoint trained with train.ema_decay: auto/ema evaluate the weight average (default), raw the trained
    weights."""
    data_dir: str | None = option(None, required=True)
    """Dataset folder (downloaded there when missing, on a single process)."""
    threat_model: str = option("Linf")
    """Linf (default), L2, L1, or corruptions (CIFAR-10-C / CIFAR-100-C)."""
    eps: float | None = option(None, parse=_radius)
    """Radius replacing the preset's (e.g. 8/255, 0.25); step sizes scale with it."""
    severities: tuple[int, ...] | None = option(None, nargs="+", parse=int, metavar="K")
    """Corruption severities (default 1 2 3 4 5)."""
    attacks: tuple[str, ...] | None = option(None, nargs="+", metavar="NAME")
    """Metrics to compute (default under Linf: clean fgsm pgd cw_inf autoattack, also fgsm_textbook; under L2 cw_l2
    instead of cw_inf; for corruptions: corruption names); clean accuracy is always computed."""
    n_examples: int | None = option(None, parse=_positive_int, metavar="N", exclusive=_POINTS)
    """The first N test points in file order (RobustBench convention)."""
    subset: float | None = option(None, parse=_fraction, metavar="FRACTION", exclusive=_POINTS)
    """A seeded random fraction of the test points (the paper's 12.5 %: 0.125)."""
    preset: str | None = option(None)
    """Under Linf, paper (default: eps 0.031 and the authors' steps) or standard (eps 8/255, RobustBench); standard
    for the other threat models (L2: eps 0.5; L1: eps 12)."""
    out_dir: str | None = option(None)
    """Report folder (default: <checkpoint folder>/eval-<preset>, or eval-<threat model>-<preset>)."""
    batch_size: int = option(256, parse=_positive_int)
    """Points per batch (default 256)."""
    autoattack_batch_size: int | None = option(None, parse=_positive_int, metavar="N")
    """Points per AutoAttack call (default 250, the reference's; its random draws depend on it)."""
    autoattack_version: str | None = option(None, choices=AUTOATTACK_VERSION_CHOICES)
    """standard (default), plus, or rand: for a randomised model, the reference's EOT over 20 samples."""
    eot: int = option(1, parse=_positive_int, metavar="N", group=_EVIDENCE)
    """Expectation over transformation: FGSM, PGD and CW follow gradients averaged over N passes (for a randomised
    model; default 1)."""
    curves: tuple[str, ...] = option((), flag="--curve", nargs="+", choices=CURVES, action="extend",
                                     metavar="CURVE", group=_EVIDENCE)
    """eps: the security curve, accuracy against ε, from one minimum-norm attack (FMN) on every point; steps:
    accuracy against attack iterations (PGD and APGD at --curve-steps, and PGD with --curve-restarts)."""
    curve_steps: tuple[int, ...] = option((10, 20, 50, 100, 200), nargs="+", parse=_positive_int, metavar="K",
                                          group=_EVIDENCE)
    """Iterations of the convergence curve (default 10 20 50 100 200)."""
    curve_restarts: int = option(5, parse=_positive_int, metavar="R", group=_EVIDENCE)
    """Random restarts of the curve's last PGD point (default 5; 1 for none)."""
    fmn_steps: int = option(100, parse=_positive_int, metavar="K", group=_EVIDENCE)
    """Iterations of the minimum-norm attack behind the security curve (default 100; the paper uses 1000)."""
    seed: int = 0
    """Seed of the subset, the attacks and the sweep (default 0)."""
    dataset: str | None = option(None)
    """Dataset (default: the checkpoint's training dataset; required for a model of your own)."""
    split: str = "test"
    """Dataset split (default test; SVHN also extra)."""
    trained_with: str | None = option(None, metavar="OBJECTIVE")
    """Training objective, which picks the paper preset's step (default: the checkpoint's)."""
    overrides: Mapping[str, Mapping[str, Any]] = option(cli=False, factory=dict)
    """Attack name -> settings replacing the preset's (e.g. {"pgd": {"steps": 100}}); recorded in the report, which
    then calls the evaluation custom (Python only)."""
    sanity: bool = True
    """Run the eps sweep of the sanity checks (the other checks cost nothing and always run)."""
    sanity_n: int = option(128, parse=_positive_int, metavar="N")
    """Points in the eps sweep (default 128)."""
    restart: bool = False
    """Discard an earlier evaluation in --out-dir instead of resuming it."""
    device: str = "auto"
    """auto, cpu or cuda (default auto)."""
    math: str = option("fp32", choices=MATH_CHOICES)
    """fp32 math of every attack: fp32 (default, IEEE everywhere) or tf32 (TF32 tensor cores for convolutions and
    matmuls on NVIDIA Ampere and newer GPUs: faster, slightly different numbers; same as fp32 on a CPU). Recorded
    in the report and the claim."""
    progress: bool = True
    """Show progress bars (rank 0, and only when stderr is a terminal)."""

    def __post_init__(self) -> None:
        from dsnet.validate import Problems

        problems = Problems()
        problems.integer("--batch-size", self.batch_size, minimum=1)
        problems.integer("--sanity-n", self.sanity_n, minimum=1)
        problems.integer("--seed", self.seed, minimum=0)
        if self.autoattack_batch_size is not None:
            problems.integer("--autoattack-batch-size", self.autoattack_batch_size, minimum=1)
        if self.autoattack_version is not None:
            problems.choice("--autoattack-version", self.autoattack_version, AUTOATTACK_VERSION_CHOICES)
        problems.integer("--eot", self.eot, minimum=1)
        problems.integer("--curve-restarts", self.curve_restarts, minimum=1)
        problems.integer("--fmn-steps", self.fmn_steps, minimum=1)
        for curve in self.curves or ():
            problems.choice("--curve", curve, CURVES)
        steps = tuple(self.curve_steps or ())
        if not steps or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in steps) or \
                list(steps) != sorted(set(steps)):
            problems.add(f"--curve-steps takes increasing iteration counts >= 1 such as 10 20 50, got {list(steps)}")
        problems.choice("--weights", self.weights, WEIGHT_CHOICES)
        problems.choice("--math", self.math, MATH_CHOICES)
        if self.n_examples is not None and self.subset is not None:
            problems.add("--n-examples and --subset exclude each other; pass one of them")
        if self.normalize is not None:
            try:
                mean, std = self.normalize
            except (TypeError, ValueError):
                problems.add("--normalize takes a mean and a std of 3 values each: --normalize 0.49,0.48,0.45 "
                             "0.25,0.24,0.26")
            else:
                try:
                    check_normalization(mean, std)
                except ConfigError as error:
                    problems.add(f"--normalize: {error}")
        suite = get_suite(self.threat_model)
        preset = suite.preset(self.preset)
        suite.validate(self, preset, problems)
        suite.metric_names(self.attacks, preset)  # an unknown name fails here, with the valid ones
        problems.raise_if_any()
        if self.dataset is not None:
            check_data_choice(self.dataset, self.split, suite)

    def resolve(self) -> EvalPlan:
        """Every name looked up once (see `EvalPlan`)."""
        suite = get_suite(self.threat_model)
        preset = suite.preset(self.preset)
        overrides = {k: dict(v or {}) for k, v in dict(self.overrides or {}).items()}
        if self.autoattack_batch_size is not None:
            overrides["autoattack"] = {**overrides.get("autoattack", {}), "batch_size": self.autoattack_batch_size}
        if self.autoattack_version is not None:
            overrides["autoattack"] = {**overrides.get("autoattack", {}), "version": self.autoattack_version}
        severities = suite.severities(self, preset)
        normalize = check_normalization(*self.normalize) if self.normalize is not None else None
        metric_names = suite.metric_names(self.attacks, preset)
        if self.eot > 1:  # every attack of ours that follows gradients averages them (AutoAttack: --autoattack-version)
            from dsnet.attacks import ATTACKS

            for name in metric_names:
                if "eot" in inspect.signature(ATTACKS.get(name)).parameters:
                    overrides[name] = {**overrides.get(name, {}), "eot": self.eot}
        return EvalPlan(self, suite, preset, metric_names, severities, suite.radius(preset, self.eps), overrides,
                        normalize)


@dataclass(frozen=True)
class EvalPlan:
    """An `EvalConfig` with every name resolved.

    Attributes:
        config: the options as given.
        suite: what is measured: a `ThreatModel` or the corruption benchmark.
        preset: the suite's preset.
        metric_names: the attacks (or corruptions) after clean accuracy, in report order.
        severities: the corruption severities (empty for a threat model).
        eps: the radius of the evaluation (nan for the corruptions).
        attack_overrides: attack name -> settings replacing the preset's (`overrides`, with the AutoAttack batch).
        normalize: the checked (mean, std), or None.
    """

    config: EvalConfig
    suite: Suite
    preset: Preset
    metric_names: tuple[str, ...]
    severities: tuple[int, ...]
    eps: float
    attack_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """Every metric name, clean first."""
        return ("clean", *self.metric_names)


def suite_names() -> list[str]:
    """The values `--threat-model` takes: every registered threat model, then the corruptions."""
    from dsnet.evaluation.threat_models import THREAT_MODELS

    return [THREAT_MODELS.get(key).name for key in THREAT_MODELS.names()] + [CORRUPTIONS]


def get_suite(name: str | Suite) -> Suite:
    """The suite called `name`: a registered threat model (any case), or "corruptions".

    Raises:
        UnknownNameError: for another name, with the valid ones.
    """
    from dsnet.evaluation.suite import Suite

    if isinstance(name, Suite):
        return name
    if str(name).lower() == CORRUPTIONS:
        from dsnet.evaluation.corruptions import CORRUPTION_SUITE

        return CORRUPTION_SUITE
    from dsnet.evaluation.threat_models import THREAT_MODELS, get_threat_model
    from dsnet.registry import unknown_name

    key = str(name).lower()
    if key not in THREAT_MODELS and key not in ("inf", "l_inf"):
        raise unknown_name("threat model", name, suite_names())
    return get_threat_model(name)


def check_data_choice(dataset: str, split: str, suite: Suite) -> None:
    """The dataset exists and has `split`, and the suite can measure it (there is no SVHN-C): checked as soon as the
    dataset is known (from `--dataset`, or else from the checkpoint), before any folder is compared or any data is
    read.

    Raises:
        UnknownNameError: an unknown dataset or split (naming the valid ones).
        ConfigError: corruptions of a dataset without a corrupted copy, or of another split than test.
    """
    from dsnet.data import DATASETS
    from dsnet.errors import ConfigError

    DATASETS.get(dataset).check_split(split)
    if suite.name == CORRUPTIONS:
        from dsnet.data.corruptions import corruption_set_for

        corruption_set_for(dataset)
        if split != "test":
            raise ConfigError(f"common corruptions are corrupted copies of the test split, not of {split!r}; pass "
                              "--split test")


def default_out_dir(checkpoint: str | Path | None, preset: str, threat_model: str | Suite = "Linf",
                    model_name: str | None = None) -> Path:
    """`<checkpoint folder>/eval-<preset>` under L∞, `eval-<threat model>-<preset>` otherwise; for a model without
    a checkpoint, a RobustBench entry or a Hub model, the same name with the model's, the entry's or the repository's
    (and revision's), in the working directory."""
    name = get_suite(threat_model).out_dir_name(preset)
    if checkpoint is None:
        return Path(f"{name}-{model_name or 'model'}")
    if is_hub_reference(checkpoint):  # a Hub model: its folder is the Hub's cache, not ours
        reference = parse_hub_reference(str(checkpoint))
        at = f"@{reference.revision}" if reference.revision else ""
        return Path(f"{name}-hf-{reference.repo.replace('/', '--')}{at.replace('/', '-')}")
    if str(checkpoint).startswith("robustbench:"):  # a RobustBench entry: its folder is RobustBench's cache, not ours
        return Path(f"{name}-{str(checkpoint).rpartition('/')[2].removeprefix('robustbench:')}")
    return Path(checkpoint).parent / name
