"""`dsnet models`: the registered models with their parameter and FLOP counts; `--robustbench`: the RobustBench
entries dsnet builds, with our model and the numbers RobustBench lists."""

from __future__ import annotations

import argparse

from dsnet.errors import DsnetError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'dsnet*'")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier size used for the counts")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--tiny", action="store_true", help="also list the tiny test variants")
    parser.add_argument("--robustbench", action="store_true",
                        help="list the RobustBench CIFAR entries dsnet builds (evaluate one with --checkpoint "
                             "robustbench:NAME --model-dir DIR)")


def run(args: argparse.Namespace) -> int:
    """Prints one row per model: name, raw and unique parameters, GFLOPs per 32x32 image, expected count, note."""
    from dsnet.models import list_models, model_info
    from dsnet.models.profile import profile_model

    if args.robustbench:
        from dsnet.models.robustbench import robustbench_table

        print(robustbench_table(markdown=False))
        return 0
    names = list_models(args.pattern, include_tiny=args.tiny)
    if not names:
        raise DsnetError(f"no model matches {args.pattern!r}; run `dsnet models` for the list")
    header = f"{'name':<18} {'params':>12} {'unique':>12} {'GFLOPs':>8}  {'expected':>12}  note"
    print(header)
    print("-" * len(header))
    for name in names:
        row = profile_model(name, num_classes=args.num_classes, flops=not args.no_flops)
        info = model_info(name)
        expected = f"{info.expected_params:,}" if info.expected_params and args.num_classes == 10 else ""
        gflops = f"{row.gflops:8.2f}" if row.gflops is not None else f"{'-':>8}"
        print(f"{name:<18} {row.params:>12,} {row.unique_params:>12,} {gflops}  {expected:>12}  {info.note}")
    return 0
