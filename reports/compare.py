"""Run comparison: runs labelled by reward (true, majority, format, random, incorrect, noisy-p, sft),
their parameter metrics and KL (from each run's series) beside their behavior shifts (from the behavior
probe and each run's style.jsonl, with confidence intervals and p-values), behavior shift against parameter
metric across runs and steps with Spearman's rank correlation (within RL or SFT runs, with enough distinct
non-zero points, else the reading says why), runs without learning signal named, and the spread across seeds.

The join and its statistics come from `probes.comparison` (`run_rows`, `points`, `correlate`); this
module only renders them. A behavior shift is never shown without its interval: benchmarks of a few
dozen prompts swing by several points between seeds.

>>> from reports.compare import render_compare_report
>>> render_compare_report(compare_runs(["lab/"]), Path("compare/"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from probes.behavior import METRICS as BEHAVIOR_METRICS
from probes.behavior import SMALL_BENCHMARK_PROMPTS, BehaviorResult, SeedShift, Shift
from probes.comparison import (
    KL_COLUMNS,
    MIN_DISTINCT_NONZERO_POINTS,
    PARAMETER_METRICS,
    Comparison,
    RunRow,
    comparable_groups,
    correlate,
    points,
    run_rows,
)
from reports import figures
from reports.document import Block, Note, Paragraph, Report, Section, Table, fmt_general
from reports.palette import MARKERS, reward_colour
from reports.write import write_report

NAME = "compare"
SHIFT_METRICS = ("accuracy", "code_rate")  # behavior shifts always in the table; the scatter shows every metric
EXTRA_SHIFT_METRICS = ("sampled_accuracy", "sampled_code_rate", "p_style")  # in the table where measured
SHIFT_HEADINGS = {"accuracy": "Δ accuracy", "code_rate": "Δ code rate", "sampled_accuracy": "Δ sampled accuracy",
                  "sampled_code_rate": "Δ sampled code rate", "p_style": "Δ p(style)"}
KL_HEADINGS = {"kl_mean_per_token": "KL / token", "kl_share_first": "KL share: 1st token",
               "kl_share_digit": "KL share: digits"}


@dataclass(frozen=True)
class ParameterAxis:
    """How the comparison shows a registered parameter metric (`probes.comparison.PARAMETER_METRICS`)."""

    label: str       # axis label with unit
    log_axis: bool   # values of different runs span decades (RL vs SFT update norms)
    number: str      # format of one value in the table
    heading: str     # table column


PARAMETER_AXES: dict[str, ParameterAxis] = {
    "bitwise_sparsity": ParameterAxis("bitwise sparsity (bf16, share unchanged)", False, ".4f",
                                      "bitwise sparsity (bf16)"),
    "relative_update_norm": ParameterAxis("‖Δ‖_F / ‖W0‖_F (unitless, log)", True, ".2e", "‖Δ‖/‖W0‖"),
    "principal_energy_ratio": ParameterAxis("ρ_k / random baseline (log)", True, ".3g", "ρ_k / random"),
}
assert tuple(PARAMETER_AXES) == PARAMETER_METRICS


def render_compare_report(comparison: Comparison, out_dir: Path) -> Path:
    """Write `out_dir/compare.md`, `out_dir/compare.html` (self-contained), PNG figures in
    `out_dir/figures/compare-*.png` and their data in `out_dir/data/compare-*.csv`.

    Args:
        comparison: the runs' series (each with its run labels; made with geometry for the ρ_k column)
            and the behavior probe over their generations (`probes.comparison.compare_runs`).
        out_dir: folder to write into (created if missing; files are replaced atomically).
    Returns:
        The path of the HTML page.
    """
    out_dir = Path(out_dir)
    rows = run_rows(comparison, SHIFT_METRICS + EXTRA_SHIFT_METRICS)
    report = Report(
        title="Run comparison: parameter updates and behavior",
        subtitle=[_runs_subtitle(rows), _behavior_subtitle(comparison.behavior)],
        sections=[
            Section("Runs at their last checkpoint", _table_blocks(rows, comparison)),
            Section("Behavior shift against parameter metrics", _scatter_blocks(comparison, out_dir)),
            Section("Seed spread", _spread_blocks(rows, comparison.behavior, out_dir)),
        ],
    )
    return write_report(report, out_dir, NAME)


def _runs_subtitle(rows: list[RunRow]) -> str:
    rewards = dict.fromkeys(row.reward for row in rows)
    folders = sum(len(row.seeds) for row in rows)
    return (f"{len(rows)} run{'s' if len(rows) > 1 else ''}, {folders} run × seed folder{'s' if folders > 1 else ''}; "
            f"rewards: {', '.join(rewards)}")


def _behavior_subtitle(behavior: BehaviorResult | None) -> str:
    if behavior is None:
        return "Behavior: not measured (no generations)."
    return (f"Behavior: `dynamics.behavior/1`, verifier {behavior.verifier}, lengths in {behavior.length_unit}; "
            "shifts are each checkpoint against the run's first generations (step 0 = the base).")


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _interval(ci: Sequence[float] | None) -> str:
    return "" if ci is None else f"[{_signed(ci[0])}, {_signed(ci[1])}]"


def shift_text(shift: Shift | None) -> str:
    """"+0.083 [−0.021, +0.190], p = 0.12 (n = 40)"; a shift without its interval is shown only
    when it rests on at least SMALL_BENCHMARK_PROMPTS prompts, else as "no CI"."""
    if shift is None:
        return "—"
    n = shift.n_prompts
    if shift.ci95 is None and (n is None or n < SMALL_BENCHMARK_PROMPTS):
        return f"no CI (n = {n} prompts)"
    text = f"{_signed(shift.delta)} {_interval(shift.ci95)}".strip()
    if shift.p_value is not None:
        text += f", p = {fmt_general(shift.p_value, 2)}"
    return text + f" (n = {n})"


def seed_shift_text(seed_shift: SeedShift | None, per_seed: Sequence[Shift | None]) -> str:
    """Across seeds: "mean ± std [95% CI across seeds]; p = p of each seed (0.03 / 0.4)"."""
    if seed_shift is None or seed_shift.ci95 is None:
        return "—"
    ps = " / ".join(fmt_general(s.p_value, 2) for s in per_seed if s is not None and s.p_value is not None)
    std = "—" if seed_shift.std is None else f"{seed_shift.std:.3f}"
    return (f"{_signed(seed_shift.mean)} ± {std} {_interval(seed_shift.ci95)}"
            + (f"; p = {ps}" if ps else ""))


def _spread_text(values: Sequence[float | None], mean: float | None, std: float | None, number: str) -> str:
    """"mean ± std" over the seeds that have a value, saying how many when some have none (Δ = 0)."""
    if mean is None:
        return "—"
    text = _unbroken(f"{mean:{number}}" if std is None else f"{mean:{number}} ± {std:{number}}")
    present = sum(v is not None for v in values)
    return text if present == len(values) else f"{text} ({present} of {len(values)} seeds)"


def _unbroken(text: str) -> str:
    """Keep "3.4e-03 ± 1.0e-03" on one line in HTML: U+2212 minus (no break after it) and no-break spaces."""
    return text.replace("-", "−").replace(" ", "\u00a0")


def _shown_metrics(rows: list[RunRow]) -> tuple[list[str], list[str]]:
    """The shift metrics (accuracy and code rate always, the others where any run has one) and the KL columns
    (where any run's last checkpoint has a KL file) the table shows."""
    extra = [m for m in EXTRA_SHIFT_METRICS if any(s is not None for row in rows for s in row.shifts[m])]
    kl = [name for name in KL_COLUMNS if any(row.kl[name].mean is not None for row in rows)]
    return [*SHIFT_METRICS, *extra], kl


def _idle_note(rows: list[RunRow]) -> list[Block]:
    """A reading, not small print, for runs whose advantage was zero for most steps."""
    idle = [(row, seed, z) for row in rows for seed, z in zip(row.seeds, row.zero_advantage)
            if z is not None and z.most]
    if not idle:
        return []
    cases = "; ".join(f"{row.run} seed {seed} ({z.zero_steps} of {z.logged_steps} logged steps)" for row, seed, z in idle)
    return [Paragraph(f"**No learning signal for most steps:** {cases}: every reward of the rollout was equal "
                      "(reward std 0, or reward mean 0 or 1), so the advantage, and the policy gradient, was zero. "
                      "Its sparsity and update norm are those of a run that barely trained, not an effect of its "
                      "reward; it is left out of the rank correlations below.")]


def _table_blocks(rows: list[RunRow], comparison: Comparison) -> list[Block]:
    behavior = comparison.behavior
    shift_metrics, kl_columns = _shown_metrics(rows)
    cells_rows, smallest = [], None
    for row in rows:
        reward = row.reward
        if row.idle_seeds:
            seeds = ", ".join(map(str, row.idle_seeds))
            reward += f" — no learning signal (seed{'s' if len(row.idle_seeds) > 1 else ''} {seeds})"
        cells = [row.run, reward, str(len(row.seeds)), "/".join(map(str, sorted(set(row.last_steps))))]
        cells += [_spread_text(spread.values, spread.mean, spread.std, PARAMETER_AXES[name].number)
                  for name, spread in row.parameters.items()]
        cells += [_spread_text(row.kl[name].values, row.kl[name].mean, row.kl[name].std,
                               ".3g" if name == "kl_mean_per_token" else ".3f") for name in kl_columns]
        for metric in shift_metrics:
            per_seed = row.shifts[metric]
            sizes = [s.n_prompts for s in per_seed if s is not None and s.n_prompts is not None]
            if sizes:
                smallest = min(sizes) if smallest is None else min(smallest, *sizes)
            if len(row.seeds) == 1:
                cells.append(shift_text(per_seed[0]))
            else:
                cells.append(seed_shift_text(row.seed_shift[metric], per_seed))
        cells_rows.append(cells)
    header = ["run", "reward", "seeds", "step", *(PARAMETER_AXES[name].heading for name in PARAMETER_METRICS),
              *(KL_HEADINGS[name] for name in kl_columns), *(SHIFT_HEADINGS[m] for m in shift_metrics)]
    caption = ("Parameter metrics against the base at each run's last checkpoint (seed mean ± std when several "
               "seeds; ρ_k is undefined where Δ = 0). ")
    if kl_columns:
        caption += ("KL: mean KL(π_tuned ‖ π_base) per response token at that checkpoint (`dynamics probe kl`), and "
                    "the share of its sum at the first response token (where the style is chosen) and at digit "
                    "tokens. ")
    kinds = ["accuracy and code rate of greedy responses"]
    if "sampled_accuracy" in shift_metrics or "sampled_code_rate" in shift_metrics:
        kinds.append("sampled ones: each prompt's mean over its samples")
    if "p_style" in shift_metrics:
        kinds.append("p(style): the exact probability of a style opening, from the run's style.jsonl")
    caption += (f"Behavior shifts from the run's first generations to that checkpoint ({'; '.join(kinds)}): one "
                "seed → Δ [95% bootstrap CI over prompts], permutation p-value, n prompts; several seeds → mean ± "
                "std [95% t-interval across seeds] and each seed's p-value.")
    blocks: list[Block] = [Table(header, cells_rows, numeric_from=len(header), caption=caption)]
    blocks += _idle_note(rows)
    if behavior is None:
        blocks.append(Note("No behavior shifts: none of the runs has a `generations.jsonl`. Write one per run with "
                           "`dynamics probe generate CHECKPOINT --prompts P --out RUN/generations.jsonl --run LABEL "
                           "--step N --reward R` (append every checkpoint, step 0 = the base), then run this report "
                           "again."))
    elif smallest is not None and smallest < SMALL_BENCHMARK_PROMPTS:
        blocks.append(Paragraph(f"**Small benchmark:** shifts rest on as few as {smallest} prompts; at this size a "
                                "model swings by several points between seeds, so read the intervals, not the point "
                                "estimates."))
    if any(s.steps[-1].vs_base["geometry"] is None for s in comparison.series):
        blocks.append(Note("ρ_k / random needs the matrix pass: the series were made without geometry "
                           "(`dynamics series RUN --geometry`; `dynamics report compare` runs it)."))
    return blocks


def _styles(groups: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Legend label → (reward colour, marker); runs of one reward family get different markers."""
    styles, used = {}, {}
    for run, reward in groups:
        colour = reward_colour(reward)
        styles[run] = (colour, MARKERS[used.get(colour, 0) % len(MARKERS)])
        used[colour] = used.get(colour, 0) + 1
    return styles


def _metric_label(metric: str, behavior: BehaviorResult | None) -> str:
    if metric == "length":
        return f"Δ length ({behavior.length_unit if behavior is not None else 'words'})"
    if metric == "p_style":
        return "Δ p(style) (probability, teacher-forced)"
    return f"Δ {metric.replace('_', ' ')} (share of responses)"


def _ci(shift: Shift) -> tuple[float | None, float | None]:
    return tuple(shift.ci95) if shift.ci95 is not None else (None, None)


def _scatter_blocks(comparison: Comparison, out_dir: Path) -> list[Block]:
    behavior = comparison.behavior
    if behavior is None and comparison.style is None:
        return [Note("No behavior probe results, so there is nothing to plot against the parameter metrics "
                     "(see the note above for how to write generations).")]
    joined = points(comparison)
    if not joined:
        return [Note("The behavior shifts name no (run, seed, step) that the series have: check that the "
                     "generations' run labels, seeds and steps match the checkpoints.")]
    metrics = [m for m in (*BEHAVIOR_METRICS, "p_style") if any(p.shift.metric == m for p in joined)]
    styles = _styles(list(dict.fromkeys((p.run, p.reward) for p in joined)))
    header = ["run", "reward", "seed", "step", "metric", "delta", "ci95_low", "ci95_high", "p_value", "n_prompts",
              *PARAMETER_METRICS]
    blocks: list[Block] = []
    table_rows, not_shown = [], []
    left_out: list[tuple[str, int]] = []
    for metric in metrics:
        chosen_points = [p for p in joined if p.shift.metric == metric]
        groups, left_out = comparable_groups(chosen_points, comparison)
        cells, titles = [], []
        for name in PARAMETER_METRICS:
            parts = []
            for group, group_points in groups.items():
                _, r = correlate(group_points, name, positive_only=PARAMETER_AXES[name].log_axis)
                if r.rho is not None:
                    parts.append(f"{group}: ρ = {r.rho:+.2f} (p = {r.p_value:.2g}, n = {r.n})")
                else:
                    parts.append(f"{group}: ρ not shown")
                    not_shown.append(f"{metric.replace('_', ' ')} vs {name.replace('_', ' ')} in {group} runs: "
                                     f"{r.undefined} (n = {r.n})")
                table_rows.append([metric, group, name, fmt_general(r.rho, 2), fmt_general(r.p_value, 2), str(r.n)])
            titles.append("; ".join(parts) if parts else "Spearman ρ: no points")
            chosen, _ = correlate(chosen_points, name, positive_only=PARAMETER_AXES[name].log_axis)
            cells.append([(p.parameters[name], p.shift.delta, *_ci(p.shift), p.run) for p in chosen])
        fig = figures.scatter_grid([_metric_label(metric, behavior)], [PARAMETER_AXES[n].label for n in PARAMETER_METRICS],
                                   [cells], [titles], styles, [PARAMETER_AXES[n].log_axis for n in PARAMETER_METRICS])
        blocks.append(figures.emit(
            out_dir, f"{NAME}-{metric.replace('_', '-')}-vs-parameters", fig,
            f"{metric.replace('_', ' ').capitalize()} shift since each run's first generations (vertical bar: 95% CI "
            "over prompts) against parameter metrics of the same checkpoint against the base; one point per run, "
            "seed and checkpoint (log axes leave out checkpoints with Δ = 0). Colour: reward; marker: run. "
            "Titles: Spearman ρ within RL runs and within SFT runs, never pooled.",
            header, [[p.run, p.reward, p.seed, p.step, metric, p.shift.delta, *_ci(p.shift), p.shift.p_value,
                      p.shift.n_prompts, *[p.parameters[n] for n in PARAMETER_METRICS]]
                     for p in chosen_points]))
    reading = (f"Rank correlations are shown only within one comparable group (RL runs apart from SFT, which moves "
               f"weights by orders of magnitude more) and only with at least {MIN_DISTINCT_NONZERO_POINTS} distinct "
               "points whose shift is not zero: with fewer, ρ and its p-value rest on ties at zero.")
    if left_out:
        reading += (" Left out as not trained (zero advantage for most steps): "
                    + ", ".join(f"{run} seed {seed}" for run, seed in left_out) + ".")
    if not_shown:
        reading += " Not shown: " + "; ".join(not_shown) + "."
    blocks.append(Paragraph(reading))
    blocks.append(Table(["behavior metric", "group", "parameter metric", "Spearman ρ", "p-value", "points"],
                        table_rows, numeric_from=3,
                        caption="Rank correlation of each behavior shift with each parameter metric within each "
                                "group (the panel titles; blank where not shown, see above). The p-values treat the "
                                "points as independent, which checkpoints of one run are not: read them as a guide."))
    return blocks


def _spread_blocks(rows: list[RunRow], behavior: BehaviorResult | None, out_dir: Path) -> list[Block]:
    if all(len(row.seeds) < 2 for row in rows):
        return [Paragraph("Every run has one seed: there is no spread across seeds to show. Train more seeds "
                          "(`dynamics lab run --seeds 1 2 3`) to see how far runs with the same reward disagree.")]
    labels = [row.run for row in rows]
    colours = [reward_colour(row.reward) for row in rows]
    panels: dict[str, list[figures.Spread]] = {}
    data = []
    for metric in _shown_metrics(rows)[0] if behavior is not None else ():
        if not any(row.shift_spread[metric].present for row in rows):
            continue
        spreads = []
        for row in rows:
            spread = row.shift_spread[metric]
            spreads.append((list(spread.present), spread.mean, spread.std))
            data += [[row.run, seed, f"delta_{metric}", s.delta] for seed, s in zip(row.seeds, row.shifts[metric])
                     if s is not None]
        panels[_metric_label(metric, behavior)] = spreads
    for name in PARAMETER_METRICS[:2]:
        spreads = []
        for row in rows:
            spread = row.parameters[name]
            spreads.append((list(spread.present), spread.mean, spread.std))
            data += [[row.run, seed, name, v] for seed, v in zip(row.seeds, spread.values)]
        panels[PARAMETER_AXES[name].label] = spreads
    log_panels = [axis.label for axis in PARAMETER_AXES.values() if axis.log_axis]
    fig = figures.seed_spread(labels, panels, colours, log_panels=log_panels)
    return [figures.emit(out_dir, f"{NAME}-seed-spread", fig,
                         "Each run's seeds at their last checkpoint (dots) and their mean ± one standard deviation "
                         "(diamond and bar; behavior: the probe's across-seed mean and std).",
                         ["run", "seed", "metric", "value"], data)]
