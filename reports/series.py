"""Series report: bitwise and tolerance sparsity, relative update norm, update geometry and KL drift
of a run's checkpoints against optimizer step, each against the base (solid) and against the
previous checkpoint (dashed), in the run's reward colour. A section whose input is missing says
what to run.

>>> from reports.series import render_series_report
>>> render_series_report("runs/grpo-true-s1/series/series.json", Path("runs/grpo-true-s1/series"))
"""

from __future__ import annotations

from pathlib import Path

from dynamics.series import SCHEMA, Series
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
    write_report,
)
from reports.load import load_document
from reports.palette import reward_colour
from reports.readings import OFF_PRINCIPAL_RATIO, ON_PRINCIPAL_RATIO

NAME = "series"
TOLERANCE = "1e-05"  # the absolute tolerance the published sparsity numbers use
RELATIVE_NORM_LABEL = r"$\|\Delta\|_F\,/\,\|W_0\|_F$ (unitless)"


def render_series_report(doc: dict | Series | str | Path, out_dir: Path) -> Path:
    """Write `out_dir/series.md`, `out_dir/series.html` (self-contained), PNG figures in
    `out_dir/figures/series-*.png` and their data in `out_dir/data/series-*.csv`.

    Args:
        doc: a `dynamics.series/1` document (dict), a `Series`, or the path of its series.json.
        out_dir: folder to write into (created if missing; files are replaced atomically).
    Returns:
        The path of the HTML page.
    """
    doc = load_document(doc.to_json() if isinstance(doc, Series) else doc, SCHEMA)
    out_dir = Path(out_dir)
    steps = doc["steps"]
    colour = reward_colour((doc.get("run") or {}).get("reward"))
    report = Report(
        title="Checkpoint series" + (f": {_run_label(doc)}" if doc.get("run") else ""),
        subtitle=_subtitle(doc),
        sections=[
            Section("Steps", [_steps_table(steps)]),
            Section("Sparsity against step", _sparsity_blocks(steps, out_dir, colour)),
            Section("Update norm against step", _norm_blocks(steps, out_dir, colour)),
            Section("Update geometry against step", _geometry_blocks(doc, out_dir, colour)),
            Section("KL drift against step", _kl_blocks(doc, out_dir, colour)),
        ],
    )
    return write_report(report, out_dir, NAME)


def _run_label(doc: dict) -> str:
    run = doc["run"]
    return f"{run['run']} (reward {run['reward']}, seed {run['seed']})"


def _subtitle(doc: dict) -> list[str]:
    steps = [s["step"] for s in doc["steps"]]
    options = doc.get("options") or {}
    geometry = f"geometry at k = {options['rank_k']}" if options.get("geometry") else "no geometry"
    return [
        f"Run: `{doc['run_dir']}`",
        f"Base: `{doc['base']}`",
        (f"{len(steps)} checkpoints, steps {', '.join(map(str, steps))}; {geometry}; "
         f"KL per step from {_kl_source(doc)}"),
    ]


def _kl_source(doc: dict) -> str:
    source = doc.get("kl_source")
    if source is None:
        return "nowhere (not measured)"
    return "`--kl` files" if source == "--kl" else f"`{source}/step_N.json`"


def _pick(step: dict, side: str, key: str) -> float | None:
    metrics = step[side]
    return None if metrics is None else metrics[key]


def _tolerance(step: dict, side: str) -> float | None:
    metrics = step[side]
    return None if metrics is None else metrics["abs_tolerance_sparsity"].get(TOLERANCE)


def _geometry(step: dict, side: str, key: str) -> float | None:
    metrics = step[side]
    return None if metrics is None or metrics["geometry"] is None else metrics["geometry"][key]


def _kl(step: dict, key: str) -> float | None:
    return None if step["kl"] is None else step["kl"][key]


