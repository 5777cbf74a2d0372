"""Three-gate report: Gate I (KL drift and its top tokens beside the relative update norm, or what
to run to measure it), Gate II (update geometry per module kind; curvature alignment with the
Fisher probe), Gate III (precision: bitwise sparsity, ULP distances, bf16 visibility). Each gate
ends with a one-line reading from `reports.readings`; a missing input is stated, not hidden.

>>> from reports.three_gate import render_three_gate_report
>>> render_three_gate_report(load_diff_doc("diff.json"), Path("report/"))   # → report/three-gate.html
"""

from __future__ import annotations

from pathlib import Path

from dynamics.result import DiffResult
from dynamics.series import KL_SCHEMA, principal_energy
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
    write_report,
)
from reports.load import FISHER_SCHEMA, load_diff_doc, load_document
from reports.readings import (
    OFF_PRINCIPAL_RATIO,
    ON_PRINCIPAL_RATIO,
    fisher_reading,
    kl_reading,
    precision_reading,
    principal_energy_reading,
)
from reports.sections import fp32_hidden_by_bf16, hidden_blocks, subtitle, ulp_blocks, unpaired_blocks

NAME = "three-gate"
TOP_KL_TOKENS = 10
OVERLAP_PERCENT = "10"  # mask size p (%) shown in the per-kind table; the figure shows every p


def render_three_gate_report(doc: dict | DiffResult | str | Path, out_dir: Path,
                             kl: dict | str | Path | None = None, fisher: dict | str | Path | None = None) -> Path:
    """Write `out_dir/three-gate.md`, `out_dir/three-gate.html` (self-contained), PNG figures in
    `out_dir/figures/three-gate-*.png` and their data in `out_dir/data/three-gate-*.csv`.

    Args:
        doc: a `dynamics.diff/1` document (dict), a `DiffResult`, or the path of its JSON file;
            Gate II needs one made with `--geometry`.
        out_dir: folder to write into (created if missing; files are replaced atomically).
        kl: the `dynamics.kl/1` document of the same pair (`dynamics probe kl --json`), for Gate I.
        fisher: the `dynamics.fisher/1` document of the same pair (`dynamics probe fisher --json`),
            for Gate II's curvature alignment.
    Returns:
        The path of the HTML page.
    """
    doc = load_diff_doc(doc)
    kl = None if kl is None else load_document(kl, KL_SCHEMA)
    fisher = None if fisher is None else load_document(fisher, FISHER_SCHEMA)
    out_dir = Path(out_dir)
    gate1, reading1 = _gate_one(doc, kl, out_dir)
    gate2, reading2 = _gate_two(doc, fisher, out_dir)
    gate3, reading3 = _gate_three(doc, out_dir)
    glance = Table(["gate", "reading"], [["I · KL anchor", reading1.text], ["II · geometry", reading2.text],
                                         ["III · precision", reading3.text]], numeric_from=2)
    report = Report(
        title="Three-gate report",
        subtitle=subtitle(doc),
        sections=[
            Section("Readings at a glance", [glance, *unpaired_blocks(doc)]),
            Section("Gate I — KL drift", gate1 + [reading1]),
            Section("Gate II — update geometry", gate2 + [reading2]),
            Section("Gate III — precision", gate3 + [reading3]),
        ],
    )
    return write_report(report, out_dir, NAME)


def _gate_one(doc: dict, kl: dict | None, out_dir: Path) -> tuple[list[Block], Reading]:
    relative = doc["summary"]["relative_update_norm"]
    kinds = list(doc["by_module_kind"])
    values = [doc["by_module_kind"][k]["relative_update_norm"] for k in kinds]
    weight_rows = [["relative update norm ‖Δ‖_F / ‖W0‖_F", fmt_sci(relative)],
                   ["‖Δ‖_F", fmt_sci(doc["summary"]["update_norm"])],
                   ["‖W0‖_F", fmt_sci(doc["summary"]["base_norm"])]]
    if kl is None:
        blocks: list[Block] = [
            Note(f"No KL-drift measurement: KL(π_B ‖ π_A) per token on B's own samples needs the model-running "
                 f"probe. To fill this section run `dynamics probe kl {doc['a']['path']} {doc['b']['path']} "
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
        [[k, v, doc["by_module_kind"][k]["update_norm"], doc["by_module_kind"][k]["base_norm"]]
         for k, v in zip(kinds, values)]))
    mean, p95 = (None, None) if kl is None else (kl["kl_mean_per_token"], kl["kl_p95_per_token"])
    return blocks, Reading("Gate I reading", kl_reading(mean, relative, p95))


