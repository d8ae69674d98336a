"""`dsnet eval` and `dsnet export`: argument parsing around `evaluate()` and `export_model()`.

`dsnet eval`'s options are the fields of `dsnet.evaluation.config.EvalConfig`, declared there once. Heavy imports
happen inside the handlers, so `dsnet -h` stays fast.
"""

from __future__ import annotations

import argparse
import os
import re

from dsnet.evaluation.config import EvalConfig, parse_channels
from dsnet.options import add_arguments, namespace_values

__all__ = ["add_eval_arguments", "run_eval", "add_export_arguments", "run_export"]


def _accept_negative_numbers(parser: argparse.ArgumentParser) -> None:
    """Lets a value such as `-0.5,-0.5,-0.5` follow an option: argparse (before Python 3.13) takes anything that starts
    with '-' and is not a plain number for an option name. No option of ours starts with a digit, so this is safe."""
    parser._negative_number_matcher = re.compile(r"^-\.?\d")  # type: ignore[attr-defined]


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `dsnet eval`: one per field of `EvalConfig`."""
    _accept_negative_numbers(parser)
    add_arguments(parser, EvalConfig)


def run_eval(args: argparse.Namespace) -> int:
    """Runs `dsnet eval`; prints the summary on rank 0."""
    import logging

    from dsnet.errors import ConfigError
    from dsnet.evaluation.evaluator import evaluate

    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger("dsnet").setLevel(logging.ERROR)  # rank 0 reports; errors still show
    if args.checkpoint is None and args.model_factory is None:
        raise ConfigError("pass --checkpoint (a checkpoint of ours or a state dict), or --model-factory for a model "
                          "of your own")
    report = evaluate(config=EvalConfig(**namespace_values(args, EvalConfig)))
    if int(os.environ.get("RANK", "0")) == 0:
        for line in report.suite.summary(report):  # type: ignore[union-attr]
            print(line)
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
    parser.add_argument("--normalize", nargs=2, type=parse_channels, default=None, metavar=("MEAN", "STD"),
                        help="the input normalisation the network expects; the export applies it itself")
    parser.add_argument("--weights", choices=("auto", "ema", "raw"), default=None,
                        help="of a checkpoint trained with train.ema_decay (default: the report's, else auto)")
    parser.add_argument("--dataset", default=None, help="dataset of a bare state dict or a factory")
    parser.add_argument("--data-dir", default=None,
                        help="where the report's points are (default: the data folder the report names)")
    parser.add_argument("--device", default="auto", help="device of the check on the report's points (default auto)")
    parser.add_argument("--format", choices=("pt", "safetensors"), default=None,
                        help="pt: NAME.pt + NAME.architecture.json (RobustBench's); safetensors: model.safetensors + "
                             "config.json (the Hugging Face Hub's); default safetensors with --hub-card, else pt")
    parser.add_argument("--hub-card", nargs="?", const=True, default=False, metavar="ORG/REPO",
                        help="also write the Hub's model card README.md (results from --report), so the folder "
                             "uploads as it is; ORG/REPO names the repository in its loading commands")


def run_export(args: argparse.Namespace) -> int:
    """Runs `dsnet export` and lists the files written."""
    from dsnet.evaluation.export import export_model

    result = export_model(args.checkpoint, args.out_dir, report=args.report, name=args.name, model_name=args.model,
                          dataset=args.dataset, model_factory=args.model_factory, model_kwargs=args.model_kwargs,
                          normalize=tuple(args.normalize) if args.normalize else None, weights=args.weights,
                          data_dir=args.data_dir, device=args.device, format=args.format, hub_card=args.hub_card)
    for path in (result.weights, result.architecture, result.factory, result.claim, result.card):
        if path is not None:
            print(path)
    if result.verified is not None:
        print(f"verified: the export classifies {result.verified['agree']} of the report's {result.verified['points']} "
              f"points as the report does ({result.verified['near_ties']} near-ties)")
    return 0
