"""`dsnet train`: argument parsing around `dsnet.training.trainer.train`."""

from __future__ import annotations

import argparse

from dsnet.errors import ConfigError

__all__ = ["add_arguments", "run"]



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. configs/quickstart.yaml")
    parser.add_argument("--data-dir", required=True, help="dataset folder (downloaded there when missing)")
    parser.add_argument("--out-dir", required=True, help="run folder for checkpoints, metrics and logs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a recipe value, e.g. --set train.epochs=2 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out-dir from its last.pt")
    parser.add_argument("--allow-change", dest="allow_changes", action="append", default=[], metavar="KEY",
                        help="with --resume: let the recipe change KEY (section.key or a section) on purpose; "
                             "recorded in metrics.jsonl (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Trains the recipe (rank 0 prints the summary)."""
    import logging
    import os

    from dsnet.config import load_config
    from dsnet.training.trainer import train

    overrides = list(args.overrides) + (["train.progress=false"] if args.no_progress else [])
    config = load_config(args.config, overrides)
    main_process = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 alone logs and prints
    if not main_process:
        logging.getLogger("dsnet").setLevel(logging.ERROR)  # rank 0 says everything once; errors still show
    if args.allow_changes and not args.resume:
        raise ConfigError("--allow-change only applies to --resume (a new run takes the recipe as it is)")
    result = train(config, args.data_dir, args.out_dir, resume=args.resume, allow_changes=args.allow_changes)
    if not main_process:
        return 0
    if result.stopped_early:
        print(f"stopped early: {result.stopped_early}")
    final = result.final
    if final:
        clean, pgd = final.get("val_clean_acc"), final.get("val_pgd_acc")
        summary = f"done: {result.epochs_completed} epochs in {result.out_dir}"
        if clean is not None:
            summary += f"; validation clean {100 * clean:.1f}% PGD-{final['val_pgd_steps']} {100 * pgd:.1f}%"
        print(summary + f"; selected epoch {result.selected_epoch} -> {result.out_dir / 'selected.pt'}")
    return 0
