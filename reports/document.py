"""A report as plain blocks (paragraphs, tables, figures, readings) in sections, and the number formats
the blocks' cells use. `reports.markdown` and `reports.html` render the same blocks; `reports.write`
writes both files.

Text may hold `code` and **bold** spans; nothing else is interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Note:
    """A missing input, stated where its section would be."""

    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric_from: int = 1  # columns from this index on are right-aligned


@dataclass(frozen=True)
class Figure:
    """A PNG written under `out_dir/figures/`, and the data behind it under `out_dir/data/`."""

    png: Path
    data: Path
    caption: str


@dataclass(frozen=True)
class Reading:
    """The one-line conclusion of a section."""

    label: str
    text: str


Block = Paragraph | Note | Table | Figure | Reading


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Report:
    title: str
    subtitle: list[str]
    sections: list[Section]


def fmt_fraction(x: float | None, digits: int = 4) -> str:
    """0.85081 → "0.8508"; tiny non-zero shares in scientific notation; None → "—"."""
    if x is None:
        return "—"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def fmt_sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.3e}"


def fmt_count(n: int | None) -> str:
    return "—" if n is None else f"{n:,}"


def fmt_general(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"
