"""A `Report` as Markdown: tables as pipe tables, figures as images linked under `figures/`."""

from __future__ import annotations

from pathlib import Path

from reports.document import Block, Figure, Note, Paragraph, Reading, Report


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
    lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in block.header) + " |")
    lines.append("|" + "|".join("---" if i < block.numeric_from else "---:" for i in range(len(block.header))) + "|")
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in block.rows]
    return lines
