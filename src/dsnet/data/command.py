"""`dsnet download`: fetch and verify a dataset ahead of time."""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", help="cifar10, cifar100, svhn, or the corruption sets cifar10c, cifar100c")
    parser.add_argument("--data-dir", required=True, help="folder to download and extract into")
    parser.add_argument("--splits", nargs="+", default=None, help="splits to fetch (default: train and test)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from dsnet.data import CORRUPTION_SETS, download_corruptions, download_dataset

    if args.dataset in CORRUPTION_SETS:
        root = download_corruptions(args.dataset, args.data_dir, progress=not args.no_progress)
    else:
        root = download_dataset(args.dataset, args.data_dir, args.splits, progress=not args.no_progress)
    print(f"{args.dataset} is ready in {root}")
    return 0
