"""Sparsity report: how much of the model changed bit for bit, within tolerances, where (layer ×
module kind), by how many ULPs, with what row/column structure, and which tensors moved most.

>>> from reports.sparsity import render_sparsity_report
>>> render_sparsity_report(load_diff_doc("diff.json"), Path("report/"))   # → report/sparsity.html
"""

from __future__ import annotations

from pathlib import Path

from dynamics.naming import MODULE_KINDS
from dynamics.result import DiffResult
from reports import figures
from reports.document import Block, Paragraph, Report, Section, Table, fmt_count, fmt_fraction, fmt_sci, write_report
from reports.load import load_diff_doc, pooled_metrics
from reports.sections import headline_table, hidden_blocks, subtitle, ulp_blocks, unpaired_blocks

NAME = "sparsity"
RELATIVE_NORM_LABEL = r"$\|\Delta\|_F\,/\,\|W_0\|_F$"
TOP_TENSORS = 10


def render_sparsity_report(doc: dict | DiffResult | str | Path, out_dir: Path) -> Path:
    """Write `out_dir/sparsity.md`, `out_dir/sparsity.html` (self-contained), PNG figures in
    `out_dir/figures/sparsity-*.png` and their data in `out_dir/data/sparsity-*.csv`.

    Args:
        doc: a `dynamics.diff/1` document (dict), a `DiffResult`, or the path of its JSON file.
        out_dir: folder to write into (created if missing; files are replaced atomically).
    Returns:
        The path of the HTML page.
    """
    doc = load_diff_doc(doc)
    out_dir = Path(out_dir)
    report = Report(
        title="Update sparsity report",
        subtitle=subtitle(doc),
        sections=[
            Section("Model level", [headline_table(doc), *unpaired_blocks(doc), *_tolerance_blocks(doc, out_dir)]),
            Section("Per layer", _layer_blocks(doc, out_dir)),
            Section("Layer × module kind", _grid_blocks(doc, out_dir)),
            Section("ULP distance of moved weights", ulp_blocks(doc, out_dir, f"{NAME}-ulp-histogram")),
            Section("Row and column structure", _structure_blocks(doc, out_dir)),
            Section("Hidden by 16-bit storage (float32 pairs)", hidden_blocks(doc, out_dir, f"{NAME}-hidden")),
            Section(f"Most and least changed tensors (top {TOP_TENSORS})", _extreme_tensor_blocks(doc)),
        ],
    )
    return write_report(report, out_dir, NAME)


def _tolerance_blocks(doc: dict, out_dir: Path) -> list[Block]:
    s, constants = doc["summary"], doc["constants"]
    abs_values = list(s["abs_tolerance_sparsity"].values())
    rel_values = list(s["rel_tolerance_sparsity"].values())
    figure = figures.emit(
        out_dir, f"{NAME}-tolerance",
        figures.tolerance_curves(constants["abs_tolerances"], abs_values, constants["rel_tolerances"], rel_values,
                                 s["bitwise_sparsity"]),
        "Share of elements within a tolerance τ of the base value (blue) against bitwise sparsity (red).",
        ["grid", "tau", "tolerance_sparsity"],
        [["abs", t, v] for t, v in zip(constants["abs_tolerances"], abs_values)]
        + [["rel", t, v] for t, v in zip(constants["rel_tolerances"], rel_values)])
    table = Table(["tolerance grid", *[f"τ = {t:g}" for t in constants["abs_tolerances"]]],
                  [["absolute: |Δ| ≤ τ", *[fmt_fraction(v) for v in abs_values]]],
                  caption="Tolerance sparsity, absolute (1e-5 is the common published choice)")
    rel_table = Table(["tolerance grid", *[f"τ = {t:g}" for t in constants["rel_tolerances"]]],
                      [["relative: |Δ| ≤ τ·max(|W0|, 1e-12)", *[fmt_fraction(v) for v in rel_values]]],
                      caption="Tolerance sparsity, relative")
    return [table, rel_table, figure]


def _layer_blocks(doc: dict, out_dir: Path) -> list[Block]:
    by_layer = doc["by_layer"]
    if not by_layer:
        return [Paragraph("No tensor sits inside a numbered transformer block (names without `layers.N.`).")]
    layers = list(by_layer)
    values = [by_layer[layer]["bitwise_sparsity"] for layer in layers]
    figure = figures.emit(
        out_dir, f"{NAME}-per-layer",
        figures.bars(layers, values, "transformer block (layer index)", "bitwise sparsity (share bit-identical)",
                     "bitwise sparsity per layer", unit_interval=True),
        "Share of bit-identical elements in each transformer block (all its tensors pooled). Tensors outside "
        "blocks (embeddings, final norm, LM head) are in the module-kind tables.",
        ["layer", "bitwise_sparsity", "changed", "numel", "relative_update_norm"],
        [[layer, by_layer[layer]["bitwise_sparsity"], by_layer[layer]["changed"], by_layer[layer]["numel"],
          by_layer[layer]["relative_update_norm"]] for layer in layers])
    return [figure]


