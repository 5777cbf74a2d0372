"""Run comparison: runs labelled by reward (true, majority, format, random, incorrect, noisy-p, sft),
their parameter metrics (from each run's series) beside their behavior shifts (from the behavior
probe, with its confidence intervals and p-values), behavior shift against parameter metric across
runs and steps with Spearman's rank correlation, and the spread across seeds.

A behavior shift is never shown without its interval: benchmarks of a few dozen prompts swing by
several points between seeds.

>>> from reports.compare import render_compare_report
>>> render_compare_report([series_doc_1, series_doc_2], behavior_doc, Path("compare/"))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from dynamics.series import SCHEMA as SERIES_SCHEMA
from dynamics.series import Series
from probes.behavior import SCHEMA as BEHAVIOR_SCHEMA
from probes.behavior import SMALL_BENCHMARK_PROMPTS
from reports import figures
from reports.document import Block, Note, Paragraph, Report, Section, Table, fmt_general, write_report
from reports.load import ReportError, load_document
from reports.palette import MARKERS, reward_colour

NAME = "compare"
SHIFT_METRICS = ("accuracy", "code_rate")  # behavior shifts in the table; the scatter shows every metric
MIN_POINTS_FOR_CORRELATION = 3


@dataclass(frozen=True)
class ParameterMetric:
    key: str
    label: str       # axis label with unit
    log_axis: bool   # values of different runs span decades (RL vs SFT update norms)
    number: str      # format of one value in the table


PARAMETER_METRICS = (
    ParameterMetric("bitwise_sparsity", "bitwise sparsity (bf16, share unchanged)", False, ".4f"),
    ParameterMetric("relative_update_norm", "‖Δ‖_F / ‖W0‖_F (unitless, log)", True, ".2e"),
    ParameterMetric("principal_energy_ratio", "ρ_k / random baseline (log)", True, ".3g"),
)


def render_compare_report(series_docs: Sequence[dict | Series | str | Path], behavior: dict | str | Path | None,
                          out_dir: Path) -> Path:
    """Write `out_dir/compare.md`, `out_dir/compare.html` (self-contained), PNG figures in
    `out_dir/figures/compare-*.png` and their data in `out_dir/data/compare-*.csv`.

    Args:
        series_docs: one `dynamics.series/1` document per run and seed (dict, `Series` or path), each
            with its "run" labels (run, reward, seed); made with geometry for the ρ_k column.
        behavior: the `dynamics.behavior/1` document of the runs' generations (the run and seed labels
            must match the series'), or None when no generations exist.
        out_dir: folder to write into (created if missing; files are replaced atomically).
    Returns:
        The path of the HTML page.
    """
    docs = [load_document(d.to_json() if isinstance(d, Series) else d, SERIES_SCHEMA) for d in series_docs]
    for doc in docs:
        if not doc.get("run"):
            raise ReportError(f"series of {doc['run_dir']}: no run label; give run, reward and seed (run.json or "
                              "a manifest)")
    behavior = None if behavior is None else load_document(behavior, BEHAVIOR_SCHEMA)
    out_dir = Path(out_dir)
    runs = _group_by_run(docs)
    report = Report(
        title="Run comparison: parameter updates and behavior",
        subtitle=[_runs_subtitle(runs, docs), _behavior_subtitle(behavior)],
        sections=[
            Section("Runs at their last checkpoint", _table_blocks(runs, behavior)),
            Section("Behavior shift against parameter metrics", _scatter_blocks(docs, behavior, out_dir)),
            Section("Seed spread", _spread_blocks(runs, behavior, out_dir)),
        ],
    )
    return write_report(report, out_dir, NAME)


def _group_by_run(docs: list[dict]) -> dict[str, list[dict]]:
    runs: dict[str, list[dict]] = {}
    for doc in docs:
        runs.setdefault(doc["run"]["run"], []).append(doc)
    for label, seeds in runs.items():
        seeds.sort(key=lambda d: d["run"]["seed"])
        if len({d["run"]["seed"] for d in seeds}) < len(seeds):
            raise ReportError(f"run {label}: two folders with the same seed")
    return runs


def _runs_subtitle(runs: dict[str, list[dict]], docs: list[dict]) -> str:
    rewards = dict.fromkeys(seeds[0]["run"]["reward"] for seeds in runs.values())
    return (f"{len(runs)} run{'s' if len(runs) > 1 else ''}, {len(docs)} run × seed folder{'s' if len(docs) > 1 else ''}; "
            f"rewards: {', '.join(rewards)}")


def _behavior_subtitle(behavior: dict | None) -> str:
    if behavior is None:
        return "Behavior: not measured (no generations)."
    unit = behavior.get("length_unit", "words")
    return (f"Behavior: `dynamics.behavior/1`, verifier {behavior.get('verifier', '?')}, lengths in {unit}; "
            "shifts are each checkpoint against the run's first generations (step 0 = the base).")


def parameter_value(step: dict, key: str) -> float | None:
    """A parameter metric of a series step against the base; bitwise sparsity of the bf16 tensors
    when the checkpoint has any, else over all tensors."""
    metrics = step["vs_base"]
    if key == "bitwise_sparsity":
        return metrics["bitwise_sparsity_by_dtype"].get("bfloat16", metrics["bitwise_sparsity"])
    if key == "principal_energy_ratio":
        return None if metrics["geometry"] is None else metrics["geometry"]["principal_energy_ratio"]
    return metrics[key]


def _shift(behavior: dict | None, run: str, seed: int, step: int, metric: str) -> dict | None:
    if behavior is None:
        return None
    return next((s for s in behavior["shifts"] if s["run"] == run and s["seed"] == seed
                 and s["to_step"] == step and s["metric"] == metric), None)


def _seed_shift(behavior: dict | None, run: str, step: int, metric: str) -> dict | None:
    if behavior is None:
        return None
    return next((s for s in behavior["seed_shifts"] if s["run"] == run and s["to_step"] == step
                 and s["metric"] == metric), None)


def _signed(x: float) -> str:
    return f"{x:+.3f}".replace("-", "−")


def _interval(ci: Sequence[float] | None) -> str:
    return "" if ci is None else f"[{_signed(ci[0])}, {_signed(ci[1])}]"


def shift_text(shift: dict | None) -> str:
    """"+0.083 [−0.021, +0.190], p = 0.12 (n = 40)"; a shift without its interval is shown only
    when it rests on at least SMALL_BENCHMARK_PROMPTS prompts, else as "no CI"."""
    if shift is None:
        return "—"
    n = shift.get("n_prompts")
    if shift.get("ci95") is None and (n is None or n < SMALL_BENCHMARK_PROMPTS):
        return f"no CI (n = {n} prompts)"
    text = f"{_signed(shift['delta'])} {_interval(shift.get('ci95'))}".strip()
    if shift.get("p_value") is not None:
        text += f", p = {fmt_general(shift['p_value'], 2)}"
    return text + f" (n = {n})"


def seed_shift_text(seed_shift: dict | None, per_seed: list[dict | None]) -> str:
    """Across seeds: "mean ± std [95% CI across seeds]; p = p of each seed (0.03 / 0.4)"."""
    if seed_shift is None or seed_shift.get("ci95") is None:
        return "—"
    ps = " / ".join(fmt_general(s["p_value"], 2) for s in per_seed if s is not None and s.get("p_value") is not None)
    return (f"{_signed(seed_shift['mean'])} ± {seed_shift['std']:.3f} {_interval(seed_shift['ci95'])}"
            + (f"; p = {ps}" if ps else ""))


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof 1) of the seeds' values; std None for one seed."""
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return float(np.mean(present)), float(np.std(present, ddof=1)) if len(present) > 1 else None


