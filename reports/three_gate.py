"""Three-gate report: Gate I (KL drift and its top tokens beside the relative update norm, or what
to run to measure it), Gate II (update geometry per module kind, every registered matrix metric;
curvature alignment with the Fisher probe), Gate III (precision: bitwise sparsity, ULP distances,
bf16 visibility). Each gate ends with a one-line reading from `reports.readings`; a missing input is
stated, not hidden.

>>> from reports.three_gate import render_three_gate_report
>>> render_three_gate_report(DiffResult.read_json("diff.json"), Path("report/"),
...                          kl=KLResult.read_json("kl.json"))   # → report/three-gate.html
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dynamics.metrics import METRICS, derived_metrics, format_value, probe_value
from dynamics.result import DiffResult, geometry_means
from reports import figures
from reports.document import (
    Block,
    Note,
    Paragraph,
    Reading,
    Report,
    Section,
    Table,
    fmt_count,
    fmt_fraction,
    fmt_general,
    fmt_sci,
)
from reports.readings import (
    OFF_PRINCIPAL_RATIO,
    ON_PRINCIPAL_RATIO,
    fisher_reading,
    kl_reading,
    precision_reading,
    principal_energy_reading,
)
from reports.sections import (
    fp32_hidden_by_bf16,
    hidden_blocks,
    registered_matrix_table,
    subtitle,
    ulp_blocks,
    unpaired_blocks,
)
from reports.write import write_report

if TYPE_CHECKING:  # probes.kl imports transformers; the report only reads the result's fields
    from probes.fisher import FisherResult
    from probes.kl import KLResult

NAME = "three-gate"
TOP_KL_TOKENS = 10
OVERLAP_PERCENT = "10"  # mask size p (%) shown in the per-kind table; the figure shows every p
FISHER_SHARE_OVER_CHANCE = "fisher_share_over_chance"


def render_three_gate_report(result: DiffResult, out_dir: Path, kl: KLResult | None = None,
                             fisher: FisherResult | None = None) -> Path:
    """Write `out_dir/three-gate.md`, `out_dir/three-gate.html` (self-contained), PNG figures in
    `out_dir/figures/three-gate-*.png` and their data in `out_dir/data/three-gate-*.csv`.

    Args:
        result: the diff (`dynamics.diff`, or `DiffResult.read_json`); Gate II needs one made with
            the matrix pass (`geometry=GeometryOptions(...)`, `dynamics diff --geometry`).
        out_dir: folder to write into (created if missing; files are replaced atomically).
        kl: KL drift of the same pair (`probes.kl`, `KLResult.read_json`), for Gate I.
        fisher: curvature alignment of the same pair (`probes.fisher`, `FisherResult.read_json`),
            for Gate II.
    Returns:
        The path of the HTML page.
    """
    out_dir = Path(out_dir)
    gate1, reading1 = _gate_one(result, kl, out_dir)
    gate2, reading2 = _gate_two(result, fisher, out_dir)
    gate3, reading3 = _gate_three(result, out_dir)
    glance = Table(["gate", "reading"], [["I · KL anchor", reading1.text], ["II · geometry", reading2.text],
                                         ["III · precision", reading3.text]], numeric_from=2)
    report = Report(
        title="Three-gate report",
        subtitle=subtitle(result),
        sections=[
            Section("Readings at a glance", [glance, *unpaired_blocks(result)]),
            Section("Gate I — KL drift", gate1 + [reading1]),
            Section("Gate II — update geometry", gate2 + [reading2]),
            Section("Gate III — precision", gate3 + [reading3]),
        ],
    )
    return write_report(report, out_dir, NAME)


def _gate_one(result: DiffResult, kl: KLResult | None, out_dir: Path) -> tuple[list[Block], Reading]:
    model = derived_metrics(result.summary())
    relative = model["relative_update_norm"]
    by_kind = {k: derived_metrics(stats) for k, stats in result.by_module_kind().items()}
    kinds = list(by_kind)
    values = [by_kind[k]["relative_update_norm"] for k in kinds]
    weight_rows = [["relative update norm ‖Δ‖_F / ‖W0‖_F", fmt_sci(relative)],
                   ["‖Δ‖_F", fmt_sci(model["update_norm"])],
                   ["‖W0‖_F", fmt_sci(model["base_norm"])]]
    if kl is None:
        blocks: list[Block] = [
            Note(f"No KL-drift measurement: KL(π_B ‖ π_A) per token on B's own samples needs the model-running "
                 f"probe. To fill this section run `dynamics probe kl {result.a.path} {result.b.path} "
                 f"--prompts P --json kl.json` and render again with `--kl kl.json`. Until then the weight-space "
                 "size of the update is shown below; it does not predict KL."),
            Table(["model", "value"], weight_rows),
        ]
    else:
        blocks = _kl_blocks(kl, weight_rows)
    blocks.append(figures.emit(
        out_dir, f"{NAME}-relative-update-norm",
        figures.bars(kinds, values, "module kind", r"$\|\Delta\|_F\,/\,\|W_0\|_F$ (unitless)",
                     "relative update norm per module kind",
                     colours=[figures.KIND_COLOURS.get(k, "black") for k in kinds]),
        "Relative update norm ‖Δ‖_F / ‖W0‖_F per module kind (all tensors of a kind pooled).",
        ["module_kind", "relative_update_norm", "update_norm", "base_norm"],
        [[k, v, by_kind[k]["update_norm"], by_kind[k]["base_norm"]] for k, v in zip(kinds, values)]))
    mean, p95 = (None, None) if kl is None else (kl.kl_mean_per_token, kl.kl_p95_per_token)
    on_policy = kl is None or kl.on_policy
    return blocks, Reading("Gate I reading", kl_reading(mean, relative, p95, on_policy))


def _kl_blocks(kl: KLResult, weight_rows: list[list[str]]) -> list[Block]:
    """KL drift beside the weight-space update size, and the tokens that carry most of the KL."""
    table = Table(["model", "value"], [
        ["KL(π_B ‖ π_A), mean per token (nats)", fmt_general(kl.kl_mean_per_token, 4)],
        ["… median per token (nats)", fmt_general(kl.kl_median_per_token, 4)],
        ["… 95th percentile per token (nats)", fmt_general(kl.kl_p95_per_token, 4)],
        ["reverse KL(π_A ‖ π_B), mean per token (nats)", fmt_general(kl.kl_reverse_mean_per_token, 4)],
        ["KL per sequence, mean (nats)", fmt_general(kl.kl_mean_per_sequence, 4)],
        ["scored tokens / sequences", f"{fmt_count(kl.tokens)} / {fmt_count(kl.sequences)}"],
        *weight_rows,
    ])
    source = Paragraph(f"KL measured between `{kl.base}` (π_A) and `{kl.tuned}` (π_B), {kl.provenance()}, over "
                       "the full vocabulary; beside it the weight-space size of the update.")
    top = sorted(kl.top_tokens, key=lambda t: -(t.kl_sum or 0.0))[:TOP_KL_TOKENS]
    if not top:
        return [source, table, Paragraph("The KL result lists no top tokens.")]
    tokens = Table(["token", "token id", "count", "KL sum (nats)", "KL mean (nats)"],
                   [[f"`{_visible(t.token)}`", str(t.token_id), fmt_count(t.count),
                     fmt_general(t.kl_sum, 4), fmt_general(t.kl_mean, 4)] for t in top],
                   caption=f"Tokens carrying the most KL (top {len(top)} by summed KL over their occurrences)")
    return [source, table, tokens]


def _visible(token: str) -> str:
    """Whitespace and backticks shown, so a token reads the same in Markdown and HTML."""
    return token.replace("`", "ˋ").replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣") or "∅"


def _gate_two(result: DiffResult, fisher: FisherResult | None, out_dir: Path) -> tuple[list[Block], Reading]:
    blocks, reading = _geometry_blocks(result, out_dir)
    if fisher is None:
        blocks.append(Note(
            f"No curvature alignment: run `dynamics probe fisher {result.a.path} {result.b.path} --prompts P "
            "--json fisher.json` and render again with `--fisher fisher.json` to see how much of ‖Δ‖² falls on "
            "the base model's high-Fisher coordinates."))
        return blocks, Reading("Gate II reading", reading)
    fisher_blocks, curvature = _fisher_blocks(fisher, out_dir)
    return blocks + fisher_blocks, Reading("Gate II reading", f"{reading} Curvature: {curvature}")


def _fisher_blocks(fisher: FisherResult, out_dir: Path) -> tuple[list[Block], str]:
    """Share of ‖Δ‖² on the base's top-q% diagonal-Fisher coordinates against the chance level q."""
    model = fisher.model
    percents = [float(q) for q in fisher.q_percent]
    shares = [model["share_top_q"].get(f"{q:g}") for q in percents]
    ratios = [probe_value(FISHER_SHARE_OVER_CHANCE, fisher, q) for q in percents]
    table = Table(["top-q% Fisher coordinates", "share of ‖Δ‖²", "chance", "share / chance"],
                  [[f"q = {q:g}%", fmt_fraction(v), fmt_fraction(q / 100), fmt_general(r)]
                   for q, v, r in zip(percents, shares, ratios)],
                  caption=f"Diagonal empirical Fisher of the base on {fmt_count(fisher.samples)} of its "
                          f"own samples over {len(fisher.tensors)} tensors; median Spearman ρ(|Δ|, F) "
                          f"over tensors = {fmt_general(model.get('spearman_median'))}")
    figure = figures.emit(
        out_dir, f"{NAME}-fisher",
        figures.overlap_vs_chance(percents, {"share of ‖Δ‖² (model)": shares},
                                  xlabel="top-q% Fisher coordinates (q, % of elements)",
                                  ylabel="share of ‖Δ‖² on them (%)", title="curvature alignment vs chance",
                                  chance_label="chance (share = q)"),
        "Share of the update's energy ‖Δ‖² on each tensor's top-q% diagonal-Fisher coordinates (all tensors "
        "pooled), against chance (dashed).",
        ["q_percent", "share_top_q", "chance", FISHER_SHARE_OVER_CHANCE],
        [[q, v, q / 100, r] for q, v, r in zip(percents, shares, ratios)])
    smallest = min(range(len(percents)), key=lambda i: percents[i])
    return [Paragraph("Curvature alignment (Fisher probe):"), table, figure], \
        fisher_reading(shares[smallest], ratios[smallest], percents[smallest])