def layer_kind_grid(doc: dict, metric: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Rows = layers, columns = module kinds present inside blocks, cell = `metric` of the pooled
    counters of the tensors in that (layer, kind) (e.g. a weight and its bias); None if empty."""
    rows = [t for t in doc["tensors"] if t["layer"] is not None]
    layers = sorted({t["layer"] for t in rows})
    kinds = [k for k in MODULE_KINDS if any(t["module_kind"] == k for t in rows)]
    grid = []
    for layer in layers:
        line = []
        for kind in kinds:
            cell = [t for t in rows if t["layer"] == layer and t["module_kind"] == kind]
            line.append(pooled_metrics(cell)[metric] if cell else None)
        grid.append(line)
    return [str(layer) for layer in layers], kinds, grid


def _grid_blocks(doc: dict, out_dir: Path) -> list[Block]:
    layers, kinds, sparsity = layer_kind_grid(doc, "bitwise_sparsity")
    if not layers:
        return [Paragraph("No tensor sits inside a numbered transformer block: there is no layer × kind grid.")]
    _, _, norms = layer_kind_grid(doc, "relative_update_norm")
    blocks: list[Block] = []
    for stem, grid, label, kwargs, caption in (
            ("bitwise-sparsity", sparsity, "bitwise sparsity (share bit-identical)",
             {"unit_interval": True},
             "Bitwise sparsity per layer and module kind (grey: no such tensor)."),
            ("relative-update-norm", norms, RELATIVE_NORM_LABEL, {"log": None},
             ("Relative update norm ‖Δ‖_F / ‖W0‖_F per layer and module kind, log colour scale when the "
              "values span a decade (grey: no such tensor, or Δ = 0)."))):
        title = label.split(" (")[0] + " per layer and module kind"
        fig = figures.heatmap(layers, kinds, grid, "module kind", "layer", label, title, **kwargs)
        blocks.append(figures.emit(out_dir, f"{NAME}-grid-{stem}", fig, caption, ["layer", *kinds],
                                   [[layer, *line] for layer, line in zip(layers, grid)]))
    return blocks


def _structure_blocks(doc: dict, out_dir: Path) -> list[Block]:
    kinds = [k for k, row in doc["by_module_kind"].items() if row["unchanged_row_fraction"] is not None]
    if not kinds:
        return [Paragraph("No 2-D tensors: row and column structure does not apply.")]
    by_kind = doc["by_module_kind"]
    rows_f = [by_kind[k]["unchanged_row_fraction"] for k in kinds]
    cols_f = [by_kind[k]["unchanged_col_fraction"] for k in kinds]
    figure = figures.emit(
        out_dir, f"{NAME}-row-col",
        figures.grouped_kind_bars(kinds, {"unchanged rows": rows_f, "unchanged columns": cols_f},
                                  "share of rows / columns with no changed element",
                                  "entirely unchanged rows and columns", unit_interval=True),
        "Share of rows (plain) and columns (hatched) of 2-D tensors in which no element changed, per module kind. "
        "Rows are output features, columns input features (PyTorch `out × in` layout).",
        ["module_kind", "unchanged_row_fraction", "unchanged_col_fraction", "rows", "cols"],
        [[k, r, c, by_kind[k]["rows"], by_kind[k]["cols"]] for k, r, c in zip(kinds, rows_f, cols_f)])
    table = Table(["module kind", "rows", "unchanged rows", "columns", "unchanged columns"],
                  [[k, fmt_count(by_kind[k]["rows"]), fmt_fraction(r), fmt_count(by_kind[k]["cols"]), fmt_fraction(c)]
                   for k, r, c in zip(kinds, rows_f, cols_f)])
    return [figure, table]


def _extreme_tensor_blocks(doc: dict) -> list[Block]:
    rows = [t for t in doc["tensors"] if t["numel"] > 0]
    if not rows:
        return [Paragraph("No non-empty tensor was compared.")]

    def norm(t: dict) -> float:
        return t["relative_update_norm"] if t["relative_update_norm"] is not None else 0.0

    most = sorted(rows, key=lambda t: (t["bitwise_sparsity"], -norm(t)))[:TOP_TENSORS]
    least = sorted(rows, key=lambda t: (-t["bitwise_sparsity"], norm(t)))[:TOP_TENSORS]
    header = ["tensor", "kind", "shape", "dtype", "bitwise sparsity", "changed", "‖Δ‖/‖W0‖", "1-ULP share"]

    def line(t: dict) -> list[str]:
        return [f"`{t['name']}`", t["module_kind"], "×".join(map(str, t["shape"])), t["dtype"],
                fmt_fraction(t["bitwise_sparsity"]), fmt_count(t["changed"]), fmt_sci(t["relative_update_norm"]),
                fmt_fraction(t["one_ulp_fraction"])]

    return [
        Paragraph("Ordered by bitwise sparsity, ties broken by relative update norm."),
        Table(header, [line(t) for t in most], caption="Most changed (lowest bitwise sparsity)", numeric_from=4),
        Table(header, [line(t) for t in least], caption="Least changed (highest bitwise sparsity)", numeric_from=4),
    ]
