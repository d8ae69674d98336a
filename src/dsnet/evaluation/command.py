"""`dsnet eval` and `dsnet export`: argument parsing around `evaluate()` and `export_model()`.

Heavy imports happen inside the handlers, so `dsnet -h` stays fast.
"""

from __future__ import annotations

import argparse
import os

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


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dsnet eval`."""
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of `dsnet train` (or a state dict with --model)")
    parser.add_argument("--data-dir", required=True, help="dataset folder")
    parser.add_argument("--attacks", nargs="+", default=None, metavar="NAME",
                        help="metrics to compute (default: clean fgsm pgd cw_inf autoattack; also fgsm_textbook)")
    points = parser.add_mutually_exclusive_group()
    points.add_argument("--n-examples", type=_positive_int, default=None, metavar="N",
                        help="the first N test points in file order (RobustBench convention)")
    points.add_argument("--subset", type=_fraction, default=None, metavar="FRACTION",
                        help="a seeded random fraction of the test points (the paper's 12.5 %%: 0.125)")
    parser.add_argument("--preset", default="paper", choices=("paper", "standard"),
                        help="paper: eps 0.031 and the authors' steps; standard: eps 8/255 (RobustBench)")
    parser.add_argument("--out-dir", default=None, help="report folder (default: <checkpoint folder>/eval-<preset>)")
    parser.add_argument("--batch-size", type=_positive_int, default=256, help="points per batch (default 256)")
    parser.add_argument("--autoattack-batch-size", type=_positive_int, default=None, metavar="N",
                        help="points per AutoAttack call (default 250, the reference's; its random draws depend on it)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subset, the attacks and the sweep (default 0)")
    parser.add_argument("--model", default=None, metavar="NAME", help="architecture of a bare state dict")
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
    report = evaluate(
        args.checkpoint,
        args.data_dir,
        out_dir=args.out_dir,
        attacks=args.attacks,
        preset=args.preset,
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
        header = [o.short_label for o in report.outcomes] + ["Worst case"]
        values = [f"{100 * o.accuracy:.2f}" for o in report.outcomes] + [f"{100 * report.worst_case_accuracy:.2f}"]
        widths = [max(len(h), len(v)) for h, v in zip(header, values)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        print("  ".join(v.rjust(w) for v, w in zip(values, widths)))
        failed = report.failed_checks
        checks = f"{len(failed)} sanity check(s) failed" if failed else "sanity checks passed or skipped"
        print(f"n = {report.n}, eps = {report.eps:g}; {checks}; report: {report.out_dir / 'report.md'}")
    return 0


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dsnet export`."""
    parser.add_argument("--checkpoint", required=True,
                        help="a checkpoint of `dsnet train` (or a state dict with --model)")
    parser.add_argument("--out-dir", required=True, help="folder for the exported files")
    parser.add_argument("--report", default=None,
                        help="report.json of `dsnet eval` on this checkpoint (adds the claim JSON)")
    parser.add_argument("--name", default=None, help="file name stem, e.g. Author2021Title_Arch (default: model name)")
    parser.add_argument("--model", default=None, metavar="NAME", help="architecture of a bare state dict")
    parser.add_argument("--dataset", default=None, help="dataset of a bare state dict")


def run_export(args: argparse.Namespace) -> int:
    """Runs `dsnet export` and lists the files written."""
    from dsnet.evaluation.export import export_model

    result = export_model(args.checkpoint, args.out_dir, report=args.report, name=args.name, model_name=args.model,
                          dataset=args.dataset)
    for path in (result.weights, result.architecture, result.claim):
        if path is not None:
            print(path)
    return 0
