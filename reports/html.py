"""A `Report` as ONE self-contained HTML page: inline CSS, figures embedded as base64 PNG, no
script and no network reference (data files are linked relative to the page)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from reports.document import Block, Figure, Note, Paragraph, Reading, Report, Table

_CSS = """
body { font: 15px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1100px; margin: 2em auto; padding: 0 1.5em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { font-size: 1.25em; border-bottom: 1px solid #d0d0d7; padding-bottom: 0.2em; margin-top: 2em; }
.subtitle { color: #555; margin: 0 0 1.5em 0; }
.subtitle div { margin: 0.1em 0; }
code { font: 0.9em ui-monospace, Menlo, Consolas, monospace; background: #f2f2f5; padding: 0 0.25em;
       border-radius: 3px; word-break: break-all; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em 0; font-size: 0.92em; }
th, td { border-bottom: 1px solid #e3e3e8; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #f6f6f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.num { white-space: nowrap; }
caption { caption-side: top; text-align: left; color: #555; font-style: italic; padding-bottom: 0.3em; }
figure { margin: 1em 0 1.5em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ececf0; }
figcaption { color: #555; font-size: 0.9em; }
.note { border-left: 4px solid #d9822b; background: #fdf6ee; padding: 0.5em 0.9em; margin: 0.8em 0; }
.reading { border-left: 4px solid #2b6cb0; background: #eef4fb; padding: 0.5em 0.9em; margin: 1em 0; }
"""


def to_html(report: Report, out_dir: Path) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>{_inline(report.title)}</h1>",
        '<div class="subtitle">' + "".join(f"<div>{_inline(line)}</div>" for line in report.subtitle) + "</div>",
    ]
    for section in report.sections:
        parts.append(f"<h2>{_inline(section.title)}</h2>")
        parts += [_html_block(block, out_dir) for block in section.blocks]
    parts.append("</body></html>")
    return "\n".join(parts)


def _html_block(block: Block, out_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Note):
        return f'<div class="note"><strong>Missing input.</strong> {_inline(block.text)}</div>'
    if isinstance(block, Reading):
        return f'<div class="reading"><strong>{_inline(block.label)}:</strong> {_inline(block.text)}</div>'
    if isinstance(block, Figure):
        encoded = base64.b64encode(block.png.read_bytes()).decode("ascii")
        data = block.data.relative_to(out_dir).as_posix()
        return (f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{encoded}">'
                f'<figcaption>{_inline(block.caption)} Data: <a href="{html.escape(data)}"><code>'
                f"{html.escape(data)}</code></a></figcaption></figure>")
    return _html_table(block)


def _html_table(table: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i >= table.numeric_from else ""

    head = "".join(f"<th{cls(i)}>{_inline(h)}</th>" for i, h in enumerate(table.header))
    body = "".join("<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in table.rows)
    caption = f"<caption>{_inline(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    """Escape, then turn `code` and **bold** spans into tags (code spans are left verbatim)."""
    pieces = _CODE.split(text)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(f"<code>{html.escape(piece)}</code>")
        else:
            out.append(_BOLD.sub(r"<strong>\1</strong>", html.escape(piece)))
    return "".join(out)
