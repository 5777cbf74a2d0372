"""Plain-text summaries of a `DiffResult` for the terminal."""

from __future__ import annotations

from dynamics.cautions import diff_cautions
from dynamics.element_stats import SIGN_CROSSING_LABEL, ElementStats, ulp_bucket_labels
from dynamics.metrics import METRICS, derived_metrics, format_value, metrics_needing
from dynamics.result import BLOCKS, DiffResult, geometry_means

TOP_TENSORS = 10
_BAR_WIDTH = 30


def _num(value: float | None, fmt: str = ".4f") -> str:
    return "n/a" if value is None else format(value, fmt)


def _headline(stats: ElementStats) -> list[tuple[str, str]]:
    """Every registered element metric marked `headline`, by its label, then counts and extremes."""
    m = derived_metrics(stats)
    rows = [(metric.label, format_value(name, m[name])) for name, metric in metrics_needing("element").items()
            if metric.headline]
    rows.insert(1, ("changed elements", f"{stats.changed:,} of {stats.numel:,}"))
    rows.append(("max |Δ|", _num(stats.max_abs_delta, ".3e")))
    if stats.hidden_by_bf16 is not None:
        rows.append((METRICS["hidden_by_bf16_fraction"].label, format_value("hidden_by_bf16_fraction",
                                                                            m["hidden_by_bf16_fraction"])))
    if stats.changed_signed_zero or stats.changed_nonfinite:
        rows.append(("±0 flips / NaN-Inf changes", f"{stats.changed_signed_zero:,} / {stats.changed_nonfinite:,}"))
    if stats.nan_a + stats.nan_b + stats.inf_a + stats.inf_b:
        rows.append(("NaN / Inf in A, B", f"{stats.nan_a}/{stats.inf_a}, {stats.nan_b}/{stats.inf_b}"))
    return rows


def _ulp_histogram(stats: ElementStats) -> list[str]:
    moved = stats.moved
    if not moved:
        return ["  (no element moved)"]
    last = max((j for j, c in enumerate(stats.ulp_histogram) if c), default=0)
    labels = ulp_bucket_labels()
    lines = []
    for j in range(last + 1):
        share = stats.ulp_histogram[j] / moved
        lines.append(f"  {labels[j]:>21} ULP  {'#' * round(share * _BAR_WIDTH):<{_BAR_WIDTH}} {share:7.2%}")
    share = stats.sign_crossings / moved
    lines.append(f"  {SIGN_CROSSING_LABEL:>25}  {'#' * round(share * _BAR_WIDTH):<{_BAR_WIDTH}} {share:7.2%}"
                 "  (W0·W1 < 0: no ULP distance)")
    return lines


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), *(fmt.format(*r) for r in rows)]


def format_summary(result: DiffResult) -> str:
    """Headline numbers, ULP histogram, most/least changed tensors, per-module-kind table, unpaired."""
    s = result.summary()
    lines = [f"A: {result.a.path}  [{result.a.format}]", f"B: {result.b.path}  [{result.b.format}]"]
    lines += [f"   note ({side}): {n}" for side, r in (("A", result.a), ("B", result.b)) for n in r.notes]
    rate = result.bytes_read / result.seconds / 1e9 if result.seconds else 0.0
    lines.append(f"{len(result.records)} tensors on {result.device}: {result.bytes_read / 1e6:,.1f} MB in "
                 f"{result.seconds:.2f} s ({rate:.2f} GB/s)")
    lines += [f"CAUTION: {c}" for c in diff_cautions(result)]
    lines.append("")
    lines += [f"{k:<36} {v}" for k, v in _headline(s)]
    for dtype, stats in result.by_dtype().items():
        lines += ["", f"ULP distance of moved weights, {dtype} tensors ({stats.moved:,} moved):", *_ulp_histogram(stats)]

    ranked = sorted((r for r in result.records if r.stats.numel), key=lambda r: r.stats.changed / r.stats.numel)
    for title, chosen in (("Most changed tensors", ranked[::-1][:TOP_TENSORS]), ("Least changed tensors", ranked[:TOP_TENSORS])):
        lines += ["", f"{title}:"]
        lines += _table(
            ["tensor", "shape", "bitwise sparsity", "rel. update norm"],
            [[r.name, "x".join(map(str, r.shape)), _num(derived_metrics(r.stats)["bitwise_sparsity"]),
              _num(derived_metrics(r.stats)["relative_update_norm"], ".2e")] for r in chosen],
        )

    lines += ["", "Per module kind:"]
    kind_rows = []
    for kind, stats in result.by_module_kind().items():
        m = derived_metrics(stats)
        kind_rows.append([kind, f"{stats.numel:,}", _num(m["bitwise_sparsity"]),
                          _num(m["relative_update_norm"], ".2e"), _num(m["one_ulp_fraction"])])
    lines += _table(["kind", "elements", "bitwise sparsity", "rel. update norm", "1-ULP share"], kind_rows)
    lines += _geometry_lines(result)
    lines += _unpaired_lines(result)
    return "\n".join(lines)


