"""What every benchmark's command line shares: argument types that refuse a bad number or path before any
work starts, and one line on stderr with exit code 2 instead of a traceback (as `qnas` itself does).

    ap = ArgumentParser(description=__doc__)
    ap.add_argument("--archs", type=positive_int, default=12)
    ap.add_argument("--json", type=new_file, default=None)
    if __name__ == "__main__":
        raise SystemExit(run(main))
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from qnas.errors import QnasError


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``<script>: error: ...``, no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated non-negative integers, e.g. seeds: ``0,1,2``."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("needs at least one integer")
    return [non_negative_int(t) for t in items]


def existing_path(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file or directory: {text}")
    return path


def new_file(text: str) -> Path:
    """An output file that is not there yet: a benchmark's results are never silently replaced."""
    path = Path(text)
    if path.exists():
        raise argparse.ArgumentTypeError(f"{text} exists: not overwritten (move it away or pick another path)")
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no directory {path.parent} to write {path.name} in")
    return path


def write_new(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` only if it still does not exist (``new_file`` checked it before the run)."""
    try:
        with path.open("x") as f:
            f.write(text)
    except FileExistsError:
        raise QnasError(f"{path} appeared during the run: not overwritten (its results were not written)") from None


def run(main: Callable[[], int | None]) -> int:
    """main's exit code; a QnasError or a missing file is one line on stderr and exit code 2."""
    try:
        return main() or 0
    except (QnasError, FileNotFoundError, NotADirectoryError) as exc:
        print(f"{Path(sys.argv[0]).name}: error: {exc}", file=sys.stderr)
        return 2