def _kl_blocks(kl: dict, weight_rows: list[list[str]]) -> list[Block]:
    """KL drift beside the weight-space update size, and the tokens that carry most of the KL."""
    def nats(key: str) -> str:
        return fmt_general(kl.get(key), 4)

    table = Table(["model", "value"], [
        ["KL(π_B ‖ π_A), mean per token (nats)", nats("kl_mean_per_token")],
        ["… median per token (nats)", nats("kl_median_per_token")],
        ["… 95th percentile per token (nats)", nats("kl_p95_per_token")],
        ["reverse KL(π_A ‖ π_B), mean per token (nats)", nats("kl_reverse_mean_per_token")],
        ["KL per sequence, mean (nats)", nats("kl_mean_per_sequence")],
        ["scored tokens / sequences", f"{fmt_count(kl.get('tokens'))} / {fmt_count(kl.get('sequences'))}"],
        *weight_rows,
    ])
    source = Paragraph(f"KL measured between `{kl.get('base')}` (π_A) and `{kl.get('tuned')}` (π_B), teacher-forced "
                       "on π_B's own samples over the full vocabulary; beside it the weight-space size of the update.")
    top = sorted(kl.get("top_tokens") or [], key=lambda t: -(t.get("kl_sum") or 0.0))[:TOP_KL_TOKENS]
    if not top:
        return [source, table, Paragraph("The KL document lists no top tokens.")]
    tokens = Table(["token", "token id", "count", "KL sum (nats)", "KL mean (nats)"],
                   [[f"`{_visible(t['token'])}`", str(t["token_id"]), fmt_count(t["count"]),
                     fmt_general(t["kl_sum"], 4), fmt_general(t["kl_mean"], 4)] for t in top],
                   caption=f"Tokens carrying the most KL (top {len(top)} by summed KL over their occurrences)")
    return [source, table, tokens]


def _visible(token: str) -> str:
    """Whitespace and backticks shown, so a token reads the same in Markdown and HTML."""
    return token.replace("`", "ˋ").replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣") or "∅"


def _ratio(means: dict | None) -> float | None:
    energy, baseline = principal_energy(means)
    return energy / baseline if energy is not None and baseline else None


def _gate_two(doc: dict, fisher: dict | None, out_dir: Path) -> tuple[list[Block], Reading]:
    blocks, reading = _geometry_blocks(doc, out_dir)
    if fisher is None:
        blocks.append(Note(
            f"No curvature alignment: run `dynamics probe fisher {doc['a']['path']} {doc['b']['path']} --prompts P "
            "--json fisher.json` and render again with `--fisher fisher.json` to see how much of ‖Δ‖² falls on "
            "the base model's high-Fisher coordinates."))
        return blocks, Reading("Gate II reading", reading)
    fisher_blocks, curvature = _fisher_blocks(fisher, out_dir)
    return blocks + fisher_blocks, Reading("Gate II reading", f"{reading} Curvature: {curvature}")


def _fisher_blocks(fisher: dict, out_dir: Path) -> tuple[list[Block], str]:
    """Share of ‖Δ‖² on the base's top-q% diagonal-Fisher coordinates against the chance level q."""
    model = fisher["model"]
    percents = [float(q) for q in fisher["q_percent"]]
    shares = [model["share_top_q"].get(f"{q:g}") for q in percents]
    ratios = [None if v is None else v / (q / 100) for q, v in zip(percents, shares)]
    table = Table(["top-q% Fisher coordinates", "share of ‖Δ‖²", "chance", "share / chance"],
                  [[f"q = {q:g}%", fmt_fraction(v), fmt_fraction(q / 100), fmt_general(r)]
                   for q, v, r in zip(percents, shares, ratios)],
                  caption=f"Diagonal empirical Fisher of the base on {fmt_count(fisher.get('samples'))} of its "
                          f"own samples over {len(fisher.get('tensors') or [])} tensors; median Spearman ρ(|Δ|, F) "
                          f"over tensors = {fmt_general(model.get('spearman_median'))}")
    figure = figures.emit(
        out_dir, f"{NAME}-fisher",
        figures.overlap_vs_chance(percents, {"share of ‖Δ‖² (model)": shares},
                                  xlabel="top-q% Fisher coordinates (q, % of elements)",
                                  ylabel="share of ‖Δ‖² on them (%)", title="curvature alignment vs chance",
                                  chance_label="chance (share = q)"),
        "Share of the update's energy ‖Δ‖² on each tensor's top-q% diagonal-Fisher coordinates (all tensors "
        "pooled), against chance (dashed).",
        ["q_percent", "share_top_q", "chance"], [[q, v, q / 100] for q, v in zip(percents, shares)])
    smallest = min(range(len(percents)), key=lambda i: percents[i])
    return [Paragraph("Curvature alignment (Fisher probe):"), table, figure], \
        fisher_reading(shares[smallest], percents[smallest])