def _steps_table(steps: list[dict]) -> Table:
    rows = [[str(s["step"]), fmt_fraction(_pick(s, "vs_base", "bitwise_sparsity")),
             fmt_fraction(_tolerance(s, "vs_base")), fmt_sci(_pick(s, "vs_base", "relative_update_norm")),
             fmt_fraction(_pick(s, "vs_previous", "bitwise_sparsity")),
             fmt_sci(_pick(s, "vs_previous", "relative_update_norm")),
             fmt_general(_geometry(s, "vs_base", "principal_angle_max_deg")),
             fmt_general(_geometry(s, "vs_base", "principal_energy_ratio")),
             fmt_general(_kl(s, "kl_mean_per_token"))] for s in steps]
    return Table(["step", "bitwise sparsity", "|Δ| ≤ 1e-5", "‖Δ‖/‖W0‖", "bitwise sparsity vs prev.",
                  "‖Δ‖/‖W0‖ vs prev.", "max angle (°)", "ρ_k / random", "KL (nats/token)"], rows,
                 caption="Against the base unless marked “vs prev.” (against the previous checkpoint; "
                         "— for the first). Angles and ρ_k: means over matrices.")


def _sparsity_blocks(steps: list[dict], out_dir: Path, colour: str) -> list[Block]:
    x = [s["step"] for s in steps]
    bitwise = [_pick(s, "vs_base", "bitwise_sparsity") for s in steps]
    tolerance = [_tolerance(s, "vs_base") for s in steps]
    previous = [_pick(s, "vs_previous", "bitwise_sparsity") for s in steps]
    fig = figures.step_curves(x, [("bitwise, vs base", bitwise, "-"), ("|Δ| ≤ 1e-5, vs base", tolerance, ":"),
                                  ("bitwise, vs previous checkpoint", previous, "--")],
                              "share of unchanged weights", "update sparsity against step", colour,
                              unit_interval=True)
    return [figures.emit(out_dir, f"{NAME}-sparsity", fig,
                         "Share of bit-identical weights against the base (solid) and the previous checkpoint "
                         "(dashed), and of weights within an absolute tolerance of 1e-5 of the base (dotted).",
                         ["step", "bitwise_sparsity_vs_base", "abs_tolerance_sparsity_1e-5_vs_base",
                          "bitwise_sparsity_vs_previous"], list(zip(x, bitwise, tolerance, previous)))]


def _norm_blocks(steps: list[dict], out_dir: Path, colour: str) -> list[Block]:
    x = [s["step"] for s in steps]
    vs_base = [_pick(s, "vs_base", "relative_update_norm") for s in steps]
    previous = [_pick(s, "vs_previous", "relative_update_norm") for s in steps]
    fig = figures.step_curves(x, [("vs base", vs_base, "-"), ("vs previous checkpoint", previous, "--")],
                              RELATIVE_NORM_LABEL, "relative update norm against step", colour)
    return [figures.emit(out_dir, f"{NAME}-update-norm", fig,
                         "Relative update norm ‖Δ‖_F / ‖W0‖_F (whole model) against the base (solid) and between "
                         "consecutive checkpoints (dashed); log scale when the values span two decades.",
                         ["step", "relative_update_norm_vs_base", "relative_update_norm_vs_previous"],
                         list(zip(x, vs_base, previous)))]