def _geometry_lines(result: DiffResult) -> list[str]:
    """The matrix pass's headline metrics over the transformer blocks (embeddings and lm_head apart), then
    per module kind."""
    scopes = {scope: g for scope, rs in result.scope_groups().items() if (g := geometry_means(rs)) is not None}
    kinds = {kind: g for kind, rs in result.module_kind_groups().items() if (g := geometry_means(rs)) is not None}
    if not kinds and not result.geometry_skipped:
        return []
    headline = {name: m for name, m in metrics_needing("matrix").items() if m.headline}

    def rows(groups: dict[str, dict]) -> list[list[str]]:
        return [[label, str(g["matrices"]), *(format_value(name, g[name]) for name in headline),
                 _num(g["principal_angle_max_deg"], ".2f"), _num(g["spectral_gap_min"], ".3f"),
                 str(g["gap_flagged_matrices"]), _num(g["spectrum_drift_max"], ".2e"),
                 _num(g["update_stable_rank"], ".1f"), _num(g["rank_energy"].get("16"), ".3f")] for label, g in groups.items()]

    header = ["matrices", *(m.label for m in headline.values()), "max angle °", "min σ_k/σ_k+1", "gap ≤ ‖Δ‖₂",
              "spectrum drift", "Δ stable rank",
              "rank-16 energy"]
    lines = ["", ("Update geometry (ρ_k = share of ‖Δ‖² in W0's top-k block; overlaps: changed elements in a "
                  "mask, against the chance of flips placed at random within each exponent bucket of |W0|; "
                  "angle, drift, ranks: means over matrices; min σ_k/σ_k+1: W0's smallest spectral gap; "
                  "gap ≤ ‖Δ‖₂: matrices whose angles Wedin's bound does not constrain):")]
    lines += _table(["scope", *header], rows(scopes))
    lines += ["", *_table(["kind", *header], rows(kinds))]
    if result.geometry_skipped:
        names = ", ".join(f"{s['name']} ({s['reason']})" for s in result.geometry_skipped[:3])
        more = " ..." if len(result.geometry_skipped) > 3 else ""
        lines.append(f"  no geometry for {len(result.geometry_skipped)} tensors: {names}{more}")
    return lines


def _unpaired_lines(result: DiffResult) -> list[str]:
    u = result.unpaired
    if u.is_empty():
        return []
    lines = ["", "Not compared as-is:"]
    for label, items in (("only in A", u.only_a), ("only in B", u.only_b), ("not float", u.not_float)):
        if items:
            lines.append(f"  {label} ({len(items)}): {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
    for m in u.shape_mismatch:
        lines.append(f"  shape mismatch: {m['name']} {m['shape_a']} vs {m['shape_b']} (skipped)")
    for m in u.dtype_mismatch:
        lines.append(f"  dtype mismatch: {m['name']} {m['dtype_a']} vs {m['dtype_b']} (compared as {m['compared_as']})")
    return lines


def _geometry_headline(result: DiffResult) -> list[tuple[str, str]]:
    """Headline matrix metrics over the transformer blocks' matrices (all matrices when the names carry no
    block index)."""
    scopes = result.scope_groups()
    records = scopes.get(BLOCKS, result.records)
    g = geometry_means(records)
    if g is None:
        return []
    scope = BLOCKS if BLOCKS in scopes else "all matrices"
    k = max(r.geometry.k for r in records if r.geometry is not None)
    rows = [(f"{metric.label} ({scope}, k≤{k})", format_value(name, g[name]))
            for name, metric in metrics_needing("matrix").items() if metric.headline]
    return rows + [
        (f"principal angle, max (mean over matrices, {scope})", _num(g["principal_angle_max_deg"], ".2f") + "°"),
        (f"Δ stable rank (mean over matrices, {scope})", _num(g["update_stable_rank"], ".1f")),
    ]


def format_side_by_side(results: dict[str, DiffResult]) -> str:
    """Headline numbers of several diffs (same base) as columns, one per label."""
    headlines = {label: dict(_headline(r.summary()) + _geometry_headline(r)) for label, r in results.items()}
    keys = list(dict.fromkeys(k for h in headlines.values() for k in h))
    rows = [[k, *(headlines[label].get(k, "") for label in results)] for k in keys]
    return "\n".join(_table(["", *results], rows))
