"""Series report: bitwise and tolerance sparsity, relative update norm, update geometry and KL drift
of a run's checkpoints against optimizer step, each against the base (solid) and against the
previous checkpoint (dashed), in the run's reward colour. A section whose input is missing says
what to run.

>>> from reports.series import render_series_report
>>> render_series_report(series("runs/grpo-true-s1"), Path("runs/grpo-true-s1/series"))
"""

from __future__ import annotations

from pathlib import Path

from dynamics.metrics import HEADLINE_ABS_TOLERANCE, METRICS, format_value
from dynamics.series import Series, SeriesStep
from dynamics.training_log import CANONICAL_FIELDS
from reports import figures
from reports.document import (
    Block,
    Note,
    Paragraph,
    Report,
    Section,
    Table,
    fmt_fraction,
    fmt_general,
    fmt_sci,
)
from reports.palette import reward_colour
from reports.readings import OFF_PRINCIPAL_RATIO, ON_PRINCIPAL_RATIO
from reports.write import write_report

NAME = "series"
TOLERANCE_LABEL = f"|Δ| ≤ {HEADLINE_ABS_TOLERANCE:g}"  # the registered headline_tolerance_sparsity
RELATIVE_NORM_LABEL = r"$\|\Delta\|_F\,/\,\|W_0\|_F$ (unitless)"


def render_series_report(series: Series, out_dir: Path) -> Path:
    """Write `out_dir/series.md`, `out_dir/series.html` (self-contained), PNG figures in
    `out_dir/figures/series-*.png` and their data in `out_dir/data/series-*.csv`.

    Args:
        series: the run's checkpoint series (`dynamics.series.series`).
        out_dir: folder to write into (created if missing; files are replaced atomically).
    Returns:
        The path of the HTML page.
    """
    out_dir = Path(out_dir)
    steps = series.steps
    colour = reward_colour((series.run or {}).get("reward"))
    report = Report(
        title="Checkpoint series" + (f": {_run_label(series)}" if series.run else ""),
        subtitle=_subtitle(series),
        sections=[
            Section("Steps", [_steps_table(steps)]),
            Section("Sparsity against step", _sparsity_blocks(steps, out_dir, colour)),
            Section("Update norm against step", _norm_blocks(steps, out_dir, colour)),
            Section("Update geometry against step", _geometry_blocks(series, out_dir, colour)),
            Section("KL drift against step", _kl_blocks(series, out_dir, colour)),
            Section("Training log against step", _log_blocks(steps)),
            Section("Optimizer state against step", _optimizer_blocks(steps)),
        ],
    )
    return write_report(report, out_dir, NAME)


def _run_label(series: Series) -> str:
    run = series.run
    return f"{run['run']} (reward {run['reward']}, seed {run['seed']})"


def _geometry_k(series: Series) -> str | None:
    """"k = K" as the series asked for it ("the default k per matrix" when none was); None without geometry."""
    geometry = series.options.get("geometry")
    if geometry is None:
        return None
    return "the default k per matrix" if geometry["k"] is None else f"k = {geometry['k']}"


def _subtitle(series: Series) -> list[str]:
    steps = [s.step for s in series.steps]
    k = _geometry_k(series)
    geometry = "no geometry" if k is None else f"geometry at {k}"
    return [
        f"Run: `{series.run_dir}`",
        f"Base: `{series.base}`",
        (f"{len(steps)} checkpoints, steps {', '.join(map(str, steps))}; {geometry}; "
         f"KL per step from {_kl_source(series)}"),
    ]


def _kl_source(series: Series) -> str:
    source = series.kl_source
    if source is None:
        return "nowhere (not measured)"
    return "`--kl` files" if source == "--kl" else f"`{source}/step_N.json`"


def _pick(step: SeriesStep, side: str, key: str) -> float | None:
    """A registered model-level metric of the step against the base (`vs_base`) or the previous step."""
    metrics = getattr(step, side)
    return None if metrics is None else metrics[key]


def _tolerance(step: SeriesStep, side: str) -> float | None:
    return _pick(step, side, "headline_tolerance_sparsity")


def _geometry(step: SeriesStep, side: str, key: str) -> float | None:
    metrics = getattr(step, side)
    return None if metrics is None or metrics["geometry"] is None else metrics["geometry"][key]


def _kl(step: SeriesStep, key: str) -> float | None:
    return None if step.kl is None else step.kl[key]


