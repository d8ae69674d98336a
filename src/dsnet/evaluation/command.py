"""`dsnet eval` and `dsnet export`: argument parsing around `evaluate()` and `export_model()`.

Heavy imports happen inside the handlers, so `dsnet -h` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import re

__all__ = ["add_eval_arguments", "run_eval", "add_export_arguments", "run_export"]


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


def _channels(text: str) -> tuple[float, ...]:
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


def _accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Lets a value such as `-0.5,-0.5,-0.5` follow an option: argparse (before Python 3.13) takes anything that starts
    with '-' and is not a plain number for an option name. No option of ours starts with a digit, so this is safe."""
    parser._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]


THREAT_MODEL_CHOICES = ("Linf", "L2", "L1", "corruptions")
"""`--threat-model` values (kept here as text, so `dsnet -h` imports no torch; `tests/test_architecture.py`
checks them against `dsnet.evaluation.presets.THREAT_MODELS`)."""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dsnet eval`."""
    _accept_negative_numbers(parser)
    source = parser.add_argument_group("the model")
    source.add_argument("--checkpoint", default=None,
                        help="a checkpoint of `dsnet train`, or a tensors-only state dict (with --model or "
                             "--model-factory)")
    source.add_argument("--model", default=None, metavar="NAME", help="our architecture of a bare state dict")
    source.add_argument("--model-factory", default=None, metavar="FILE.py:FUNCTION",
                        help="builds your own model (or package.module:FUNCTION); --checkpoint then holds its "
                             "weights, and --dataset is required")
    source.add_argument("--model-kwargs", default=None, metavar="JSON",
                        help="keyword arguments of the factory, as a JSON object")
    source.add_argument("--normalize", nargs=2, type=_channels, default=None, metavar=("MEAN", "STD"),
                        help="normalise inputs for a model trained on normalised images, e.g. "
                             "0.4914,0.4822,0.4465 0.2471,0.2435,0.2616")
    source.add_argument("--weights", choices=("auto", "ema", "raw"), default="auto",
                        help="of a checkpoint trained with train.ema_decay: auto/ema evaluate the weight average "
                             "(default), raw the trained weights")
    parser.add_argument("--data-dir", required=True, help="dataset folder")
    parser.add_argument("--threat-model", default="Linf", choices=THREAT_MODEL_CHOICES,
                        help="Linf (default), L2, L1, or corruptions (CIFAR-10-C / CIFAR-100-C)")
    parser.add_argument("--eps", type=_radius, default=None,
                        help="radius replacing the preset's (e.g. 8/255, 0.25); step sizes scale with it")
    parser.add_argument("--severities", nargs="+", type=int, default=None, metavar="K",
                        help="corruption severities (default 1 2 3 4 5)")
    parser.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                        help="metrics to compute (default under Linf: clean fgsm pgd cw_inf autoattack, also "
                             "fgsm_textbook; under L2 cw_l2 instead of cw_inf; for corruptions: corruption names)")
    points = parser.add_mutually_exclusive_group()
    points.add_argument("--n-examples", type=_positive_int, default=None, metavar="N",
                        help="the first N test points in file order (RobustBench convention)")
    points.add_argument("--subset", type=_fraction, default=None, metavar="FRACTION",
                        help="a seeded random fraction of the test points (the paper's 12.5 %%: 0.125)")
    parser.add_argument("--preset", default=None,
                        help="under Linf, paper (default: eps 0.031 and the authors' steps) or standard (eps 8/255, "
                             "RobustBench); standard for the other threat models (L2: eps 0.5; L1: eps 12)")
    parser.add_argument("--out-dir", default=None,
                        help="report folder (default: <checkpoint folder>/eval-<preset>, or "
                             "eval-<threat model>-<preset>)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="points per batch (default 256)")
    parser.add_argument("--autoattack-batch-size", type=_positive_int, default=None, metavar="N",
                        help="points per AutoAttack call (default 250, the reference's; its random draws depend on it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, the attacks and the sweep (default 0)")
    parser.add_argument("--dataset", default=None, help="dataset (default: the checkpoint's training dataset)")
    parser.add_argument("--split", default="test", help="dataset split (default test)")
    parser.add_argument("--trained-with", default=None, metavar="OBJECTIVE",
                        help="training objective, which picks the paper preset's step (default: the checkpoint's)")
    parser.add_argument("--no-sanity", action="store_true", help="skip the eps sweep of the sanity checks")
    parser.add_argument("--sanity-n", type=_positive_int, default=128, metavar="N",
                        help="points in the eps sweep (default 128)")
    parser.add_argument("--restart", action="store_true", help="discard an earlier evaluation in --out-dir")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run_eval(args: argparse.Namespace) -> int:
    """Runs `dsnet eval`; prints the summary table on rank 0."""
    import logging

    from dsnet.evaluation.evaluator import evaluate

    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("dsnet").setLevel(logging.ERROR)  # rank 0 reports; errors still show
    from dsnet.errors import ConfigError

    if args.checkpoint is None and args.model_factory is None:
        raise ConfigError("pass --checkpoint (a checkpoint of ours or a state dict), or --model-factory for a model "
                          "of your own")
    report = evaluate(
        args.checkpoint,
        args.data_dir,
        out_dir=args.out_dir,
        attacks=args.attacks,
        threat_model=args.threat_model,
        preset=args.preset,
        eps=args.eps,
        severities=args.severities,
        model_factory=args.model_factory,
        model_kwargs=args.model_kwargs,
        normalize=tuple(args.normalize) if args.normalize else None,
        weights=args.weights,
        n_examples=args.n_examples,
        subset=args.subset,
        split=args.split,
        batch_size=args.batch_size,
        seed=args.seed,
        model_name=args.model,
        dataset=args.dataset,
        trained_with=args.trained_with,
        overrides={"autoattack": {"batch_size": args.autoattack_batch_size}} if args.autoattack_batch_size else None,
        sanity=not args.no_sanity,
        sanity_n=args.sanity_n,
        restart=args.restart,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        if report.norm is None:
            rows = report.corruption_accuracy
            width = max(len(name) for name in rows) if rows else 10
            print(f"{'corruption'.ljust(width)}  " + "  ".join(f"s{k}".rjust(6) for k in sorted(
                {k for row in rows.values() for k in row})))
            for name, row in rows.items():
                print(f"{name.ljust(width)}  " + "  ".join(f"{100 * row[k]:6.2f}" for k in sorted(row)))
            print(f"clean {100 * report.outcome('clean').accuracy:.2f}%, mean corruption accuracy "
                  f"{100 * report.corruption_mean:.2f}%; n = {report.n}; report: {report.out_dir / 'report.md'}")
            return 0
        header = [o.short_label for o in report.outcomes] + ["Worst case"]
        values = [f"{100 * o.accuracy:.2f}" for o in report.outcomes] + [f"{100 * report.worst_case_accuracy:.2f}"]
        widths = [max(len(h), len(v)) for h, v in zip(header, values)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        print("  ".join(v.rjust(w) for v, w in zip(values, widths)))
        failed = report.failed_checks
        checks = f"{len(failed)} sanity check(s) failed" if failed else "sanity checks passed or skipped"
        print(f"n = {report.n}, {report.threat_model} eps = {report.eps:g}; {checks}; "
              f"report: {report.out_dir / 'report.md'}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dsnet export`."""
    _accept_negative_numbers(parser)
    parser.add_argument("--checkpoint", default=None,
                        help="a checkpoint of `dsnet train` (or a state dict with --model or --model-factory)")
    parser.add_argument("--out-dir", required=True, help="folder for the exported files")
    parser.add_argument("--report", default=None,
                        help="report.json of `dsnet eval` on this model: adds the claim JSON; the export must "
                             "reproduce its clean flags on its points, and takes the options below from it when left "
                             "out")
    parser.add_argument("--name", default=None, help="file name stem, e.g. Author2021Title_Arch (default: model name)")
    parser.add_argument("--model", default=None, metavar="NAME", help="architecture of a bare state dict")
    parser.add_argument("--model-factory", default=None, metavar="FILE.py:FUNCTION",
                        help="builds your own model (its file is copied beside the export)")
    parser.add_argument("--model-kwargs", default=None, metavar="JSON", help="keyword arguments of the factory")
    parser.add_argument("--normalize", nargs=2, type=_channels, default=None, metavar=("MEAN", "STD"),
                        help="the input normalisation the network expects; the export applies it itself")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default=None,
                        help="of a checkpoint trained with train.ema_decay (default: the report's, else auto)")
    parser.add_argument("--dataset", default=None, help="dataset of a bare state dict or a factory")
    parser.add_argument("--data-dir", default=None,
                        help="where the report's points are (default: the data folder the report names)")
    parser.add_argument("--device", default="auto", help="device of the check on the report's points (default auto)")


def run_export(args: argparse.Namespace) -> int:
    """Runs `dsnet export` and lists the files written."""
    from dsnet.evaluation.export import export_model

    result = export_model(args.checkpoint, args.out_dir, report=args.report, name=args.name, model_name=args.model,
                          dataset=args.dataset, model_factory=args.model_factory, model_kwargs=args.model_kwargs,
                          normalize=tuple(args.normalize) if args.normalize else None, weights=args.weights,
                          data_dir=args.data_dir, device=args.device)
    for path in (result.weights, result.architecture, result.factory, result.claim):
        if path is not None:
            print(path)
    if result.verified is not None:
        print(f"verified: the export classifies {result.verified['agree']} of the report's {result.verified['points']} "
              f"points as the report does ({result.verified['near_ties']} near-ties)")
    return 0
