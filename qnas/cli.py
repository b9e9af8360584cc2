"""The `qnas` command line: a thin layer that parses arguments and calls the library.

Each command group lives in ``qnas/commands/<name>.py`` and exposes ``add_parser(subparsers)``;
handlers raise :class:`qnas.QnasError` for bad input, which becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from qnas import __version__
from qnas.errors import QnasError, QnasWarning, Terminated, raise_terminated

__all__ = ["ArgumentParser", "build_parser", "main"]

# Command modules under qnas/commands, in the order `qnas --help` lists them.
_COMMANDS = ("space", "data", "score", "search", "report", "predictor", "train", "finetune")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``qnas: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"qnas: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="qnas",
        description="Quantization-aware NAS for edge CNNs: score candidates with GHN-predicted "
        "parameters under fake quantization, search with Optuna, finetune and export the winners.",
    )
    parser.add_argument("--version", action="version", version=f"qnas {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(f"qnas.commands.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # SIGTERM (kill, a scheduler's stop) runs the same cleanup as Ctrl-C instead of ending the process mid-write.
    own_sigterm = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    previous = signal.signal(signal.SIGTERM, raise_terminated) if own_sigterm else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(warnings.showwarning)
            result = args.func(args)
    except QnasError as exc:
        sys.stderr.write(f"qnas: error: {exc}\n")
        return 2
    except Terminated:
        sys.stderr.write("qnas: terminated\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("qnas: interrupted\n")
        return 130
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


def _one_line_warning(previous: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing qnas's warnings as ``qnas: warning: ...`` on one line of stderr and
    passing the others (a library's) to ``previous``."""

    def show(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        if issubclass(category, QnasWarning):
            sys.stderr.write(f"qnas: warning: {' '.join(str(message).split())}\n")
        else:
            previous(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":
    raise SystemExit(main())