def _spread_text(values: list[float | None], number: str) -> str:
    """"mean ± std" over the seeds that have a value, saying how many when some have none (Δ = 0)."""
    mean, std = _mean_std(values)
    if mean is None:
        return "—"
    text = _unbroken(f"{mean:{number}}" if std is None else f"{mean:{number}} ± {std:{number}}")
    present = sum(v is not None for v in values)
    return text if present == len(values) else f"{text} ({present} of {len(values)} seeds)"


def _unbroken(text: str) -> str:
    """Keep "3.4e-03 ± 1.0e-03" on one line in HTML: U+2212 minus (no break after it) and no-break spaces."""
    return text.replace("-", "−").replace(" ", "\u00a0")


def _table_blocks(runs: dict[str, list[dict]], behavior: dict | None) -> list[Block]:
    rows, smallest = [], None
    for label, seeds in runs.items():
        last = [doc["steps"][-1] for doc in seeds]
        steps = sorted({s["step"] for s in last})
        cells = [label, seeds[0]["run"]["reward"], str(len(seeds)), "/".join(map(str, steps))]
        cells += [_spread_text([parameter_value(s, m.key) for s in last], m.number)
                  for m in PARAMETER_METRICS]
        for metric in SHIFT_METRICS:
            per_seed = [_shift(behavior, label, d["run"]["seed"], s["step"], metric) for d, s in zip(seeds, last)]
            for shift in per_seed:
                if shift is not None and shift.get("n_prompts") is not None:
                    smallest = shift["n_prompts"] if smallest is None else min(smallest, shift["n_prompts"])
            if len(seeds) == 1:
                cells.append(shift_text(per_seed[0]))
            else:
                cells.append(seed_shift_text(_seed_shift(behavior, label, max(steps), metric), per_seed))
        rows.append(cells)
    header = ["run", "reward", "seeds", "step", "bitwise sparsity (bf16)", "‖Δ‖/‖W0‖", "ρ_k / random",
              "Δ accuracy", "Δ code rate"]
    blocks: list[Block] = [Table(header, rows, numeric_from=len(header), caption=(
        "Parameter metrics against the base at each run's last checkpoint (seed mean ± std when several seeds; "
        "ρ_k is undefined where Δ = 0). "
        "Behavior shifts from the run's first generations to that checkpoint: one seed → Δ [95% bootstrap CI over "
        "prompts], permutation p-value, n prompts; several seeds → mean ± std [95% t-interval across seeds] and "
        "each seed's p-value."))]
    if behavior is None:
        blocks.append(Note("No behavior shifts: none of the runs has a `generations.jsonl`. Write one per run with "
                           "`dynamics probe generate CHECKPOINT --prompts P --out RUN/generations.jsonl --run LABEL "
                           "--step N --reward R` (append every checkpoint, step 0 = the base), then run this report "
                           "again."))
    elif smallest is not None and smallest < SMALL_BENCHMARK_PROMPTS:
        blocks.append(Paragraph(f"**Small benchmark:** shifts rest on as few as {smallest} prompts; at this size a "
                                "model swings by several points between seeds, so read the intervals, not the point "
                                "estimates."))
    if any(d["steps"][-1]["vs_base"]["geometry"] is None for seeds in runs.values() for d in seeds):
        blocks.append(Note("ρ_k / random needs the matrix pass: the series were made without geometry "
                           "(`dynamics series RUN --geometry`; `dynamics report compare` runs it)."))
    return blocks


