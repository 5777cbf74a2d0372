"""Write a `Report` once as Markdown and once as a self-contained HTML page, atomically."""

from __future__ import annotations

from pathlib import Path

from dynamics.documents import atomic_path
from reports.document import Report
from reports.html import to_html
from reports.markdown import to_markdown


def write_report(report: Report, out_dir: Path, name: str) -> Path:
    """Write `out_dir/<name>.md` and `out_dir/<name>.html` atomically; returns the HTML path."""
    out_dir = Path(out_dir)
    md_path, html_path = out_dir / f"{name}.md", out_dir / f"{name}.html"
    with atomic_path(md_path) as tmp:
        tmp.write_text(to_markdown(report, out_dir), encoding="utf-8")
    with atomic_path(html_path) as tmp:
        tmp.write_text(to_html(report, out_dir), encoding="utf-8")
    return html_path
