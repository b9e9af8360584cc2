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

__all__ = ["ArgumentParser", "build_parser", "is_out_of_memory", "main"]

# Command modules under qnas/commands, in the order `qnas --help` lists them.
_COMMANDS = ("space", "data", "score", "search", "report", "predictor", "train", "finetune")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (``qnas: error: ...``) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"qnas: error: {_one_line(message)} (see `{self.prog} --help`)\n")
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
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse would name `qnas --help`; the subcommand's help is the one that lists its arguments
        _command_parser(parser, sys.argv[1:] if argv is None else list(argv)).error(
            f"unrecognized arguments: {' '.join(extra)}")
    # SIGTERM (kill, a scheduler's stop) runs the same cleanup as Ctrl-C instead of ending the process mid-write.
    own_sigterm = threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    previous = signal.signal(signal.SIGTERM, raise_terminated) if own_sigterm else None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(warnings.showwarning)
            result = args.func(args)
    except QnasError as exc:
        sys.stderr.write(f"qnas: error: {_one_line(str(exc))}\n")
        return 2
    except Terminated:
        sys.stderr.write("qnas: terminated\n")
        return 143
    except KeyboardInterrupt:
        sys.stderr.write("qnas: interrupted\n")
        return 130
    except Exception as exc:
        # running out of memory is a resource failure, not bad input: one line, exit 1, no traceback
        if not is_out_of_memory(exc):
            raise
        sys.stderr.write(f"qnas: error: out of memory: {_short_oom_message(exc)}\n")
        return 1
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, previous)
    return int(result or 0)


def _one_line(text: str) -> str:
    """``text`` on one line: a newline in a user's path or value is shown escaped, as ``\\n``."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)command parser that ``argv`` names, e.g. the one of ``qnas space info``."""
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subs and token in subs[0].choices:
            parser = subs[0].choices[token]
    return parser


# How torch words allocation failures raised as a plain RuntimeError (CPU allocator, older CUDA builds).
_OOM_PHRASES = ("can't allocate memory", "out of memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: torch's OutOfMemoryError (any device), a RuntimeError from
    its allocators, or Python's MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")  # never imported here: no torch loaded, no torch error
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    return isinstance(exc, RuntimeError) and any(p in str(exc).lower() for p in _OOM_PHRASES)


def _short_oom_message(exc: BaseException, limit: int = 160) -> str:
    """The first line of the allocator's message, cut after the sentence that says how much it wanted."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return "the allocation failed (a smaller network, batch or image count needs less)"
    text = lines[0]
    # torch's messages continue with allocator statistics and tuning advice after "Tried to allocate N"
    sentences = text.split(". ")
    short = sentences[0]
    for more in sentences[1:]:
        if len(short) + 2 + len(more) > limit or "allocate" in short.lower():
            break
        short += ". " + more
    short = short.rstrip(".")
    return short if len(short) <= limit else short[: limit - 3] + "..."


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
