"""Human output shared by commands: percentages and architecture strings that are never folded."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["pct", "print_architectures"]


def pct(fraction: float | None) -> str:
    """An accuracy (a fraction, as the library and CSV/JSON keep it) in percent with 2 decimals: 0.769 -> 76.90."""
    return "–" if fraction is None or fraction != fraction else f"{100 * fraction:.2f}"


def print_architectures(console: Any, rows: Iterable[tuple[object, str]]) -> None:
    """``trial  architecture`` one per line after a table: never folded or cut, whatever the width or pipe, since
    the architecture string is what users copy into ``--arch``."""
    rows = list(rows)
    if not rows:
        return
    width = max(len(str(n)) for n, _ in rows)
    console.print("architectures (trial, --arch string):", highlight=False)
    for n, arch in rows:
        console.print(f"  {str(n):>{width}}  {arch}", soft_wrap=True, markup=False, highlight=False, crop=False)
