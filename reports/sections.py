"""Blocks both reports show: the pair being compared, headline numbers, the registered headline
metrics, the ULP histogram and the share of float32 movement that bf16/fp16 storage would hide."""

from __future__ import annotations

from pathlib import Path

from dynamics.cautions import diff_cautions
from dynamics.element_stats import SIGN_CROSSING_LABEL, ulp_bucket_labels
from dynamics.metrics import derived_metrics, format_value, matrix_metrics, metrics_needing
from dynamics.naming import MODULE_KINDS
from dynamics.result import DiffResult, TensorRecord, aggregate
from reports import figures
from reports.document import Block, Paragraph, Table, fmt_count, fmt_fraction, fmt_sci


def subtitle(result: DiffResult) -> list[str]:
    """Which checkpoints, how many tensors and elements, which dtypes, where it ran."""
    dtypes = ", ".join(result.by_dtype()) or "none"
    return [
        f"A (base): `{result.a.path}`",
        f"B (tuned): `{result.b.path}`",
        (f"{len(result.records)} tensor pairs, {result.summary().numel:,} elements, compared in {dtypes}; "
         f"diff ran on {result.device} in {result.seconds:.1f} s"),
    ]


def caution_blocks(result: DiffResult) -> list[Block]:
    """`dynamics.cautions.diff_cautions` as notes, placed beside the report's first readings."""
    return [Paragraph(f"**Caution:** {text}.") for text in diff_cautions(result)]


def unpaired_blocks(result: DiffResult) -> list[Block]:
    """What the diff could not compare, so a reader knows what the numbers leave out, and which tensors
    were compared only after a cast to a common dtype (they are in the numbers)."""
    unpaired = result.unpaired
    labels = {"only in A": unpaired.only_a, "only in B": unpaired.only_b,
              "shape mismatch": unpaired.shape_mismatch, "not floating point": unpaired.not_float}
    counts = [f"{len(names)} {label}" for label, names in labels.items() if names]
    blocks: list[Block] = []
    if counts:
        blocks.append(Paragraph("Not in these numbers: " + ", ".join(counts)
                                + " (listed under `unpaired` in the diff JSON)."))
    if unpaired.dtype_mismatch:
        cast: dict[str, int] = {}
        for m in unpaired.dtype_mismatch:
            key = f"{m['dtype_a']} vs {m['dtype_b']}, compared as {m['compared_as']}"
            cast[key] = cast.get(key, 0) + 1
        blocks.append(Paragraph("Dtypes differ between A and B for " + ", ".join(
            f"{n} tensor{'s' if n > 1 else ''} ({key})" for key, n in cast.items())
            + "; they are in these numbers (listed under `unpaired.dtype_mismatch` in the diff JSON)."))
    return blocks


def headline_table(result: DiffResult) -> Table:
    s = result.summary()
    m = derived_metrics(s)
    rows = [
        ["bitwise sparsity (share of bit-identical elements)", fmt_fraction(m["bitwise_sparsity"])],
        ["changed elements", f"{s.changed:,} of {s.numel:,}"],
        ["… of which ±0 flips / non-finite changes", f"{s.changed_signed_zero:,} / {s.changed_nonfinite:,}"],
        ["moved by exactly one ULP (share of moved)", fmt_fraction(m["one_ulp_fraction"])],
        ["relative update norm ‖Δ‖_F / ‖W0‖_F", fmt_sci(m["relative_update_norm"])],
        ["max |Δ|", fmt_sci(s.max_abs_delta)],
        ["mean |Δ| of moved elements", fmt_sci(m["mean_abs_delta_moved"])],
    ]
    return Table(["model", "value"], rows)


def registered_element_table(result: DiffResult) -> Table:
    """Every registered element metric marked `headline`, by its label and in its format: the model's
    value and each module kind's (element-weighted, `DiffResult.by_module_kind`)."""
    headline = {name: metric for name, metric in metrics_needing("element").items() if metric.headline}
    groups = {"model": result.summary(), **result.by_module_kind()}
    values = {group: derived_metrics(stats) for group, stats in groups.items()}
    return Table(["metric", *groups], [[metric.label, *(format_value(name, values[g][name]) for g in groups)]
                                       for name, metric in headline.items()],
                 caption="Registered headline metrics (`dynamics.metrics`), whole model and per module kind")


def registered_matrix_table(result: DiffResult) -> Table:
    """Every registered matrix metric, by its label and in its format (one row each): the headline scopes
    (transformer blocks, embeddings, lm_head), every other module kind and all matrices
    (`dynamics.metrics.matrix_metrics` of the group's records)."""
    matrix = metrics_needing("matrix")
    groups = {scope: rs for scope, rs in result.scope_groups().items() if any(r.geometry for r in rs)}
    groups.update((kind, rs) for kind, rs in result.module_kind_groups().items()
                  if kind not in ("embed", "lm_head") and any(r.geometry for r in rs))  # those are scopes
    groups["all matrices"] = result.records
    values = {group: matrix_metrics(rs) for group, rs in groups.items()}
    return Table(["metric", *groups], [[metric.label, *(format_value(name, values[g][name]) for g in groups)]
                                       for name, metric in matrix.items()],
                 caption="Registered matrix metrics (`dynamics.metrics`): headline scopes, then per module kind")


