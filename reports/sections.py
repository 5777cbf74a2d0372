"""Blocks both reports show: the pair being compared, headline numbers, the ULP histogram and the
share of float32 movement that bf16/fp16 storage would hide."""

from __future__ import annotations

from pathlib import Path

from dynamics.naming import MODULE_KINDS
from reports import figures
from reports.document import Block, Paragraph, Table, fmt_count, fmt_fraction, fmt_sci
from reports.load import pooled_metrics


def subtitle(doc: dict) -> list[str]:
    """Which checkpoints, how many tensors and elements, which dtypes, where it ran."""
    summary = doc["summary"]
    dtypes = ", ".join(doc["by_dtype"]) or "none"
    return [
        f"A (base): `{doc['a']['path']}`",
        f"B (tuned): `{doc['b']['path']}`",
        (f"{summary['tensors']} tensor pairs, {summary['numel']:,} elements, compared in {dtypes}"
         f"{_mixed_precision(doc)}; "
         f"diff ran on {doc['device']} in {doc['seconds']:.1f} s"),
    ]


def unpaired_blocks(doc: dict) -> list[Block]:
    """What the diff could not compare, so a reader knows what the numbers leave out."""
    labels = {"only_a": "only in A", "only_b": "only in B", "shape_mismatch": "shape mismatch",
              "not_float": "not floating point"}
    counts = [f"{len(doc['unpaired'][key])} {label}" for key, label in labels.items() if doc["unpaired"].get(key)]
    if not counts:
        return []
    return [Paragraph("Not in these numbers: " + ", ".join(counts) + " (listed under `unpaired` in the diff JSON).")]


def _mixed_precision(doc: dict) -> str:
    """" (N pairs of different dtypes, A bfloat16 vs B float32, upcast exactly)" or ""."""
    mixed = doc["unpaired"].get("dtype_mismatch") or []
    if not mixed:
        return ""
    kinds = sorted({f"A {m['dtype_a']} vs B {m['dtype_b']}" for m in mixed})
    return f" ({len(mixed)} pairs of different dtypes, {', '.join(kinds)}, upcast exactly)"


def headline_table(doc: dict) -> Table:
    s = doc["summary"]
    rows = [
        ["bitwise sparsity (share of bit-identical elements)", fmt_fraction(s["bitwise_sparsity"])],
        ["changed elements", f"{s['changed']:,} of {s['numel']:,}"],
        ["… of which ±0 flips / non-finite changes", f"{s['changed_signed_zero']:,} / {s['changed_nonfinite']:,}"],
        ["moved by exactly one ULP (share of moved)", fmt_fraction(s["one_ulp_fraction"])],
        ["relative update norm ‖Δ‖_F / ‖W0‖_F", fmt_sci(s["relative_update_norm"])],
        ["max |Δ|", fmt_sci(s["max_abs_delta"])],
        ["mean |Δ| of moved elements", fmt_sci(s["mean_abs_delta_moved"])],
    ]
    return Table(["model", "value"], rows)


def ulp_blocks(doc: dict, out_dir: Path, stem: str) -> list[Block]:
    """ULP-distance histogram of moved elements, one panel per stored dtype, and its table."""
    by_dtype = doc["by_dtype"]
    histograms = {dtype: row["ulp_histogram"] for dtype, row in by_dtype.items()}
    labels = doc["constants"]["ulp_bucket_labels"]
    if not any(sum(h) for h in histograms.values()):
        return [Paragraph("No element moved: there is no ULP distance to show.")]
    header = ["ulp_bucket"] + [f"moved_{dtype}" for dtype in histograms]
    rows = [[label] + [h[i] for h in histograms.values()] for i, label in enumerate(labels)]
    figure = figures.emit(out_dir, stem, figures.ulp_histograms(histograms),
                          "ULP distance of moved elements per stored dtype (log count).", header, rows)
    table = Table(["dtype", "moved elements", "moved by 1 ULP (share)", "moved by ≤ 2 ULP (share)"], [
        [dtype, fmt_count(sum(row["ulp_histogram"])), fmt_fraction(row["one_ulp_fraction"]),
         fmt_fraction(sum(row["ulp_histogram"][:2]) / sum(row["ulp_histogram"]) if sum(row["ulp_histogram"]) else None)]
        for dtype, row in by_dtype.items()])
    return [figure, table]


def hidden_blocks(doc: dict, out_dir: Path, stem: str) -> list[Block]:
    """float32 pairs: share of moved elements whose bf16 (fp16) roundings are equal, per module kind."""
    fp32_rows = [t for t in doc["tensors"] if t["hidden_by_bf16"] is not None]
    if not fp32_rows:
        return [Paragraph("No float32 pairs: the weights are stored as "
                          f"{', '.join(doc['by_dtype']) or 'nothing'}, so there is no finer movement for bf16 or "
                          "fp16 storage to hide. (This applies to float32 checkpoints such as fp32 master weights.)")]
    kinds = [k for k in MODULE_KINDS if any(t["module_kind"] == k for t in fp32_rows)]
    pooled = {k: pooled_metrics([t for t in fp32_rows if t["module_kind"] == k]) for k in kinds}
    model = pooled_metrics(fp32_rows)
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
                  [[k, fmt_count(sum(sum(t["ulp_histogram"]) for t in fp32_rows if t["module_kind"] == k)),
                    fmt_fraction(b), fmt_fraction(f)] for k, b, f in zip(kinds, bf16, fp16)]
                  + [["**all float32**", fmt_count(sum(sum(t["ulp_histogram"]) for t in fp32_rows)),
                      fmt_fraction(model["hidden_by_bf16_fraction"]), fmt_fraction(model["hidden_by_fp16_fraction"])]])
    return [figure, table]


def fp32_hidden_by_bf16(doc: dict) -> float | None:
    """Model-level hidden-by-bf16 share over the float32 pairs, None without float32 pairs."""
    row = doc["by_dtype"].get("float32")
    return None if row is None else row["hidden_by_bf16_fraction"]
