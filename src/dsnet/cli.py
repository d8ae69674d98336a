"""The `dsnet` command: a table from subcommand to library function, plus argument parsing.

Each subcommand is a pair (add its arguments, run it) and calls an ordinary library function, so everything
the command line does can be done from Python with the same arguments. Errors a user can fix are printed as
one line, `dsnet: error: ...`, with exit status 1 (2 for usage errors); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dsnet.errors import DsnetError

__all__ = ["main", "COMMANDS"]

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help, and the module with the functions that add its arguments and run it.

    The module is imported when the parser is built; command modules import only argparse-level code at the top
    (the library they call is imported inside `run`), so `dsnet -h` does not load torch.
    """

    help: str
    module: str
    add_arguments: str = "add_arguments"
    run: str = "run"

    def functions(self) -> tuple[Callable[[argparse.ArgumentParser], None], Handler]:
        module = importlib.import_module(self.module)
        return getattr(module, self.add_arguments), getattr(module, self.run)


COMMANDS: dict[str, Command] = {
    "models": Command("list the registered models with parameter and FLOP counts", "dsnet.models.command"),
    "download": Command("download and verify a dataset (MD5-checked, resumable)", "dsnet.data.command"),
    "train": Command("train a model with a recipe (adversarially, or not)", "dsnet.training.command"),
    "eval": Command("evaluate a checkpoint: clean, FGSM, PGD-20, CW-inf-30, AutoAttack, sanity checks",
                    "dsnet.evaluation.command", "add_eval_arguments", "run_eval"),
    "export": Command("export a checkpoint as a RobustBench-style or Hugging Face Hub model (+ claim, model card)",
                      "dsnet.evaluation.command", "add_export_arguments", "run_export"),
    "compare": Command("put evaluations side by side (same threat model, ε and points): Markdown, LaTeX, security "
                       "curves", "dsnet.evaluation.compare"),
    "reproduce": Command("run a paper table or figure (grid of models x styles x seeds), skip finished runs, "
                         "aggregate", "dsnet.experiments.command", "add_reproduce_arguments", "run_reproduce"),
    "analyze": Command("plot what a trained model learned: attention weights, loss landscape, gradient variance, "
                       "Lipschitz", "dsnet.analysis.command", "add_analyze_arguments", "run_analyze"),
}
"""The command table: subcommand -> where its arguments and its run function live."""


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(prog="dsnet", description="Diverse-Structured Networks: robust training and evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        add_arguments, handler = command.functions()
        parser_for = sub.add_parser(name, help=command.help, description=command.help)
        add_arguments(parser_for)
        parser_for.set_defaults(handler=handler)
    return parser


def _setup_logging(verbose: bool) -> logging.Handler:
    """One console handler on the current stderr, for this call of `main()` (it removes it when it returns: a
    handler left behind in a notebook or a test would hold a stream that is closed by the next call)."""
    root = logging.getLogger("dsnet")
    for handler in [h for h in root.handlers if getattr(h, "dsnet_console", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.dsnet_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler


def _continue_command(argv: Sequence[str], command: str) -> str:
    """What to run after an interruption: the same command (with --resume for a training run)."""
    words = ["dsnet", *argv]
    if command == "train" and "--resume" not in words:
        words.append("--resume")
    return shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the `dsnet` command line; returns the exit status (0 ok, 1 runtime error, 2 usage error)."""
    parser = build_parser()
    argv = [str(a) for a in (sys.argv[1:] if argv is None else argv)]
    args = parser.parse_args(argv)
    console = _setup_logging(args.verbose)
    try:
        return _run(args, argv)
    finally:
        logging.getLogger("dsnet").removeHandler(console)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    """The command of `args`, with every error turned into one line and an exit status."""
    try:
        return int(args.handler(args) or 0)
    except DsnetError as error:
        if args.debug:
            raise
        message = " ".join(str(error).splitlines())  # one line, even when a user's key or path holds a newline
        print(f"dsnet: error: {message}", file=sys.stderr)
        return 1
    except OSError as error:
        if args.debug or error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk can strike any write (metrics, logs, reports); checkpoints already say this themselves.
        print(f"dsnet: error: {error.strerror} while writing {error.filename or 'a file'}; free disk space and "
              "rerun (a training run continues where it stopped with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command in ("train", "eval", "reproduce"):
            print(f"dsnet: interrupted; nothing finished is lost, continue with: "
                  f"{_continue_command(argv, args.command)}", file=sys.stderr)
        else:
            print("dsnet: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