def ulp_blocks(result: DiffResult, out_dir: Path, stem: str) -> list[Block]:
    """ULP-distance histogram of moved elements, one panel per stored dtype, and its table."""
    by_dtype = result.by_dtype()
    histograms = {dtype: list(stats.ulp_histogram) for dtype, stats in by_dtype.items()}
    crossings = {dtype: stats.sign_crossings for dtype, stats in by_dtype.items()}
    if not any(stats.moved for stats in by_dtype.values()):
        return [Paragraph("No element moved: there is no ULP distance to show.")]
    header = ["ulp_bucket"] + [f"moved_{dtype}" for dtype in histograms]
    rows = [[label] + [h[i] for h in histograms.values()] for i, label in enumerate(ulp_bucket_labels())]
    rows.append([SIGN_CROSSING_LABEL, *crossings.values()])
    figure = figures.emit(out_dir, stem, figures.ulp_histograms(histograms, crossings),
                          "ULP distance of moved elements per stored dtype (log count). Sign crossings (W0·W1 < 0, "
                          "neither ±0) are their own bar, not a ULP distance: a weight that crosses zero passes every "
                          "tiny value on both sides (−1.0e-4 → +1.08e-4 is ~29,000 bf16 ULPs); a move from or to ±0 "
                          "keeps its distance.", header, rows)
    metrics = {dtype: derived_metrics(stats) for dtype, stats in by_dtype.items()}
    table = Table(["dtype", "moved elements", "moved by 1 ULP (share)", "moved by ≤ 2 ULP (share)",
                   "sign crossings"], [
        [dtype, fmt_count(by_dtype[dtype].moved), fmt_fraction(m["one_ulp_fraction"]),
         fmt_fraction(m["two_ulp_fraction"]), fmt_count(crossings[dtype])] for dtype, m in metrics.items()])
    return [figure, table]


def hidden_blocks(result: DiffResult, out_dir: Path, stem: str) -> list[Block]:
    """float32 pairs: share of moved elements whose bf16 (fp16) roundings are equal, per module kind."""
    fp32 = [r for r in result.records if r.stats.hidden_by_bf16 is not None]
    if not fp32:
        return [Paragraph("No float32 pairs: the weights are stored as "
                          f"{', '.join(result.by_dtype()) or 'nothing'}, so there is no finer movement for bf16 or "
                          "fp16 storage to hide. (This applies to float32 checkpoints such as fp32 master weights.)")]
    by_kind: dict[str, list[TensorRecord]] = {k: [r for r in fp32 if r.module_kind == k] for k in MODULE_KINDS}
    by_kind = {k: rs for k, rs in by_kind.items() if rs}
    kinds = list(by_kind)
    pooled = {k: derived_metrics(aggregate(rs)) for k, rs in by_kind.items()}
    model = derived_metrics(aggregate(fp32))
    bf16 = [pooled[k]["hidden_by_bf16_fraction"] for k in kinds]
    fp16 = [pooled[k]["hidden_by_fp16_fraction"] for k in kinds]
    figure = figures.emit(
        out_dir, stem,
        figures.grouped_kind_bars(kinds, {"hidden by bf16": bf16, "hidden by fp16": fp16},
                                  "share of moved float32 elements hidden", "float32 updates that 16-bit storage "
                                  "would hide", unit_interval=True),
        "Share of moved float32 elements whose bf16 (plain) / fp16 (hatched) roundings are equal, per module kind.",
        ["module_kind", "hidden_by_bf16_fraction", "hidden_by_fp16_fraction"],
        [[k, b, f] for k, b, f in zip(kinds, bf16, fp16)])
    table = Table(["module kind", "moved float32 elements", "hidden by bf16", "hidden by fp16"],
                  [[k, fmt_count(aggregate(by_kind[k]).moved), fmt_fraction(b), fmt_fraction(f)]
                   for k, b, f in zip(kinds, bf16, fp16)]
                  + [["**all float32**", fmt_count(aggregate(fp32).moved),
                      fmt_fraction(model["hidden_by_bf16_fraction"]), fmt_fraction(model["hidden_by_fp16_fraction"])]])
    return [figure, table]


def fp32_hidden_by_bf16(result: DiffResult) -> float | None:
    """Model-level hidden-by-bf16 share over the float32 pairs, None without float32 pairs."""
    stats = result.by_dtype().get("float32")
    return None if stats is None else derived_metrics(stats)["hidden_by_bf16_fraction"]