def _geometry_blocks(doc: dict, out_dir: Path, colour: str) -> list[Block]:
    steps = doc["steps"]
    if not any(s["vs_base"]["geometry"] for s in steps):
        why = ("the series was made without the matrix pass" if not (doc.get("options") or {}).get("geometry")
               else "no 2-D weight was measured")
        return [Note(f"No update geometry: {why}. Rerun `dynamics series {doc['run_dir']} --geometry --rank-k K` "
                     "(cached diffs without geometry are not reused for it).")]
    x = [s["step"] for s in steps]
    angle = [_geometry(s, "vs_base", "principal_angle_max_deg") for s in steps]
    angle_previous = [_geometry(s, "vs_previous", "principal_angle_max_deg") for s in steps]
    ratio = [_geometry(s, "vs_base", "principal_energy_ratio") for s in steps]
    k = (doc.get("options") or {}).get("rank_k")
    rotation = figures.step_curves(x, [("vs base", angle, "-"), ("vs previous checkpoint", angle_previous, "--")],
                                   "max principal angle (degrees)", f"rotation of the top-{k} left singular subspaces",
                                   colour)
    energy = figures.step_curves(
        x, [("vs base", ratio, "-")], r"$\rho_k$ / random baseline (log scale)",
        "principal energy of the update vs random directions", colour, log=True,
        hlines=[(1.0, "random directions (= 1)")],
        bands=[(ON_PRINCIPAL_RATIO, 1e6, "tab:blue", f"on-principal (> {ON_PRINCIPAL_RATIO:g})"),
               (1e-6, OFF_PRINCIPAL_RATIO, "tab:orange", f"off-principal (< {OFF_PRINCIPAL_RATIO:g})")])
    return [
        figures.emit(out_dir, f"{NAME}-rotation", rotation,
                     "Largest principal angle between the top-k left singular subspaces of W0 and W1, mean over "
                     "matrices, against the base (solid) and the previous checkpoint (dashed).",
                     ["step", "principal_angle_max_deg_vs_base", "principal_angle_max_deg_vs_previous"],
                     list(zip(x, angle, angle_previous))),
        figures.emit(out_dir, f"{NAME}-principal-energy", energy,
                     "Share of the update's energy in the base's top-k principal block over the random-direction "
                     "baseline k²/(m·n) (Δ-energy-weighted over matrices); below 1: off-principal.",
                     ["step", "principal_energy", "principal_energy_baseline", "principal_energy_ratio"],
                     [[s["step"], _geometry(s, "vs_base", "principal_energy"),
                       _geometry(s, "vs_base", "principal_energy_baseline"), r] for s, r in zip(steps, ratio)]),
    ]


def _kl_blocks(doc: dict, out_dir: Path, colour: str) -> list[Block]:
    steps = doc["steps"]
    missing = [s for s in steps if s["kl"] is None]

    def command(step: dict) -> str:
        return (f"dynamics probe kl {doc['base']} {step['path']} --prompts P "
                f"--json {out_dir / 'kl' / ('step_' + str(step['step']) + '.json')}")

    if len(missing) == len(steps):
        return [Note(f"No KL drift measured for any step. For each checkpoint run `{command(steps[-1])}` (step N "
                     "in the file name), then rerun `dynamics series`, which picks up `kl/step_N.json` in its output "
                     "folder; or pass `--kl N=kl.json` per step.")]
    measured = [s for s in steps if s["kl"] is not None]
    x = [s["step"] for s in measured]
    mean = [s["kl"]["kl_mean_per_token"] for s in measured]
    p95 = [s["kl"]["kl_p95_per_token"] for s in measured]
    fig = figures.step_curves(x, [("mean per token", mean, "-"), ("95th percentile per token", p95, ":")],
                              "KL(π_step ‖ π_base) (nats per token)", "KL drift from the base against step", colour)
    blocks: list[Block] = [figures.emit(
        out_dir, f"{NAME}-kl", fig,
        "On-policy token-level KL of each checkpoint from the base, mean and 95th percentile per token "
        "(measured steps only).",
        ["step", "kl_mean_per_token", "kl_p95_per_token", "kl_median_per_token", "kl_mean_per_sequence", "source"],
        [[s["step"], *(s["kl"][k] for k in ("kl_mean_per_token", "kl_p95_per_token", "kl_median_per_token",
                                             "kl_mean_per_sequence", "source"))] for s in measured])]
    if missing:
        names = ", ".join(str(s["step"]) for s in missing)
        blocks.append(Paragraph(f"No KL for step{'s' if len(missing) > 1 else ''} {names}: for each, run "
                                f"`{command(missing[0])}` with that step's checkpoint and number."))
    return blocks
