"""Sparsity report: how much of the model changed bit for bit, within tolerances, where (layer ×
module kind), by how many ULPs, with what row/column structure, and which tensors moved most.

>>> from reports.sparsity import render_sparsity_report
>>> render_sparsity_report(DiffResult.read_json("diff.json"), Path("report/"))   # → report/sparsity.html
"""

from __future__ import annotations

from pathlib import Path

from dynamics.element_stats import ABS_TOLERANCES, REL_TOLERANCES
from dynamics.metrics import HEADLINE_ABS_TOLERANCE, derived_metrics
from dynamics.naming import MODULE_KINDS
from dynamics.result import DiffResult, TensorRecord, aggregate
from reports import figures
from reports.document import Block, Paragraph, Report, Section, Table, fmt_count, fmt_fraction, fmt_sci
from reports.sections import (
    caution_blocks,
    headline_table,
    hidden_blocks,
    registered_element_table,
    subtitle,
    ulp_blocks,
    unpaired_blocks,
)
from reports.write import write_report

NAME = "sparsity"
RELATIVE_NORM_LABEL = r"$\|\Delta\|_F\,/\,\|W_0\|_F$"
TOP_TENSORS = 10


def render_sparsity_report(result: DiffResult, out_dir: Path) -> Path:
    """Write `out_dir/sparsity.md`, `out_dir/sparsity.html` (self-contained), PNG figures in
    `out_dir/figures/sparsity-*.png` and their data in `out_dir/data/sparsity-*.csv`.

    Args:
        result: the diff (`dynamics.diff`, or `DiffResult.read_json` of the file `dynamics diff --json` wrote).
        out_dir: folder to write into (created if missing; files are replaced atomically).
    Returns:
        The path of the HTML page.
    """
    out_dir = Path(out_dir)
    report = Report(
        title="Update sparsity report",
        subtitle=subtitle(result),
        sections=[
            Section("Model level", [*caution_blocks(result), headline_table(result), *unpaired_blocks(result),
                                    *_tolerance_blocks(result, out_dir)]),
            Section("Registered headline metrics", [registered_element_table(result)]),
            Section("Per layer", _layer_blocks(result, out_dir)),
            Section("Layer × module kind", _grid_blocks(result, out_dir)),
            Section("ULP distance of moved weights", ulp_blocks(result, out_dir, f"{NAME}-ulp-histogram")),
            Section("Row and column structure", _structure_blocks(result, out_dir)),
            Section("Hidden by 16-bit storage (float32 pairs)", hidden_blocks(result, out_dir, f"{NAME}-hidden")),
            Section(f"Most and least changed tensors (top {TOP_TENSORS})", _extreme_tensor_blocks(result)),
        ],
    )
    return write_report(report, out_dir, NAME)


def _tolerance_blocks(result: DiffResult, out_dir: Path) -> list[Block]:
    m = derived_metrics(result.summary())
    abs_values = list(m["abs_tolerance_sparsity"].values())
    rel_values = list(m["rel_tolerance_sparsity"].values())
    figure = figures.emit(
        out_dir, f"{NAME}-tolerance",
        figures.tolerance_curves(ABS_TOLERANCES, abs_values, REL_TOLERANCES, rel_values, m["bitwise_sparsity"]),
        "Share of elements within a tolerance τ of the base value (blue) against bitwise sparsity (red).",
        ["grid", "tau", "tolerance_sparsity"],
        [["abs", t, v] for t, v in zip(ABS_TOLERANCES, abs_values)]
        + [["rel", t, v] for t, v in zip(REL_TOLERANCES, rel_values)])
    table = Table(["tolerance grid", *[f"τ = {t:g}" for t in ABS_TOLERANCES]],
                  [["absolute: |Δ| ≤ τ", *[fmt_fraction(v) for v in abs_values]]],
                  caption=f"Tolerance sparsity, absolute ({HEADLINE_ABS_TOLERANCE:g} is the common published choice)")
    rel_table = Table(["tolerance grid", *[f"τ = {t:g}" for t in REL_TOLERANCES]],
                      [["relative: |Δ| ≤ τ·max(|W0|, 1e-12)", *[fmt_fraction(v) for v in rel_values]]],
                      caption="Tolerance sparsity, relative")
    return [table, rel_table, figure]


def _layer_blocks(result: DiffResult, out_dir: Path) -> list[Block]:
    by_layer = result.by_layer()
    if not by_layer:
        return [Paragraph("No tensor sits inside a numbered transformer block (names without `layers.N.`).")]
    layers = [str(layer) for layer in by_layer]
    metrics = [derived_metrics(stats) for stats in by_layer.values()]
    values = [m["bitwise_sparsity"] for m in metrics]
    figure = figures.emit(
        out_dir, f"{NAME}-per-layer",
        figures.bars(layers, values, "transformer block (layer index)", "bitwise sparsity (share bit-identical)",
                     "bitwise sparsity per layer", unit_interval=True),
        "Share of bit-identical elements in each transformer block (all its tensors pooled). Tensors outside "
        "blocks (embeddings, final norm, LM head) are in the module-kind tables.",
        ["layer", "bitwise_sparsity", "changed", "numel", "relative_update_norm"],
        [[layer, m["bitwise_sparsity"], stats.changed, stats.numel, m["relative_update_norm"]]
         for layer, stats, m in zip(layers, by_layer.values(), metrics)])
    return [figure]