def _steps_table(steps: list[SeriesStep]) -> Table:
    rows = [[str(s.step), fmt_fraction(_pick(s, "vs_base", "bitwise_sparsity")),
             fmt_fraction(_tolerance(s, "vs_base")), fmt_sci(_pick(s, "vs_base", "relative_update_norm")),
             fmt_fraction(_pick(s, "vs_previous", "bitwise_sparsity")),
             fmt_sci(_pick(s, "vs_previous", "relative_update_norm")),
             fmt_general(_geometry(s, "vs_base", "principal_angle_max_deg")),
             fmt_general(_geometry(s, "vs_base", "principal_energy_ratio")),
             fmt_general(_kl(s, "kl_mean_per_token"))] for s in steps]
    return Table(["step", "bitwise sparsity", TOLERANCE_LABEL, "‖Δ‖/‖W0‖", "bitwise sparsity vs prev.",
                  "‖Δ‖/‖W0‖ vs prev.", "max angle (°)", "ρ_k / random", "KL (nats/token)"], rows,
                 caption="Against the base unless marked “vs prev.” (against the previous checkpoint; "
                         "— for the first). Angles: means over matrices; ρ_k / random: Δ-energy-weighted over "
                         "matrices (the registered `principal_energy_ratio`).")


def _from_base(steps: list[SeriesStep], curves: list[list], at_base: list) -> tuple[list[int], list[list]]:
    """Step 0 (the base itself) prepended to the x values and to each curve, with the curve's value there by
    definition (`at_base`: sparsity 1, Δ = 0; None where undefined), unless a checkpoint is step 0."""
    x = [s.step for s in steps]
    if x and x[0] == 0:
        return x, curves
    return [0, *x], [[value, *curve] for value, curve in zip(at_base, curves)]


def _sparsity_blocks(steps: list[SeriesStep], out_dir: Path, colour: str) -> list[Block]:
    x, (bitwise, tolerance, previous) = _from_base(steps, [
        [_pick(s, "vs_base", "bitwise_sparsity") for s in steps], [_tolerance(s, "vs_base") for s in steps],
        [_pick(s, "vs_previous", "bitwise_sparsity") for s in steps]], [1.0, 1.0, None])
    fig = figures.step_curves(x, [("bitwise, vs base", bitwise, "-"), (f"{TOLERANCE_LABEL}, vs base", tolerance, ":"),
                                  ("bitwise, vs previous checkpoint", previous, "--")],
                              "share of unchanged weights", "update sparsity against step", colour,
                              unit_interval=True)
    return [figures.emit(out_dir, f"{NAME}-sparsity", fig,
                         "Share of bit-identical weights against the base (solid) and the previous checkpoint "
                         "(dashed), and of weights within an absolute tolerance of "
                         f"{HEADLINE_ABS_TOLERANCE:g} of the base (dotted); step 0 is the base itself.",
                         ["step", "bitwise_sparsity_vs_base", "headline_tolerance_sparsity_vs_base",
                          "bitwise_sparsity_vs_previous"], list(zip(x, bitwise, tolerance, previous)))]


def _norm_blocks(steps: list[SeriesStep], out_dir: Path, colour: str) -> list[Block]:
    x, (vs_base, previous) = _from_base(steps, [
        [_pick(s, "vs_base", "relative_update_norm") for s in steps],
        [_pick(s, "vs_previous", "relative_update_norm") for s in steps]], [0.0, None])
    fig = figures.step_curves(x, [("vs base", vs_base, "-"), ("vs previous checkpoint", previous, "--")],
                              RELATIVE_NORM_LABEL, "relative update norm against step", colour)
    return [figures.emit(out_dir, f"{NAME}-update-norm", fig,
                         "Relative update norm ‖Δ‖_F / ‖W0‖_F (whole model) against the base (solid) and between "
                         "consecutive checkpoints (dashed), from 0 at step 0 (the base; not drawn on a log scale); "
                         "log scale when the values span two decades.",
                         ["step", "relative_update_norm_vs_base", "relative_update_norm_vs_previous"],
                         list(zip(x, vs_base, previous)))]


def _geometry_blocks(series: Series, out_dir: Path, colour: str) -> list[Block]:
    steps = series.steps
    if not any(s.vs_base["geometry"] for s in steps):
        why = ("the series was made without the matrix pass" if _geometry_k(series) is None
               else "no 2-D weight was measured")
        return [Note(f"No update geometry: {why}. Rerun `dynamics series {series.run_dir} --geometry --rank-k K` "
                     "(cached diffs without geometry are not reused for it).")]
    x, (angle, angle_previous, ratio, weighted) = _from_base(steps, [
        [_geometry(s, "vs_base", "principal_angle_max_deg") for s in steps],
        [_geometry(s, "vs_previous", "principal_angle_max_deg") for s in steps],
        [_geometry(s, "vs_base", "principal_energy_ratio") for s in steps],
        [_geometry(s, "vs_base", "principal_energy_weighted") for s in steps]], [0.0, None, None, None])
    rotation = figures.step_curves(x, [("vs base", angle, "-"), ("vs previous checkpoint", angle_previous, "--")],
                                   "max principal angle (degrees)",
                                   f"rotation of the top-k left singular subspaces ({_geometry_k(series)})", colour)
    energy = figures.step_curves(
        x, [("vs base", ratio, "-")], r"$\rho_k$ / random baseline (log scale)",
        "principal energy of the update vs random directions", colour, log=True,
        hlines=[(1.0, "random directions (= 1)")],
        bands=[(ON_PRINCIPAL_RATIO, 1e6, "tab:blue", f"on-principal (> {ON_PRINCIPAL_RATIO:g})"),
               (1e-6, OFF_PRINCIPAL_RATIO, "tab:orange", f"off-principal (< {OFF_PRINCIPAL_RATIO:g})")])
    return [
        figures.emit(out_dir, f"{NAME}-rotation", rotation,
                     "Largest principal angle between the top-k left singular subspaces of W0 and W1, mean over "
                     "matrices, against the base (solid) and the previous checkpoint (dashed); 0 at step 0 (the base).",
                     ["step", "principal_angle_max_deg_vs_base", "principal_angle_max_deg_vs_previous"],
                     list(zip(x, angle, angle_previous))),
        figures.emit(out_dir, f"{NAME}-principal-energy", energy,
                     "Share of the update's energy in the base's top-k principal block over the random-direction "
                     "baseline k²/(m·n) (Δ-energy-weighted over matrices); below 1: off-principal; undefined at "
                     "step 0 (Δ = 0).",
                     ["step", "principal_energy_weighted", "principal_energy_ratio"],
                     list(zip(x, weighted, ratio))),
    ]


