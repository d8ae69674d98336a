"""`dsnet reproduce GRID`: argument parsing around `dsnet.experiments.runner.reproduce`."""

from __future__ import annotations

import argparse

from dsnet.errors import ConfigError, DsnetError

__all__ = ["add_reproduce_arguments", "run_reproduce"]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seeds(text: str) -> list[int]:
    try:
        return [int(part) for part in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be integers separated by commas, got {text!r}") from None


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of `dsnet reproduce`."""
    from dsnet.experiments.cluster import add_cluster_arguments
    from dsnet.experiments.grids import GRIDS, SCALES

    parser.add_argument("grid", choices=[*GRIDS, "all"], metavar="GRID",
                        help=f"what to reproduce: {', '.join(GRIDS)}, or all")
    parser.add_argument("--data-dir", default=None,
                        help="dataset folder (e.g. data/ or ../shared/data/cifar10-sample); needed except for --status")
    parser.add_argument("--out-dir", default="reproduce", help="root of runs/ and tables/ (default: reproduce)")
    parser.add_argument("--scale", choices=list(SCALES), default="paper",
                        help="paper: the recipes as published; mini: tiny models, 2 epochs, 512 images, 128 test "
                             "points, no AutoAttack (a CPU miniature)")
    parser.add_argument("--seeds", type=_seeds, default=None, help="e.g. 0,1,2 (default: the grid's; fig6: 0)")
    parser.add_argument("--datasets", type=_csv, default=None, help="only these datasets, e.g. cifar10")
    parser.add_argument("--models", type=_csv, default=None,
                        help="only these rows (shell patterns, e.g. 'dsnet*,wrn34_10'); parents of derived rows stay")
    parser.add_argument("--attacks", type=_csv, default=None,
                        help="evaluate with exactly these attacks, e.g. fgsm,pgd (default: what the grid needs)")
    parser.add_argument("--preset", choices=["paper", "standard"], default="paper",
                        help="attack preset: paper (eps 0.031, the authors' steps) or standard (8/255)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (replaces the scale's)")
    parser.add_argument("--width", type=int, default=None, help="C0 of the DS-Nets (replaces the scale's)")
    parser.add_argument("--n-examples", type=int, default=None, help="test images evaluated (default: the scale's)")
    parser.add_argument("--train-subset", type=int, default=None, help="training images used")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="recipe override for every run, e.g. --set train.amp=off (repeatable)")
    parser.add_argument("--configs-dir", default=None, help="recipe folder (default: ./configs)")
    parser.add_argument("--devices", type=_csv, default=None,
                        help="GPU ids, e.g. 0,1,2,3: one worker process per GPU (default: one run at a time here)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their commands; run nothing")
    parser.add_argument("--aggregate-only", action="store_true", help="only render the tables from finished runs")
    parser.add_argument("--status", action="store_true",
                        help="list every cell with its state (done, running, pending, failed, trained, partial, not "
                             "started) and the counts; run nothing (pass the grid options of the run)")
    add_cluster_arguments(parser)


def run_reproduce(args: argparse.Namespace) -> int:
    """Runs `dsnet reproduce` from parsed arguments; prints the plan (dry run), the status, the submitted jobs
    (`--launcher slurm`) or the table."""
    from dsnet.experiments.cluster import cluster_options
    from dsnet.experiments.grids import GRIDS
    from dsnet.experiments.runner import reproduce

    for name in ("epochs", "width", "n_examples", "train_subset"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.data_dir is None and not args.status:
        raise ConfigError("--data-dir is required (only --status runs without it)")
    cluster = cluster_options(args)
    if cluster is not None and args.devices:
        raise ConfigError("--devices is for --launcher local; a cluster job takes --gpus-per-job GPUs")
    grids = list(GRIDS) if args.grid == "all" else [args.grid]
    failed: dict[str, str] = {}
    for grid in grids:
        grid_options = dict(
            scale=args.scale, seeds=args.seeds, datasets=args.datasets, models=args.models, attacks=args.attacks,
            preset=args.preset, overrides=args.overrides, configs_dir=args.configs_dir, epochs=args.epochs,
            width=args.width, n_examples=args.n_examples, train_subset=args.train_subset)
        if args.status:
            _print_status(grid, args.out_dir, grid_options)
            continue
        if cluster is not None and not (args.dry_run or args.aggregate_only):
            from dsnet.experiments.cluster import describe_submission, submit_grid

            _, submission = submit_grid(grid, out_dir=args.out_dir, data_dir=args.data_dir, options=cluster,
                                        **grid_options)
            print(describe_submission(grid, submission, args.out_dir))
            continue
        result = reproduce(grid, out_dir=args.out_dir, data_dir=args.data_dir, devices=args.devices,
                           dry_run=args.dry_run, aggregate_only=args.aggregate_only, **grid_options)
        if args.dry_run:
            counts: dict[str, int] = {}
            for plan in result.plan:
                counts[plan.state] = counts.get(plan.state, 0) + 1
            print(f"{grid}: {len(result.plan)} cells ({', '.join(f'{v} {k}' for k, v in counts.items())}) "
                  f"under {args.out_dir}/runs")
            for plan in result.plan:
                print(plan.describe(args.data_dir))
            continue
        print(result.markdown)
        print("written: " + ", ".join(str(p) for p in result.tables))
        failed.update(result.failed)
    if failed:
        shown = "; ".join(f"{k}: {v}" for k, v in list(failed.items())[:3])
        raise DsnetError(f"{len(failed)} run(s) failed ({shown}); fix and rerun the same command to continue")
    return 0


def _print_status(grid: str, out_dir: str, grid_options: dict) -> None:
    from dsnet.experiments.runner import reproduce
    from dsnet.experiments.status import cell_statuses, render_status

    plan = reproduce(grid, out_dir=out_dir, data_dir="", dry_run=True, **grid_options).plan
    print(render_status(grid, cell_statuses(plan, out_dir), out_dir))