def _geometry_blocks(doc: dict, out_dir: Path) -> tuple[list[Block], str]:
    geometry = doc.get("geometry")
    if not geometry or not geometry.get("summary"):
        why = ("the diff was made without the matrix pass" if not geometry
               else "no 2-D weight was measured (every matrix was skipped)")
        text = (f"No update geometry: {why}. Rerun `dynamics diff A B --geometry --json diff.json` "
                "(add `--rank-k K` to choose the top-k subspace, default 64) and render this report from that file.")
        return [Note(text)], "geometry not measured — rerun `dynamics diff A B --geometry`."
    summary = geometry["summary"]
    by_kind = {k: m for k, m in geometry["by_module_kind"].items() if m}
    kinds = list(by_kind)
    percents = list(summary["principal_mask_overlap"])
    p = OVERLAP_PERCENT if OVERLAP_PERCENT in percents else percents[0]

    def line(label: str, m: dict) -> list[str]:
        energy, baseline = principal_energy(m)
        return [label, fmt_count(m["matrices"]), fmt_general(m["k"]), fmt_general(m["principal_angle_max_deg"]),
                fmt_sci(m["spectrum_drift_mean"]), fmt_general(energy), fmt_general(baseline), fmt_general(_ratio(m)),
                fmt_fraction(m["principal_mask_overlap"].get(p), 3), fmt_fraction(m["low_magnitude_mask_overlap"].get(p), 3)]

    table = Table(["module kind", "matrices", "k", "max angle (°)", "spectrum drift", "ρ_k", "baseline k²/(mn)",
                   "ρ_k / baseline", f"principal overlap (p={p}%)", f"low-|W0| overlap (p={p}%)"],
                  [line(k, by_kind[k]) for k in kinds] + [line("**all matrices**", summary)],
                  caption=f"Means over the matrices of each kind; ρ_k Δ-energy-weighted; chance overlap = {int(p) / 100:g}")
    blocks: list[Block] = [
        Paragraph(f"Top-k singular subspaces of W0 and W1 for {summary['matrices']} matrices "
                  f"(k = {fmt_general(summary['k'])} on average). ρ_k is the share of ‖Δ‖_F² inside the top-k "
                  "principal block U0_kᵀ Δ V0_k; a random direction has k²/(m·n). Overlaps are the share of changed "
                  "elements inside the top-p% principal-weight mask (or the bottom-p% |W0| mask); chance is p."),
        table,
    ]
    skipped = geometry.get("skipped") or []
    if skipped:
        reasons = sorted({s["reason"] for s in skipped})
        blocks.append(Paragraph(f"{len(skipped)} tensors were not measured ({'; '.join(reasons)})."))
    ratios = [_ratio(by_kind[k]) for k in kinds]
    colours = [figures.KIND_COLOURS.get(k, "black") for k in kinds]
    blocks.append(figures.emit(
        out_dir, f"{NAME}-principal-energy",
        figures.bars(kinds, ratios, "module kind", r"$\rho_k$ / random baseline (log scale)",
                     "principal energy of the update vs random directions", colours=colours, log=True,
                     hlines=[(1.0, "random directions (= 1)")],
                     bands=[(ON_PRINCIPAL_RATIO, 1e6, "tab:blue", f"on-principal (> {ON_PRINCIPAL_RATIO:g})"),
                            (1e-6, OFF_PRINCIPAL_RATIO, "tab:orange", f"off-principal (< {OFF_PRINCIPAL_RATIO:g})")]),
        "Update energy in the top-k principal block over the random-direction baseline k²/(m·n), per module kind.",
        ["module_kind", "principal_energy", "principal_energy_baseline", "ratio"],
        [[k, *principal_energy(by_kind[k]), r] for k, r in zip(kinds, ratios)]))
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
    energy, baseline = principal_energy(summary)
    return blocks, principal_energy_reading(energy, baseline, summary["principal_angle_max_deg"])


def _gate_three(doc: dict, out_dir: Path) -> tuple[list[Block], Reading]:
    s = doc["summary"]
    table = Table(["model", "value"], [
        ["bitwise sparsity (share of bit-identical elements)", fmt_fraction(s["bitwise_sparsity"])],
        ["changed elements", f"{s['changed']:,} of {s['numel']:,}"],
        ["moved by exactly one ULP (share of moved)", fmt_fraction(s["one_ulp_fraction"])],
        ["absolute tolerance sparsity (|Δ| ≤ 1e-5)", fmt_fraction(s["abs_tolerance_sparsity"].get("1e-05"))],
    ])
    blocks = [table, *ulp_blocks(doc, out_dir, f"{NAME}-ulp-histogram"),
              *hidden_blocks(doc, out_dir, f"{NAME}-hidden")]
    reading = precision_reading(s["bitwise_sparsity"], list(doc["by_dtype"]), fp32_hidden_by_bf16(doc))
    return blocks, Reading("Gate III reading", reading)