@dataclass(frozen=True)
class _Point:
    run: str
    reward: str
    seed: int
    step: int
    shift: dict
    parameters: dict[str, float | None]


def _points(docs: list[dict], behavior: dict) -> list[_Point]:
    """Every (run, seed, step) that has both a series step and behavior shifts to that step."""
    points = []
    for doc in docs:
        label, seed = doc["run"]["run"], doc["run"]["seed"]
        for step in doc["steps"]:
            parameters = {m.key: parameter_value(step, m.key) for m in PARAMETER_METRICS}
            for shift in behavior["shifts"]:
                if shift["run"] == label and shift["seed"] == seed and shift["to_step"] == step["step"]:
                    points.append(_Point(label, doc["run"]["reward"], seed, step["step"], shift, parameters))
    return points


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's ρ between x and y and its two-sided p-value (scipy); (None, None) with fewer than
    MIN_POINTS_FOR_CORRELATION points or when either side is constant."""
    if len(x) < MIN_POINTS_FOR_CORRELATION or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


def _why_undefined(x: list[float], points: list[_Point]) -> str:
    if len(x) < MIN_POINTS_FOR_CORRELATION:
        return "< 3 points"
    return "shift constant" if len({p.shift["delta"] for p in points}) < 2 else "x constant"


def _styles(groups: list[tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """Legend label → (reward colour, marker); runs of one reward family get different markers."""
    styles, used = {}, {}
    for run, reward in groups:
        colour = reward_colour(reward)
        styles[run] = (colour, MARKERS[used.get(colour, 0) % len(MARKERS)])
        used[colour] = used.get(colour, 0) + 1
    return styles


def _metric_label(metric: str, behavior: dict) -> str:
    if metric == "length":
        return f"Δ length ({behavior.get('length_unit', 'words')})"
    return f"Δ {metric.replace('_', ' ')} (share of responses)"


def _scatter_blocks(docs: list[dict], behavior: dict | None, out_dir: Path) -> list[Block]:
    if behavior is None:
        return [Note("No behavior probe results, so there is nothing to plot against the parameter metrics "
                     "(see the note above for how to write generations).")]
    points = _points(docs, behavior)
    if not points:
        return [Note("The behavior shifts name no (run, seed, step) that the series have: check that the "
                     "generations' run labels, seeds and steps match the checkpoints.")]
    metrics = [m for m in behavior["metrics"] if any(p.shift["metric"] == m for p in points)]
    styles = _styles(list(dict.fromkeys((p.run, p.reward) for p in points)))
    header = ["run", "reward", "seed", "step", "metric", "delta", "ci95_low", "ci95_high", "p_value", "n_prompts",
              *[m.key for m in PARAMETER_METRICS]]
    blocks: list[Block] = []
    table_rows = []
    for metric in metrics:
        chosen_points = [p for p in points if p.shift["metric"] == metric]
        cells, titles = [], []
        for parameter in PARAMETER_METRICS:
            chosen = [p for p in chosen_points if p.parameters[parameter.key] is not None
                      and (not parameter.log_axis or p.parameters[parameter.key] > 0)]
            x = [p.parameters[parameter.key] for p in chosen]
            rho, p_value = rank_correlation(x, [p.shift["delta"] for p in chosen])
            titles.append(f"Spearman ρ = {rho:+.2f} (p = {p_value:.2g}, n = {len(x)})" if rho is not None
                          else f"Spearman ρ: n/a, {_why_undefined(x, chosen)} (n = {len(x)})")
            table_rows.append([metric, parameter.key, fmt_general(rho, 2), fmt_general(p_value, 2), str(len(x))])
            cells.append([(p.parameters[parameter.key], p.shift["delta"],
                           *(p.shift["ci95"] if p.shift.get("ci95") else (None, None)), p.run) for p in chosen])
        fig = figures.scatter_grid([_metric_label(metric, behavior)], [m.label for m in PARAMETER_METRICS],
                                   [cells], [titles], styles, [m.log_axis for m in PARAMETER_METRICS])
        blocks.append(figures.emit(
            out_dir, f"{NAME}-{metric.replace('_', '-')}-vs-parameters", fig,
            f"{metric.replace('_', ' ').capitalize()} shift since each run's first generations (vertical bar: 95% CI "
            "over prompts) against parameter metrics of the same checkpoint against the base; one point per run, "
            "seed and checkpoint (log axes leave out checkpoints with Δ = 0). Colour: reward; marker: run.",
            header, [[p.run, p.reward, p.seed, p.step, metric, p.shift["delta"],
                      *(p.shift["ci95"] if p.shift.get("ci95") else (None, None)), p.shift.get("p_value"),
                      p.shift.get("n_prompts"), *[p.parameters[m.key] for m in PARAMETER_METRICS]]
                     for p in chosen_points]))
    blocks.append(Table(["behavior metric", "parameter metric", "Spearman ρ", "p-value", "points"], table_rows,
                        caption="Rank correlation of each behavior shift with each parameter metric (the panel "
                                "titles). The p-values treat the points as independent, which checkpoints of one "
                                "run are not: read them as a guide.", numeric_from=2))
    return blocks


def _spread_blocks(runs: dict[str, list[dict]], behavior: dict | None, out_dir: Path) -> list[Block]:
    if all(len(seeds) < 2 for seeds in runs.values()):
        return [Paragraph("Every run has one seed: there is no spread across seeds to show. Train more seeds "
                          "(`dynamics lab run --seeds 1 2 3`) to see how far runs with the same reward disagree.")]
    labels = list(runs)
    colours = [reward_colour(runs[label][0]["run"]["reward"]) for label in labels]
    panels: dict[str, list[figures.Spread]] = {}
    data = []
    for metric in SHIFT_METRICS if behavior is not None else ():
        spreads = []
        for label in labels:
            seeds = runs[label]
            last = [d["steps"][-1] for d in seeds]
            shifts = [_shift(behavior, label, d["run"]["seed"], s["step"], metric) for d, s in zip(seeds, last)]
            values = [s["delta"] for s in shifts if s is not None]
            summary = _seed_shift(behavior, label, max(s["step"] for s in last), metric)
            mean, std = (summary["mean"], summary["std"]) if summary is not None else _mean_std(values)
            spreads.append((values, mean, std if len(values) > 1 else None))
            data += [[label, d["run"]["seed"], f"delta_{metric}", s["delta"]] for d, s in zip(seeds, shifts)
                     if s is not None]
        panels[_metric_label(metric, behavior or {})] = spreads
    for parameter in PARAMETER_METRICS[:2]:
        spreads = []
        for label in labels:
            values = [v for v in (parameter_value(d["steps"][-1], parameter.key) for d in runs[label])
                      if v is not None]
            spreads.append((values, *_mean_std(values)))
            data += [[label, d["run"]["seed"], parameter.key, parameter_value(d["steps"][-1], parameter.key)]
                     for d in runs[label]]
        panels[parameter.label] = spreads
    log_panels = [p.label for p in PARAMETER_METRICS if p.log_axis]
    fig = figures.seed_spread(labels, panels, colours, log_panels=log_panels)
    return [figures.emit(out_dir, f"{NAME}-seed-spread", fig,
                         "Each run's seeds at their last checkpoint (dots) and their mean ± one standard deviation "
                         "(diamond and bar; behavior: the probe's across-seed mean and std).",
                         ["run", "seed", "metric", "value"], data)]

