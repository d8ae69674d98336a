"""The `dsnet` command: a table from subcommand to library function, plus argument parsing.

Each subcommand is a pair (add its arguments, run it) and calls an ordinary library function, so everything
the command line does can be done from Python with the same arguments. Errors a user can fix are printed as
one line, `dsnet: error: ...`, with exit status 1 (2 for usage errors); `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import errno
import logging
import shlex
import sys
from collections.abc import Callable, Sequence

from dsnet.errors import DsnetError

__all__ = ["main", "COMMANDS"]

Handler = Callable[[argparse.Namespace], int]


def _add_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'dsnet*'")
    parser.add_argument("--num-classes", type=int, default=10, help="classifier size used for the counts")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    parser.add_argument("--tiny", action="store_true", help="also list the tiny test variants")


def _run_models(args: argparse.Namespace) -> int:
    from dsnet.models import list_models, model_info
    from dsnet.models.profile import profile_model

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


def _command_table() -> dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]]:
    """subcommand -> (help, add_arguments, run). Heavy imports happen inside the handlers."""
    from dsnet import commands

    return {
        "models": ("list the registered models with parameter and FLOP counts", _add_models, _run_models),
        **commands.COMMANDS,
    }


COMMANDS = _command_table


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(prog="dsnet", description="Diverse-Structured Networks: robust training and evaluation.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, add_arguments, handler) in _command_table().items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.set_defaults(handler=handler)
    return parser


def _setup_logging(verbose: bool) -> None:
    """One console handler on the current stderr: a handler left by an earlier `main()` call in this process
    (a notebook, a test) may hold a stream that is closed by now, so it is replaced rather than reused."""
    root = logging.getLogger("dsnet")
    for handler in [h for h in root.handlers if getattr(h, "dsnet_console", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.dsnet_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


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
    _setup_logging(args.verbose)
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