def _geometry_blocks(result: DiffResult, out_dir: Path) -> tuple[list[Block], str]:
    summary = geometry_means(result.records)
    if summary is None:
        why = ("no 2-D weight was measured (every matrix was skipped)" if result.geometry_skipped
               else "the diff was made without the matrix pass")
        text = (f"No update geometry: {why}. Rerun `dynamics diff A B --geometry --json diff.json` "
                "(add `--rank-k K` to choose the top-k subspace, default 64) and render this report from that file.")
        return [Note(text)], "geometry not measured — rerun `dynamics diff A B --geometry`."
    by_kind = {k: m for k, rs in result.module_kind_groups().items() if (m := geometry_means(rs)) is not None}
    kinds = list(by_kind)
    percents = list(summary["principal_mask_overlap"])
    p = OVERLAP_PERCENT if OVERLAP_PERCENT in percents else percents[0]

    def line(label: str, m: dict) -> list[str]:
        return [label, fmt_count(m["matrices"]), fmt_general(m["k"]), fmt_general(m["principal_angle_max_deg"]),
                fmt_sci(m["spectrum_drift_mean"]), fmt_fraction(m["principal_mask_overlap"].get(p), 3),
                fmt_fraction(m["low_magnitude_mask_overlap"].get(p), 3)]

    table = Table(["module kind", "matrices", "k", "max angle (°)", "spectrum drift",
                   f"principal overlap (p={p}%)", f"low-|W0| overlap (p={p}%)"],
                  [line(k, by_kind[k]) for k in kinds] + [line("**all matrices**", summary)],
                  caption=f"Means over the matrices of each kind; chance overlap = {int(p) / 100:g}")
    blocks: list[Block] = [
        Paragraph(f"Top-k singular subspaces of W0 and W1 for {summary['matrices']} matrices "
                  f"(k = {fmt_general(summary['k'])} on average). ρ_k is the share of ‖Δ‖_F² inside the top-k "
                  "principal block U0_kᵀ Δ V0_k; a random direction has k²/(m·n); both are weighted by each "
                  "matrix's ‖Δ‖_F² over a group. Overlaps are the share of changed elements inside the top-p% "
                  "principal-weight mask (or the bottom-p% |W0| mask); chance is p."),
        table,
        registered_matrix_table(result),
    ]
    if result.geometry_skipped:
        reasons = sorted({s["reason"] for s in result.geometry_skipped})
        blocks.append(Paragraph(f"{len(result.geometry_skipped)} tensors were not measured ({'; '.join(reasons)})."))
    ratios = [by_kind[k]["principal_energy_ratio"] for k in kinds]
    colours = [figures.KIND_COLOURS.get(k, "black") for k in kinds]
    blocks.append(figures.emit(
        out_dir, f"{NAME}-principal-energy",
        figures.bars(kinds, ratios, "module kind", r"$\rho_k$ / random baseline (log scale)",
                     "principal energy of the update vs random directions", colours=colours, log=True,
                     hlines=[(1.0, "random directions (= 1)")],
                     bands=[(ON_PRINCIPAL_RATIO, 1e6, "tab:blue", f"on-principal (> {ON_PRINCIPAL_RATIO:g})"),
                            (1e-6, OFF_PRINCIPAL_RATIO, "tab:orange", f"off-principal (< {OFF_PRINCIPAL_RATIO:g})")]),
        f"{METRICS['principal_energy_ratio'].label} per module kind: update energy in the top-k principal block "
        "over the random-direction baseline k²/(m·n).",
        ["module_kind", "principal_energy_weighted", "principal_energy_ratio"],
        [[k, by_kind[k]["principal_energy_weighted"], r] for k, r in zip(kinds, ratios)]))
    angles = [by_kind[k]["principal_angle_max_deg"] for k in kinds]
    drift = [by_kind[k]["spectrum_drift_mean"] for k in kinds]
    blocks.append(figures.emit(
        out_dir, f"{NAME}-rotation",
        figures.bars(kinds, angles, "module kind", "max principal angle (degrees)",
                     "rotation of the top-k left singular subspace", colours=colours),
        "Largest principal angle between the top-k left singular subspaces of W0 and W1 (mean over matrices).",
        ["module_kind", "principal_angle_max_deg", "principal_angle_max_deg_right"],
        [[k, a, by_kind[k]["principal_angle_max_deg_right"]] for k, a in zip(kinds, angles)]))
    blocks.append(figures.emit(
        out_dir, f"{NAME}-spectrum-drift",
        figures.bars(kinds, drift, "module kind", r"mean $|\sigma_i(W_1) - \sigma_i(W_0)|\,/\,\sigma_i(W_0)$",
                     "drift of the top-k singular values", colours=colours),
        "Mean relative change of the top-k singular values, per module kind.",
        ["module_kind", "spectrum_drift_mean", "spectrum_drift_max"],
        [[k, d, by_kind[k]["spectrum_drift_max"]] for k, d in zip(kinds, drift)]))
    principal = [summary["principal_mask_overlap"][q] for q in percents]
    low = [summary["low_magnitude_mask_overlap"].get(q) for q in percents]
    blocks.append(figures.emit(
        out_dir, f"{NAME}-mask-overlap",
        figures.overlap_vs_chance([float(q) for q in percents],
                                  {"principal-weight mask": principal, "low-magnitude mask": low}),
        "Share of changed elements inside the top-p% principal-weight mask and the bottom-p% |W0| mask, "
        "against chance (dashed), mean over matrices.",
        ["p_percent", "principal_mask_overlap", "low_magnitude_mask_overlap"],
        [[q, a, b] for q, a, b in zip(percents, principal, low)]))
    return blocks, principal_energy_reading(summary["principal_energy_ratio"], summary["principal_angle_max_deg"])


def _gate_three(result: DiffResult, out_dir: Path) -> tuple[list[Block], Reading]:
    s = result.summary()
    m = derived_metrics(s)
    tolerance = "headline_tolerance_sparsity"
    table = Table(["model", "value"], [
        ["bitwise sparsity (share of bit-identical elements)", fmt_fraction(m["bitwise_sparsity"])],
        ["changed elements", f"{s.changed:,} of {s.numel:,}"],
        ["moved by exactly one ULP (share of moved)", fmt_fraction(m["one_ulp_fraction"])],
        [METRICS[tolerance].label, format_value(tolerance, m[tolerance])],
    ])
    blocks = [table, *ulp_blocks(result, out_dir, f"{NAME}-ulp-histogram"),
              *hidden_blocks(result, out_dir, f"{NAME}-hidden")]
    reading = precision_reading(m["bitwise_sparsity"], list(result.by_dtype()), fp32_hidden_by_bf16(result))
    return blocks, Reading("Gate III reading", reading)
