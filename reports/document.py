"""A report as plain blocks (paragraphs, tables, figures, readings) in sections, written once as
Markdown and once as a self-contained HTML page from the same blocks.

Text may hold `code` and **bold** spans; nothing else is interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dynamics.documents import atomic_path


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


def write_report(report: Report, out_dir: Path, name: str) -> Path:
    """Write `out_dir/<name>.md` and `out_dir/<name>.html` atomically; returns the HTML path."""
    from reports.html import to_html

    out_dir = Path(out_dir)
    md_path, html_path = out_dir / f"{name}.md", out_dir / f"{name}.html"
    with atomic_path(md_path) as tmp:
        tmp.write_text(to_markdown(report, out_dir), encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(to_html(report, out_dir), encoding="utf-8")
    return html_path


def to_markdown(report: Report, out_dir: Path) -> str:
    lines = [f"# {report.title}", ""]
    lines += [f"{line}  " for line in report.subtitle] + [""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            lines += _markdown_block(block, out_dir) + [""]
    return "\n".join(lines)


def _markdown_block(block: Block, out_dir: Path) -> list[str]:
    if isinstance(block, Paragraph):
        return [block.text]
    if isinstance(block, Note):
        return [f"> **Missing input.** {block.text}"]
    if isinstance(block, Reading):
        return [f"**{block.label}:** {block.text}"]
    if isinstance(block, Figure):
        png, data = block.png.relative_to(out_dir).as_posix(), block.data.relative_to(out_dir).as_posix()
        return [f"![{block.caption}]({png})", "", f"*{block.caption}* Data: [`{data}`]({data})"]
    lines = [f"*{block.caption}*", ""] if block.caption else []
    lines.append("| " + " | ".join(block.header) + " |")
    lines.append("|" + "|".join("---" if i < block.numeric_from else "---:" for i in range(len(block.header))) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows]
    return lines


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
