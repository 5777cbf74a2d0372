"""Three-gate report: Gate I (KL drift and its top tokens beside the relative update norm, or what
to run to measure it), Gate II (update geometry per module kind, every registered matrix metric;
curvature alignment with the Fisher probe and with Adam's v), Gate III (precision: bitwise sparsity, ULP
distances, bf16 visibility; with an optimizer analysis, every master element's flip classified and the
next step's flips predicted). Each gate ends with a one-line reading from `reports.readings`; a missing input is
stated, not hidden.

>>> from reports.three_gate import render_three_gate_report
>>> render_three_gate_report(DiffResult.read_json("diff.json"), Path("report/"),
...                          kl=KLResult.read_json("kl.json"))   # → report/three-gate.html
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dynamics.metrics import MASK_PERCENT, METRICS, derived_metrics, format_value, matrix_metrics, probe_value
from dynamics.result import BLOCKS, DiffResult, geometry_means
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
    mask_overlap_reading,
    precision_reading,
    principal_energy_reading,
)
from reports.sections import (
    caution_blocks,
    fp32_hidden_by_bf16,
    hidden_blocks,
    registered_matrix_table,
    subtitle,
    ulp_blocks,
    unpaired_blocks,
)
from reports.write import write_report

if TYPE_CHECKING:  # probes.kl imports transformers; the report only reads the result's fields
    from dynamics.optimizer_analysis import OptimizerResult
    from probes.fisher import FisherResult
    from probes.kl import KLResult

NAME = "three-gate"
TOP_KL_TOKENS = 10
FISHER_SHARE_OVER_CHANCE = "fisher_share_over_chance"


def render_three_gate_report(result: DiffResult, out_dir: Path, kl: KLResult | None = None,
                             fisher: FisherResult | None = None, optimizer: OptimizerResult | None = None,
                             masters: DiffResult | None = None) -> Path:
    """Write `out_dir/three-gate.md`, `out_dir/three-gate.html` (self-contained), PNG figures in
    `out_dir/figures/three-gate-*.png` and their data in `out_dir/data/three-gate-*.csv`.

    Args:
        result: the diff (`dynamics.diff`, or `DiffResult.read_json`); Gate II needs one made with
            the matrix pass (`geometry=GeometryOptions(...)`, `dynamics diff --geometry`).
        out_dir: folder to write into (created if missing; files are replaced atomically).
        kl: KL drift of the same pair (`probes.kl`, `KLResult.read_json`), for Gate I.
        fisher: curvature alignment of the same pair (`probes.fisher`, `FisherResult.read_json`),
            for Gate II.
        optimizer: the same pair's optimizer analysis (`dynamics.optimizer_analysis`,
            `OptimizerResult.read_json`): Adam's v as curvature in Gate II, flips per weight in Gate III.
        masters: the same run's fp32 master weights diffed against their fp32 start, with the matrix
            pass: Gate II shows its update mask's overlaps beside the stored weights' ones.
    Returns:
        The path of the HTML page.
    """
    out_dir = Path(out_dir)
    gate1, reading1 = _gate_one(result, kl, out_dir)
    gate2, reading2 = _gate_two(result, fisher, out_dir, masters)
    gate2 += _adam_curvature_blocks(result, optimizer, fisher)
    gate3, reading3 = _gate_three(result, out_dir)
    gate3 += _flip_blocks(result, optimizer)
    glance = Table(["gate", "reading"], [["I · KL anchor", reading1.text], ["II · geometry", reading2.text],
                                         ["III · precision", reading3.text]], numeric_from=2)
    report = Report(
        title="Three-gate report",
        subtitle=subtitle(result),
        sections=[
            Section("Readings at a glance", [*caution_blocks(result), glance, *unpaired_blocks(result)]),
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


def _gate_two(result: DiffResult, fisher: FisherResult | None, out_dir: Path,
              masters: DiffResult | None) -> tuple[list[Block], Reading]:
    blocks, reading = _geometry_blocks(result, out_dir, masters)
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


def _geometry_blocks(result: DiffResult, out_dir: Path, masters: DiffResult | None) -> tuple[list[Block], str]:
    summary = geometry_means(result.records)
    if summary is None:
        why = ("no 2-D weight was measured (every matrix was skipped)" if result.geometry_skipped
               else "the diff was made without the matrix pass")
        text = (f"No update geometry: {why}. Rerun `dynamics diff A B --geometry --json diff.json` "
                "(add `--rank-k K` to choose the top-k subspace, default min(64, min(m, n) // 8) per matrix) and render this report from that file.")
        return [Note(text)], "geometry not measured — rerun `dynamics diff A B --geometry`."
    measured = [r for r in result.records if r.geometry is not None]
    scopes = {scope: rs for scope, rs in result.scope_groups().items() if any(r.geometry for r in rs)}
    headline = BLOCKS if BLOCKS in scopes else "all matrices"
    scopes = scopes or {headline: result.records}
    by_scope = {scope: matrix_metrics(rs) for scope, rs in scopes.items()}
    means = {scope: geometry_means(rs) for scope, rs in scopes.items()}
    master_values = ({scope: matrix_metrics(rs) for scope, rs in masters.scope_groups().items()}
                     if masters is not None and masters.has_geometry() else {})
    if masters is not None and not master_values.get(headline):
        master_values.setdefault(headline, matrix_metrics(masters.records))
    stored = "/".join(dict.fromkeys(_short(r.dtype) for r in measured))
    chance = int(MASK_PERCENT) / 100
    outside = ", ".join(f"{scope} ({fmt_count(len([r for r in rs if r.geometry]))})"
                        for scope, rs in scopes.items() if scope != headline)
    blocks: list[Block] = [Paragraph(
        f"**What was computed.** Top-k singular subspaces of W0 and W1 (k = {fmt_general(summary['k'])} on "
        f"average) for {len(measured)} matrices: headline numbers are over the {headline}' "
        f"{fmt_count(len([r for r in scopes[headline] if r.geometry]))} matrices"
        + (f"; {outside} are shown apart (a vocabulary-wide matrix can carry most of the update on its own)"
           if outside else "")
        + f". Precision: W0, W1, Δ and the SVDs in float32 from the stored {stored} weights, ratios in float64; "
        f"the update mask marks the elements whose stored {stored} bits differ, so it sees only the moves "
        f"{stored} storage keeps. Nulls: ρ_k (share of ‖Δ‖_F² inside U0_kᵀ Δ V0_k) against a random "
        "direction's share k²/(m·n); the overlap of the update mask with the top-p% principal-weight mask "
        "(|U0_k Σ0_k V0_kᵀ|) and the bottom-p% |W0| mask against the chance p and against the "
        "magnitude-stratified chance Σ_e f_e·|M ∩ B_e| / Σ_e f_e·|B_e| (flips placed at random within each "
        "exponent bucket B_e of |W0|, f_e the bucket's flip rate), the overlap precision alone produces.")]
    ratio, median = "principal_energy_ratio", "principal_energy_ratio_median"
    blocks.append(Table(
        ["scope", "matrices", METRICS[ratio].label, METRICS[median].label, "max angle (°, mean over matrices)"],
        [[scope, fmt_count(means[scope]["matrices"]), format_value(ratio, by_scope[scope][ratio]),
          format_value(median, by_scope[scope][median]), fmt_general(means[scope]["principal_angle_max_deg"])]
         for scope in scopes],
        caption="Principal energy over the random-direction baseline: Δ-weighted (each matrix weighted by its "
                "‖Δ‖_F²) and the median over matrices (each counts once)"))
    blocks.append(_mask_table(scopes, by_scope, master_values, chance, stored))
    blocks.append(_kind_table(result))
    blocks.append(registered_matrix_table(result))
    if result.geometry_skipped:
        reasons = sorted({s["reason"] for s in result.geometry_skipped})
        blocks.append(Paragraph(f"{len(result.geometry_skipped)} tensors were not measured ({'; '.join(reasons)})."))
    blocks += _geometry_figures(result, scopes[headline], headline, masters, out_dir)
    values = by_scope[headline]
    reading = principal_energy_reading(values[ratio], means[headline]["principal_angle_max_deg"])
    reading = (f"{headline} ({fmt_count(means[headline]['matrices'])} matrices, Δ-weighted; median over matrices "
               f"{format_value(median, values[median])}×) — {reading}")
    flagged = values["gap_flagged_matrices"]
    if flagged:
        reading += (f" The angles rest in part on {fmt_count(flagged)} of {fmt_count(means[headline]['matrices'])} "
                    "matrices whose spectral gap σ_k − σ_{k+1} of W0 is at most ‖Δ‖₂ (Wedin's bound excludes no "
                    "angle there): read them as swaps of near-equal directions, not rotations.")
    for name, mask in (("low_magnitude", "low-|W0|"), ("principal", "principal-weight")):
        fp32 = master_values.get(headline, {}).get(f"{name}_overlap")
        reading += " " + mask_overlap_reading(f"{mask} mask (p = {MASK_PERCENT}%)", values[f"{name}_overlap"],
                                              chance, values[f"{name}_stratified_chance"], stored, fp32)
    return blocks, reading


def _mask_table(scopes: dict, by_scope: dict, master_values: dict, chance: float, stored: str) -> Table:
    """Overlap of the update mask with each mask per scope, against chance p and the stratified chance."""
    header = ["scope", "mask", f"overlap ({stored} update mask)", "chance p", "magnitude-stratified chance",
              "overlap / stratified chance"]
    if master_values:
        header.append("overlap (fp32 masters' update mask)")
    rows = []
    for scope in scopes:
        for name, mask in (("low_magnitude", "bottom-p% |W0|"), ("principal", "top-p% principal weights")):
            values = by_scope[scope]
            row = [scope, mask, fmt_fraction(values[f"{name}_overlap"], 3), fmt_fraction(chance, 3),
                   fmt_fraction(values[f"{name}_stratified_chance"], 3),
                   format_value(f"{name}_overlap_over_stratified", values[f"{name}_overlap_over_stratified"])]
            if master_values:
                row.append(fmt_fraction(master_values.get(scope, {}).get(f"{name}_overlap"), 3))
            rows.append(row)
    return Table(header, rows, caption=(
        f"Mask overlaps at p = {MASK_PERCENT}%: share of the changed elements inside the mask, pooled over the "
        "scope's matrices (update-weighted), against chance p and against the magnitude-stratified chance"
        + ("; the fp32 masters' update mask is the same run's float32 weights compared bit by bit" if master_values
           else "; no fp32 masters given (`--masters DIFF.json` of the same run's float32 weights)")))


def _kind_table(result: DiffResult) -> Table:
    """Per module kind: subspace rotation and drift (means over matrices), mask overlaps (update-weighted)."""
    rows = []
    for kind, records in result.module_kind_groups().items():
        m = geometry_means(records)
        if m is None:
            continue
        values = matrix_metrics(records)
        rows.append([kind, fmt_count(m["matrices"]), fmt_general(m["k"]), fmt_general(m["principal_angle_max_deg"]),
                     fmt_sci(m["spectrum_drift_mean"]), *(fmt_fraction(values[name], 3) for name in (
                         "principal_overlap", "principal_stratified_chance",
                         "low_magnitude_overlap", "low_magnitude_stratified_chance"))])
    return Table(["module kind", "matrices", "k", "max angle (°)", "spectrum drift",
                  f"principal overlap (p={MASK_PERCENT}%)", "… stratified chance",
                  f"low-|W0| overlap (p={MASK_PERCENT}%)", "… stratified chance"], rows,
                 caption=f"Per module kind: angle and drift are means over matrices; overlaps are pooled over "
                         f"the kind's changed elements; chance overlap = {int(MASK_PERCENT) / 100:g}")


def _geometry_figures(result: DiffResult, headline_records: list, headline: str, masters: DiffResult | None,
                      out_dir: Path) -> list[Block]:
    by_kind = {k: m for k, rs in result.module_kind_groups().items() if (m := geometry_means(rs)) is not None}
    kinds = list(by_kind)
    ratios = [by_kind[k]["principal_energy_ratio"] for k in kinds]
    colours = [figures.KIND_COLOURS.get(k, "black") for k in kinds]
    blocks: list[Block] = [figures.emit(
        out_dir, f"{NAME}-principal-energy",
        figures.bars(kinds, ratios, "module kind", r"$\rho_k$ / random baseline (log scale)",
                     "principal energy of the update vs random directions", colours=colours, log=True,
                     hlines=[(1.0, "random directions (= 1)")],
                     bands=[(ON_PRINCIPAL_RATIO, 1e6, "tab:blue", f"on-principal (> {ON_PRINCIPAL_RATIO:g})"),
                            (1e-6, OFF_PRINCIPAL_RATIO, "tab:orange", f"off-principal (< {OFF_PRINCIPAL_RATIO:g})")]),
        f"{METRICS['principal_energy_ratio'].label} per module kind: update energy in the top-k principal block "
        "over the random-direction baseline k²/(m·n).",
        ["module_kind", "principal_energy_weighted", "principal_energy_ratio"],
        [[k, by_kind[k]["principal_energy_weighted"], r] for k, r in zip(kinds, ratios)])]
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
    means = geometry_means(headline_records)
    percents = list(means["principal_mask_overlap"])
    curves = {"principal-weight mask": [means["principal_mask_overlap"].get(q) for q in percents],
              "low-|W0| mask": [means["low_magnitude_mask_overlap"].get(q) for q in percents]}
    nulls = {"… its stratified chance": [means["principal_mask_stratified_chance"].get(q) for q in percents],
             "… its stratified chance ": [means["low_magnitude_mask_stratified_chance"].get(q) for q in percents]}
    master_means = None if masters is None else geometry_means(masters.scope_groups().get(BLOCKS, masters.records))
    if master_means is not None:
        curves["low-|W0| mask, fp32 masters"] = [master_means["low_magnitude_mask_overlap"].get(q) for q in percents]
    blocks.append(figures.emit(
        out_dir, f"{NAME}-mask-overlap",
        figures.overlap_vs_chance([float(q) for q in percents], curves, nulls=nulls,
                                  title=f"update mask overlap vs chance ({headline})"),
        f"Share of changed elements inside the top-p% principal-weight mask and the bottom-p% |W0| mask, mean over "
        f"the {headline}' matrices, against chance (dashed) and each mask's magnitude-stratified chance (dotted, "
        "same colour: flips placed at random within each exponent bucket of |W0|)"
        + ("; the fp32 masters' update mask of the same run beside them." if master_means is not None else "."),
        ["p_percent", "principal_mask_overlap", "principal_mask_stratified_chance", "low_magnitude_mask_overlap",
         "low_magnitude_mask_stratified_chance", "low_magnitude_mask_overlap_fp32_masters"],
        [[q, curves["principal-weight mask"][i], nulls["… its stratified chance"][i], curves["low-|W0| mask"][i],
          nulls["… its stratified chance "][i],
          None if master_means is None else master_means["low_magnitude_mask_overlap"].get(q)]
         for i, q in enumerate(percents)]))
    return blocks


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}.get(dtype, dtype)


def _optimizer_note(result: DiffResult, what: str) -> Note:
    return Note(f"No optimizer analysis: run `dynamics optimizer {result.a.path} {result.b.path} --json optimizer.json` "
                f"(TUNED's optimizer.pt or DeepSpeed optim states; `--next` the following checkpoint) and render "
                f"again with `--optimizer optimizer.json` to see {what}.")


def _adam_curvature_blocks(result: DiffResult, optimizer: OptimizerResult | None,
                           fisher: FisherResult | None) -> list[Block]:
    """Adam's v as the Fisher: share of ‖Δ‖² on its top-q% coordinates, beside the Fisher probe's."""
    if optimizer is None:
        return [_optimizer_note(result, "how much of ‖Δ‖² falls on the coordinates Adam's v ranks highest")]
    m = optimizer.to_json()["summary"]
    if not m["matrices"]:
        return [Note(f"The optimizer analysis found no Adam state for a 2-D weight ({optimizer.optimizer}).")]
    fisher_ratio = {} if fisher is None else {
        f"{float(q):g}": probe_value(FISHER_SHARE_OVER_CHANCE, fisher, float(q)) for q in fisher.q_percent}
    rows = [[f"q = {q}%", fmt_fraction(m["v_top_share"][q]), fmt_fraction(m["v_top_share_chance"][q]),
             fmt_general(m["v_top_share_over_chance"][q]), fmt_general(fisher_ratio.get(q))]
            for q in m["v_top_share"]]
    table = Table(["top-q% of Adam's v", "share of ‖Δ‖²", "chance", "share / chance", "Fisher probe: share / chance"],
                  rows, caption=f"v = exp_avg_sq of {optimizer.optimizer}, an EMA of g² under the training "
                                f"distribution, over {fmt_count(m['matrices'])} matrices; Spearman ρ(|Δ|, v) over "
                                f"changed weights {fmt_general(m['v_spearman'])}; cosine of Δ with the last "
                                f"steps' momentum direction −m̂/(√v̂+ε) {fmt_general(m['momentum_cosine'])}. "
                                "— in the Fisher column: no Fisher probe at that q (`--fisher`).")
    return [Paragraph("Curvature from the optimizer (Adam's second moment):"), table]


def _flip_blocks(result: DiffResult, optimizer: OptimizerResult | None) -> list[Block]:
    """Every fp32 master element moved-and-flipped / moved-but-hidden / unmoved, per module kind."""
    if optimizer is None:
        return [_optimizer_note(result, "which master updates bf16 shows, which it hides, and the next step's flips")]
    doc = optimizer.to_json()
    if not doc["summary"]["classified"]:
        return [Note("The tuned side holds no fp32 masters: there is no hidden update to classify "
                     "(pass the masters, e.g. a DeepSpeed folder, an fp32 HF Trainer checkpoint).")]
    names = ("moved_flipped_share", "moved_hidden_share", "unmoved_share", "flip_prediction_precision",
             "flip_prediction_recall")
    rows = [[group, fmt_count(row["classified"]), *(format_value(n, row[n]) for n in names)]
            for group, row in {"model": doc["summary"], **doc["by_module_kind"]}.items()]
    table = Table(["group", "master elements", *(METRICS[n].label for n in names)], rows,
                  caption="Masters of both steps against their stored bf16 values; the prediction (from TUNED's "
                          "Adam state) against the next checkpoint's stored values, n/a without `--next`.")
    histogram = doc["summary"]["hidden_drift_histogram"]
    labels = [f"[{i / 10:.1f}, {(i + 1) / 10:.1f})" for i in range(9)] + ["[0.9, 1.0]", "> 1"]
    drift = Table(["accumulated drift (half-ULPs)", "hidden elements"],
                  [[label, fmt_count(c)] for label, c in zip(labels, histogram)],
                  caption="|master − stored bf16| of the moved-but-hidden elements in units of half the gap to "
                          "the bf16 neighbour on the drift's side: at 1 the next push carries it over.")
    return [Paragraph("Flips explained weight by weight (fp32 masters):"), table, drift]


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
