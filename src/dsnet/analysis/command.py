"""`dsnet analyze KIND RUN...`: argument parsing around the analysis functions.

Kinds: `attention` (Fig. 8), `landscape` (Fig. 7a), `gradvar` (Fig. 7b), `lipschitz` (Lemma 3.2). Each writes
`<out-dir>/<kind>.png` and `<out-dir>/<kind>.csv`.
"""

from __future__ import annotations

import argparse

from dsnet.errors import ConfigError

__all__ = ["KINDS", "add_analyze_arguments", "run_analyze"]

KINDS = {
    "attention": "attention weights per module, mean ± std over the given runs (Fig. 8)",
    "landscape": "loss surface along two filter-normalised random directions (Fig. 7a)",
    "gradvar": "gradient variance of the last layer across batches (Fig. 7b)",
    "lipschitz": "local Lipschitz estimate of every atomic block and module by power iteration (Lemma 3.2)",
}


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the arguments of `dsnet analyze`."""
    parser.add_argument("kind", choices=list(KINDS), metavar="KIND",
                        help="; ".join(f"{k}: {v}" for k, v in KINDS.items()))
    parser.add_argument("sources", nargs="+", metavar="RUN",
                        help="run folders (selected.pt, else last.pt), reproduce cell folders, or .pt checkpoints")
    parser.add_argument("--out-dir", required=True, help="where KIND.png and KIND.csv are written")
    parser.add_argument("--data-dir", default=None, help="dataset folder (all kinds but attention)")
    parser.add_argument("--name", default=None, help="file stem (default: KIND)")
    parser.add_argument("--epoch", type=int, default=None, help="attention: read this epoch from metrics.jsonl")
    parser.add_argument("--loss", choices=["clean", "adversarial", "objective"], default="adversarial",
                        help="landscape/gradvar: clean CE, CE on PGD examples, or (gradvar) the run's objective")
    parser.add_argument("--grid", type=int, default=21, help="landscape: points per axis (default 21)")
    parser.add_argument("--span", type=float, default=1.0, help="landscape: half-width of the lattice (default 1)")
    parser.add_argument("--n-examples", type=int, default=None,
                        help="test images (landscape default 256, lipschitz default 32)")
    parser.add_argument("--batch-size", type=int, default=128, help="landscape/gradvar: images per batch")
    parser.add_argument("--n-batches", type=int, default=10, help="gradvar: batches compared (>= 2)")
    parser.add_argument("--all-epochs", action="store_true", help="gradvar: every epoch-NNNN.pt of each run")
    parser.add_argument("--eps", type=float, default=None, help="PGD radius (default: the run's training eps)")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps of the adversarial loss")
    parser.add_argument("--iters", type=int, default=20, help="lipschitz: power iterations")
    parser.add_argument("--seed", type=int, default=0, help="seed of directions, images and attacks")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")


def run_analyze(args: argparse.Namespace) -> int:
    """Runs one analysis from parsed arguments and prints where its files went."""
    from dsnet.analysis.common import check_outputs

    name = args.name or args.kind
    if args.kind != "attention" and args.data_dir is None:
        raise ConfigError(f"dsnet analyze {args.kind} needs --data-dir (the images the model is probed with)")
    check_outputs(args.out_dir, name)  # before any model is loaded
    if args.kind == "attention":
        from dsnet.analysis.attention import analyze_attention

        result = analyze_attention(args.sources, args.out_dir, epoch=args.epoch, name=name)
    elif args.kind == "landscape":
        from dsnet.analysis.landscape import analyze_landscape

        if args.loss == "objective":
            raise ConfigError("dsnet analyze landscape takes --loss clean or adversarial")
        result = analyze_landscape(args.sources, args.data_dir, args.out_dir, grid=args.grid, span=args.span,
                                   loss=args.loss, n_examples=args.n_examples or 256, batch_size=args.batch_size,
                                   eps=args.eps, steps=args.steps, seed=args.seed, device=args.device, name=name)
    elif args.kind == "gradvar":
        from dsnet.analysis.gradient_variance import analyze_gradient_variance

        result = analyze_gradient_variance(args.sources, args.data_dir, args.out_dir, loss=args.loss,
                                           n_batches=args.n_batches, batch_size=args.batch_size, eps=args.eps,
                                           steps=args.steps, seed=args.seed, all_epochs=args.all_epochs,
                                           device=args.device, name=name)
    else:
        from dsnet.analysis.lipschitz import analyze_lipschitz

        result = analyze_lipschitz(args.sources, args.data_dir, args.out_dir, n_examples=args.n_examples or 32,
                                   iters=args.iters, seed=args.seed, device=args.device, name=name)
    print(f"wrote {result.png} and {result.csv}")
    return 0