def layer_kind_grid(result: DiffResult, metric: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """Rows = layers, columns = module kinds present inside blocks, cell = the registered element
    `metric` of the summed counters of the tensors in that (layer, kind) (e.g. a weight and its bias);
    None if empty."""
    cells: dict[tuple[int, str], list[TensorRecord]] = {}
    for r in result.records:
        if r.layer is not None:
            cells.setdefault((r.layer, r.module_kind), []).append(r)
    layers = sorted({layer for layer, _ in cells})
    kinds = [k for k in MODULE_KINDS if any(kind == k for _, kind in cells)]
    grid = [[derived_metrics(aggregate(cells[layer, kind]))[metric] if (layer, kind) in cells else None
             for kind in kinds] for layer in layers]
    return [str(layer) for layer in layers], kinds, grid


def _grid_blocks(result: DiffResult, out_dir: Path) -> list[Block]:
    layers, kinds, sparsity = layer_kind_grid(result, "bitwise_sparsity")
    if not layers:
        return [Paragraph("No tensor sits inside a numbered transformer block: there is no layer × kind grid.")]
    _, _, norms = layer_kind_grid(result, "relative_update_norm")
    blocks: list[Block] = []
    for stem, grid, label, kwargs, caption in (
            ("bitwise-sparsity", sparsity, "bitwise sparsity (share bit-identical)",
             {"unit_interval": True},
             "Bitwise sparsity per layer and module kind (grey: no such tensor)."),
            ("relative-update-norm", norms, RELATIVE_NORM_LABEL, {"log": None, "zero_is_grey": True},
             ("Relative update norm ‖Δ‖_F / ‖W0‖_F per layer and module kind, log colour scale when the "
              "values span a decade (grey: no such tensor, or Δ = 0)."))):
        title = label.split(" (")[0] + " per layer and module kind"
        fig = figures.heatmap(layers, kinds, grid, "module kind", "layer", label, title, **kwargs)
        blocks.append(figures.emit(out_dir, f"{NAME}-grid-{stem}", fig, caption, ["layer", *kinds],
                                   [[layer, *line] for layer, line in zip(layers, grid)]))
    return blocks


def _structure_blocks(result: DiffResult, out_dir: Path) -> list[Block]:
    by_kind = {k: (stats, derived_metrics(stats)) for k, stats in result.by_module_kind().items()}
    by_kind = {k: (stats, m) for k, (stats, m) in by_kind.items() if m["unchanged_row_fraction"] is not None}
    if not by_kind:
        return [Paragraph("No 2-D tensors: row and column structure does not apply.")]
    kinds = list(by_kind)
    rows_f = [by_kind[k][1]["unchanged_row_fraction"] for k in kinds]
    cols_f = [by_kind[k][1]["unchanged_col_fraction"] for k in kinds]
    figure = figures.emit(
        out_dir, f"{NAME}-row-col",
        figures.grouped_kind_bars(kinds, {"unchanged rows": rows_f, "unchanged columns": cols_f},
                                  "share of rows / columns with no changed element",
                                  "entirely unchanged rows and columns", unit_interval=True),
        "Share of rows (plain) and columns (hatched) of 2-D tensors in which no element changed, per module kind. "
        "Rows are output features, columns input features (PyTorch `out × in` layout).",
        ["module_kind", "unchanged_row_fraction", "unchanged_col_fraction", "rows", "cols"],
        [[k, r, c, by_kind[k][0].rows, by_kind[k][0].cols] for k, r, c in zip(kinds, rows_f, cols_f)])
    table = Table(["module kind", "rows", "unchanged rows", "columns", "unchanged columns"],
                  [[k, fmt_count(by_kind[k][0].rows), fmt_fraction(r), fmt_count(by_kind[k][0].cols), fmt_fraction(c)]
                   for k, r, c in zip(kinds, rows_f, cols_f)])
    return [figure, table]


def _extreme_tensor_blocks(result: DiffResult) -> list[Block]:
    rows = [(r, derived_metrics(r.stats)) for r in result.records if r.stats.numel > 0]
    if not rows:
        return [Paragraph("No non-empty tensor was compared.")]

    def norm(m: dict) -> float:
        return m["relative_update_norm"] if m["relative_update_norm"] is not None else 0.0

    most = sorted(rows, key=lambda rm: (rm[1]["bitwise_sparsity"], -norm(rm[1])))[:TOP_TENSORS]
    least = sorted(rows, key=lambda rm: (-rm[1]["bitwise_sparsity"], norm(rm[1])))[:TOP_TENSORS]
    header = ["tensor", "kind", "shape", "dtype", "bitwise sparsity", "changed", "‖Δ‖/‖W0‖", "1-ULP share"]

    def line(r: TensorRecord, m: dict) -> list[str]:
        return [f"`{r.name}`", r.module_kind, "×".join(map(str, r.shape)), r.dtype,
                fmt_fraction(m["bitwise_sparsity"]), fmt_count(r.stats.changed), fmt_sci(m["relative_update_norm"]),
                fmt_fraction(m["one_ulp_fraction"])]

    return [
        Paragraph("Ordered by bitwise sparsity, ties broken by relative update norm."),
        Table(header, [line(*rm) for rm in most], caption="Most changed (lowest bitwise sparsity)", numeric_from=4),
        Table(header, [line(*rm) for rm in least], caption="Least changed (highest bitwise sparsity)", numeric_from=4),
    ]