def _log_blocks(steps: list[SeriesStep]) -> list[Block]:
    logged = [s for s in steps if s.log]
    if not logged:
        return [Paragraph("No training log for any step (`dynamics series` reads `trainer_state.json`, HF Trainer / "
                          "TRL `log_history`, from the run's latest step folder).")]
    names = [n for n in CANONICAL_FIELDS if any(n in s.log for s in logged)]
    rows = [[str(s.step), _sparsity(s), *(fmt_general(s.log.get(n)) for n in names)] for s in logged]
    return [Table(["step", "bitwise sparsity", *(n.replace("_", " ") for n in names)], rows,
                  caption="What the trainer logged at each checkpoint's step, beside the checkpoint's bitwise "
                          "sparsity against the base (— where a quantity was not logged).")]


OPTIMIZER_COLUMNS = ("v_top1_share_over_chance", "v_spearman", "momentum_cosine", "hidden_of_moved",
                     "flip_prediction_precision", "flip_prediction_recall")


def _optimizer_blocks(steps: list[SeriesStep]) -> list[Block]:
    read = [s for s in steps if s.optimizer]
    if not read:
        return [Paragraph("No optimizer state read: rerun `dynamics series` with `--optimizer` (each step's "
                          "optimizer.pt, verl optim shards or DeepSpeed optim states).")]
    rows = [[str(s.step), *(format_value(n, s.optimizer[n]) for n in OPTIMIZER_COLUMNS)] for s in read]
    return [Table(["step", *(METRICS[n].label for n in OPTIMIZER_COLUMNS)], rows,
                  caption="Each step against the previous one (the first against the base) with that step's Adam "
                          "state (`dynamics optimizer`); flip precision / recall against the next step.")]


def _sparsity(step: SeriesStep) -> str:
    return fmt_fraction(_pick(step, "vs_base", "bitwise_sparsity"))


def _kl_blocks(series: Series, out_dir: Path, colour: str) -> list[Block]:
    steps = series.steps
    missing = [s for s in steps if s.kl is None]

    def command(step: SeriesStep) -> str:
        return (f"dynamics probe kl {series.base} {step.path} --prompts P "
                f"--json {out_dir / 'kl' / ('step_' + str(step.step) + '.json')}")

    if len(missing) == len(steps):
        return [Note(f"No KL drift measured for any step. For each checkpoint run `{command(steps[-1])}` (step N "
                     "in the file name), then rerun `dynamics series`, which picks up `kl/step_N.json` in its output "
                     "folder; or pass `--kl N=kl.json` per step.")]
    measured = [s for s in steps if s.kl is not None]
    x, (mean, p95) = _from_base(measured, [[s.kl["kl_mean_per_token"] for s in measured],
                                           [s.kl["kl_p95_per_token"] for s in measured]], [0.0, 0.0])
    fig = figures.step_curves(x, [("mean per token", mean, "-"), ("95th percentile per token", p95, ":")],
                              "KL(π_step ‖ π_base) (nats per token)", "KL drift from the base against step", colour)
    blocks: list[Block] = [figures.emit(
        out_dir, f"{NAME}-kl", fig,
        "On-policy token-level KL of each checkpoint from the base, mean and 95th percentile per token "
        "(measured steps only; 0 at step 0, the base, by definition).",
        ["step", "kl_mean_per_token", "kl_p95_per_token", "kl_median_per_token", "kl_mean_per_sequence", "source"],
        [[s.step, *(s.kl[k] for k in ("kl_mean_per_token", "kl_p95_per_token", "kl_median_per_token",
                                       "kl_mean_per_sequence", "source"))] for s in measured])]
    if missing:
        names = ", ".join(str(s.step) for s in missing)
        blocks.append(Paragraph(f"No KL for step{'s' if len(missing) > 1 else ''} {names}: for each, run "
                                f"`{command(missing[0])}` with that step's checkpoint and number."))
    return blocks
