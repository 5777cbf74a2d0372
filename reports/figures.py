"""Plot helpers (matplotlib, Agg backend): each draws one figure from numbers it is given; `emit`
writes the PNG under `figures/` and the numbers behind it as CSV under `data/`, atomically.

Every module kind has one colour in every figure (`KIND_COLOURS`). Missing values (None) are left
out of bar charts and shown grey in heatmaps. Shares ([0, 1]) zoom to the data when they fill less
than a third of the interval (`_unit_limits`); bars on a log axis start at their baseline (the first
`hlines` entry), or are drawn as markers when there is none (a bar's length on a log axis means
nothing without one). Legends list only what is drawn.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Polygon, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from dynamics.documents import atomic_path
from dynamics.naming import MODULE_KINDS
from reports.document import Figure

KIND_COLOURS: dict[str, str] = dict(zip(MODULE_KINDS, (
    "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
    "tab:olive", "tab:cyan", "tab:gray", "black")))
_HATCHES = ("", "//", "..", "xx")
_DPI = 110
ANNOTATE_MAX_CELLS = 120  # heatmaps with more cells than this get no numbers in the cells


def emit(out_dir: Path, stem: str, fig: plt.Figure, caption: str,
         header: Sequence[str], rows: Sequence[Sequence[object]]) -> Figure:
    """Save `fig` as `out_dir/figures/<stem>.png` and `rows` as `out_dir/data/<stem>.csv`."""
    png, data = Path(out_dir) / "figures" / f"{stem}.png", Path(out_dir) / "data" / f"{stem}.csv"
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight")
    plt.close(fig)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    with atomic_path(data) as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return Figure(png=png, data=data, caption=caption)


def _spans_decades(values: Sequence[float | None], decades: float = 2.0) -> bool:
    positive = [v for v in values if v is not None and v > 0]
    return len(positive) >= 2 and math.log10(max(positive) / min(positive)) >= decades


def bars(labels: Sequence[str], values: Sequence[float | None], xlabel: str, ylabel: str, title: str,
         colours: Sequence[str] | None = None, unit_interval: bool = False, log: bool | None = None,
         hlines: Sequence[tuple[float, str]] = (),
         bands: Sequence[tuple[float, float, str, str]] = ()) -> plt.Figure:
    """One bar per label, its value written above it in small charts; log y when `log` or (None)
    when the values span two decades, [0, 1] when `unit_interval`. `hlines`: (y, legend label);
    `bands`: (low, high, colour, legend label) shaded behind the bars."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(labels) + 2), 3.6))
    x = np.arange(len(labels))
    for low, high, colour, text in bands:
        ax.axhspan(low, high, color=colour, alpha=0.25, linewidth=0, label=text)
    for (y, text), style in zip(hlines, ("--", ":", "-.")):
        ax.axhline(y, color="black", linestyle=style, linewidth=0.9, label=text)
    all_values = list(values) + [y for y, _ in hlines]
    heights = np.array([np.nan if v is None else v for v in values], dtype=float)
    if _is_log(all_values, unit_interval, log) and not hlines:
        ax.scatter(x, heights, c=colours or "tab:blue", edgecolors="black", linewidths=0.4, s=40, zorder=3)
    else:
        base = hlines[0][0] if _is_log(all_values, unit_interval, log) else 0.0
        container = ax.bar(x, heights - base, bottom=base, color=colours or "tab:blue", edgecolor="black",
                           linewidth=0.4)
        _label_bars(ax, container, values)
    _kind_ticks(ax, x, labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    _scale_y(ax, all_values, unit_interval, log, unit_top=1.08, log_margins=(2, 3))
    _legend_of_visible(ax)
    ax.grid(axis="y", alpha=0.3)
    return fig


MAX_LABELLED_BARS = 24  # bar charts with more bars than this get no value labels


def value_text(v: float) -> str:
    """Short label: 0, 0.854, 15.7, 3.1e-04 (values near 0 keep their magnitude visible)."""
    if v == 0:
        return "0"
    if abs(v) < 1e-3 or abs(v) >= 1e4:
        return f"{v:.1e}"
    return f"{v:.3g}"


def _label_bars(ax: plt.Axes, container, values: Sequence[float | None]) -> None:
    if len(values) <= MAX_LABELLED_BARS:
        ax.bar_label(container, labels=["" if v is None else value_text(v) for v in values], fontsize=7, padding=2)


def _kind_ticks(ax: plt.Axes, x: np.ndarray, labels: Sequence[str]) -> None:
    crowded = len(labels) > 16 or max((len(label) for label in labels), default=0) * len(labels) > 90
    if crowded and len(labels) > 16:
        ax.set_xticks(x, labels, rotation=90)
    elif crowded:
        ax.set_xticks(x, labels, rotation=30, ha="right")
    else:
        ax.set_xticks(x, labels)


def grouped_kind_bars(kinds: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str,
                      title: str, unit_interval: bool = False, log: bool | None = None,
                      hlines: Sequence[tuple[float, str]] = ()) -> plt.Figure:
    """Per module kind one bar per series, in the kind's colour; series differ by hatch."""
    fig, ax = plt.subplots(figsize=(max(5.5, 0.75 * len(kinds) * len(series) / 2 + 2.5), 3.8))
    x = np.arange(len(kinds))
    width = 0.8 / max(1, len(series))
    handles = []
    for i, (name, values) in enumerate(series.items()):
        container = ax.bar(x + (i - (len(series) - 1) / 2) * width, [np.nan if v is None else v for v in values],
                           width, color=[KIND_COLOURS.get(k, "black") for k in kinds],
                           hatch=_HATCHES[i % len(_HATCHES)], edgecolor="black", linewidth=0.4)
        _label_bars(ax, container, values)
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=_HATCHES[i % len(_HATCHES)], label=name))
    for y, text in hlines:
        ax.axhline(y, color="black", linestyle="--", linewidth=0.8)
        ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(-4, 3),
                    textcoords="offset points", ha="right", va="bottom", fontsize=8)
    _kind_ticks(ax, x, kinds)
    ax.set_xlabel("module kind")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    all_values = [v for values in series.values() for v in values] + [y for y, _ in hlines]
    if unit_interval:
        ax.set_ylim(*_unit_limits(all_values, 1.08))
    elif log or (log is None and _spans_decades(all_values)):
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


def heatmap(row_labels: Sequence[str], col_labels: Sequence[str], values: Sequence[Sequence[float | None]],
            xlabel: str, ylabel: str, colourbar_label: str, title: str, log: bool | None = False,
            unit_interval: bool = False, zero_is_grey: bool = False) -> plt.Figure:
    """Cells coloured by value (LogNorm when `log`, or when None and the values span a decade);
    None cells grey, and cells equal to 0 when `zero_is_grey` (on a linear scale as on a log one);
    numbers in small grids."""
    matrix = np.array([[np.nan if v is None or (zero_is_grey and v == 0) else v for v in row] for row in values],
                      dtype=float)
    if log is None:
        log = _spans_decades([v for row in values for v in row], decades=1.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(col_labels) + 2.5), max(2.8, 0.32 * len(row_labels) + 1.6)))
    finite = matrix[np.isfinite(matrix)]
    if log:
        positive = finite[finite > 0]
        norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size else None
        matrix = np.where(matrix > 0, matrix, np.nan)
    elif unit_interval:
        norm = Normalize(vmin=0.0, vmax=1.0)
    else:
        norm = None
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d9d9d9")
    image = ax.imshow(np.ma.masked_invalid(matrix), aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    fig.colorbar(image, ax=ax, label=colourbar_label)
    ax.set_xticks(np.arange(len(col_labels)), col_labels)
    ax.set_yticks(np.arange(len(row_labels)), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    if matrix.size <= ANNOTATE_MAX_CELLS:
        for (i, j), v in np.ndenumerate(matrix):
            if np.isfinite(v):
                shade = image.norm(v) if image.norm is not None else 0.5
                ax.text(j, i, value_text(v), ha="center", va="center", fontsize=7,
                        color="black" if shade > 0.6 else "white")
    return fig


def ulp_histograms(histograms: dict[str, Sequence[int]], crossings: dict[str, int]) -> plt.Figure:
    """One panel per dtype: moved elements per ULP-distance bucket j (2^(j−1) < d ≤ 2^j, ticks show
    the upper bound 2^j), log y; buckets after the last non-empty one are cut. The dtype's sign
    crossings (no ULP distance) are a separate orange bar at the right, labelled as such."""
    fig, axes = plt.subplots(1, max(1, len(histograms)), figsize=(6.5 * max(1, len(histograms)), 3.8), squeeze=False)
    for ax, (dtype, counts) in zip(axes[0], histograms.items()):
        last = max((i for i, c in enumerate(counts) if c), default=0)
        shown = list(counts[:last + 1])
        x = np.arange(len(shown))
        ax.bar(x, [c if c else np.nan for c in shown], color="tab:blue", edgecolor="black", linewidth=0.4)
        crossed = crossings.get(dtype, 0)
        ax.bar([len(shown) + 0.5], [crossed if crossed else np.nan], color="tab:orange", edgecolor="black",
               linewidth=0.4, label=f"sign crossings ({crossed:,})")
        ax.set_yscale("log")
        step = 1 if len(shown) <= 17 else 2
        ax.set_xticks([*x[::step], len(shown) + 0.5], [*(f"$2^{{{j}}}$" for j in x[::step]), "±"], fontsize=8)
        ax.set_xlabel("ULP distance d, bucket upper bound (2^(j−1) < d ≤ 2^j; steps of the stored dtype); "
                      "±: sign crossings", fontsize=9)
        ax.set_ylabel("moved elements (count, log scale)")
        ax.legend(fontsize=8, frameon=False, loc="upper right")
        ax.set_title(f"{dtype}: {sum(counts) + crossed:,} moved elements", fontsize=11)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def tolerance_curves(abs_taus: Sequence[float], abs_values: Sequence[float | None], rel_taus: Sequence[float],
                     rel_values: Sequence[float | None], bitwise: float | None) -> plt.Figure:
    """Tolerance sparsity against τ (log x) for the absolute and relative grids, bitwise as a line."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, taus, values, xlabel, title in (
            (axes[0], abs_taus, abs_values, "absolute tolerance τ (|Δ| ≤ τ, weight units)", "absolute"),
            (axes[1], rel_taus, rel_values, "relative tolerance τ (|Δ| ≤ τ·|W0|, unitless)", "relative")):
        ax.plot(taus, [np.nan if v is None else v for v in values], marker="o", color="tab:blue",
                label="tolerance sparsity")
        if bitwise is not None:
            ax.axhline(bitwise, color="tab:red", linestyle="--", linewidth=1, label="bitwise sparsity")
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{title} tolerance", fontsize=11)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of elements within τ")
    axes[1].legend(fontsize=8, frameon=False, loc="lower right")
    fig.tight_layout()
    return fig


def overlap_vs_chance(percents: Sequence[float], curves: dict[str, Sequence[float | None]],
                      xlabel: str = "mask size p (% of elements)",
                      ylabel: str = "changed elements inside the mask (%)",
                      title: str = "update mask overlap vs chance",
                      chance_label: str = "chance (overlap = p)",
                      nulls: dict[str, Sequence[float | None]] | None = None) -> plt.Figure:
    """Shares (fractions, drawn in %) against a subset size in %, with the chance line share = size.

    `nulls`: further reference curves (e.g. a magnitude-stratified chance), dotted, the i-th in the colour
    of the i-th curve it belongs to."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, values), marker, colour in zip(curves.items(), ("o", "s", "^", "v", "D", "P"), colours):
        ax.plot(percents, [np.nan if v is None else 100 * v for v in values], marker=marker, label=name,
                color=colour)
    for (name, values), colour in zip((nulls or {}).items(), colours):
        ax.plot(percents, [np.nan if v is None else 100 * v for v in values], linestyle=":", linewidth=1.5,
                color=colour, label=name)
    ax.plot(percents, percents, color="black", linestyle="--", linewidth=0.8, label=chance_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return fig


def _plain_log_ticks(axis, values: Sequence[float | None]) -> None:
    """Log-axis ticks as plain numbers (0.5, 1, 2 rather than 5×10⁻¹), evenly placed when the values
    span less than a decade, where a log axis would otherwise label one tick or none."""
    positive = [v for v in values if v is not None and v > 0]
    if positive and math.log10(max(positive) / min(positive)) < 1:
        axis.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _unit_limits(values: Sequence[float | None], top: float) -> tuple[float, float]:
    """y limits of a share: (0, `top`) when the values spread over a third of [0, 1] or more, else zoomed to
    [lo − m, hi + 2m] ∩ [0, top] with m = max(span/4, 0.002), so 0.964 and 0.967 do not look equal."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite or max(finite) - min(finite) >= 1 / 3:
        return 0.0, top
    lo, hi = min(finite), max(finite)
    margin = max((hi - lo) / 4, 0.002)
    return max(0.0, lo - margin), min(top, hi + 2 * margin)


def _is_log(values: Sequence[float | None], unit_interval: bool, log: bool | None) -> bool:
    return not unit_interval and bool(log or (log is None and _spans_decades(values)))


def _legend_of_visible(ax: plt.Axes) -> None:
    """Legend (right of the axes) of the labelled artists that show inside the final y limits (a band or a
    reference line outside them is left out); none when nothing labelled shows."""
    low, high = sorted(ax.get_ylim())
    shown = []
    for handle, label in zip(*ax.get_legend_handles_labels()):
        if isinstance(handle, Rectangle):  # axhspan bands: y in data units
            ys = [handle.get_y(), handle.get_y() + handle.get_height()]
        elif isinstance(handle, Polygon):
            ys = list(handle.get_xy()[:, 1])
        elif isinstance(handle, Line2D):
            ys = [y for y in np.asarray(handle.get_ydata(), dtype=float) if np.isfinite(y)]
        else:
            ys = []
        if ys and (max(ys) < low or min(ys) > high):
            continue
        shown.append((handle, label))
    if shown:
        ax.legend(*zip(*shown), fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _scale_y(ax: plt.Axes, values: Sequence[float | None], unit_interval: bool, log: bool | None, unit_top: float,
             log_margins: tuple[float, float]) -> bool:
    """y from 0 to `unit_top` for shares (zoomed, see `_unit_limits`); a log axis (padded by `log_margins`
    below/above the positive values, plain tick labels) when `log`, or when None and the values span decades.
    True when something was set."""
    if unit_interval:
        bottom, top = _unit_limits(values, unit_top)
        ax.set_ylim(bottom, top)
        if bottom > 0:  # a zoomed share axis says so where the eye reads bar lengths
            ax.annotate(f"y axis zoomed: starts at {bottom:.3g}, not 0", (0.01, 0.01), xycoords="axes fraction",
                        fontsize=7, color="dimgray", va="bottom")
        return True
    if not _is_log(values, unit_interval, log):
        return False
    ax.set_yscale("log")
    positive = [v for v in values if v is not None and v > 0]
    if positive:
        ax.set_ylim(min(positive) / log_margins[0], max(positive) * log_margins[1])
    _plain_log_ticks(ax.yaxis, positive)
    return True


def step_curves(steps: Sequence[int], curves: Sequence[tuple[str, Sequence[float | None], str]], ylabel: str,
                title: str, colour: str, unit_interval: bool = False, log: bool | None = None,
                hlines: Sequence[tuple[float, str]] = (),
                bands: Sequence[tuple[float, float, str, str]] = ()) -> plt.Figure:
    """Values against optimizer step, one line per (legend label, values, line style) in the run's
    `colour`; markers on every point (a series may have one step), filled for the first curve and
    hollow after it so coinciding curves stay visible; None leaves a gap. Log y (ticks as plain
    numbers) when `log` or (None) when the values span two decades; [0, 1] when `unit_interval`.
    `hlines`: (y, legend label); `bands`: (low, high, colour, legend label) shaded behind."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for low, high, band_colour, text in bands:
        ax.axhspan(low, high, color=band_colour, alpha=0.15, linewidth=0, label=text)
    for i, ((label, values, style), marker) in enumerate(zip(curves, ("o", "s", "^", "D"))):
        if all(v is None for v in values):
            continue  # nothing to draw, so nothing in the legend
        ax.plot(steps, [np.nan if v is None else v for v in values], linestyle=style, marker=marker,
                markersize=6 if i else 5, color=colour, markerfacecolor=colour if i == 0 else "white", label=label)
    for y, text in hlines:
        ax.axhline(y, color="black", linestyle=":", linewidth=0.9, label=text)
    all_values = [v for _, values, _ in curves for v in values] + [y for y, _ in hlines]
    if not _scale_y(ax, all_values, unit_interval, log, unit_top=1.02, log_margins=(1.5, 1.5)):
        # every tick carries its own magnitude: no "×1e-5" offset text a reader may miss
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    _legend_of_visible(ax)
    return fig


ScatterPoint = tuple[float, float, float | None, float | None, str]  # x, y, y CI low, y CI high, legend group


def scatter_grid(row_labels: Sequence[str], col_labels: Sequence[str], cells: Sequence[Sequence[Sequence[ScatterPoint]]],
                 titles: Sequence[Sequence[str]], styles: dict[str, tuple[str, str]],
                 log_cols: Sequence[bool]) -> plt.Figure:
    """A grid of scatter panels: row i plots `row_labels[i]` (y) against `col_labels[j]` (x); each
    point in its group's (colour, marker) with its y confidence interval as a vertical bar; a dotted
    line at y = 0; one legend for all panels."""
    n_rows, n_cols = len(row_labels), len(col_labels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.9 * n_cols, 3.5 * n_rows), squeeze=False)
    for i, j in np.ndindex(n_rows, n_cols):
        ax = axes[i][j]
        for group, (colour, marker) in styles.items():
            points = [p for p in cells[i][j] if p[4] == group]
            if not points:
                continue
            x = [p[0] for p in points]
            y = [p[1] for p in points]
            has_ci = [p[2] is not None and p[3] is not None for p in points]
            if any(has_ci):
                lows = [p[1] - p[2] if ok else 0.0 for p, ok in zip(points, has_ci)]
                highs = [p[3] - p[1] if ok else 0.0 for p, ok in zip(points, has_ci)]
                ax.errorbar(x, y, yerr=[lows, highs], fmt="none", ecolor=colour, alpha=0.45, linewidth=1)
            ax.scatter(x, y, color=colour, marker=marker, s=30, edgecolors="white", linewidths=0.5, zorder=3)
        ax.axhline(0, color="black", linestyle=":", linewidth=0.8)
        if log_cols[j]:
            ax.set_xscale("log")
            _plain_log_ticks(ax.xaxis, [p[0] for p in cells[i][j]])
        ax.set_title(titles[i][j], fontsize=10)
        ax.set_xlabel(col_labels[j], fontsize=10)
        ax.set_ylabel(row_labels[i], fontsize=10)
        ax.tick_params(labelsize=9)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker=m, linestyle="", label=g) for g, (c, m) in styles.items()]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.98), fontsize=9, frameon=False,
               title="run")
    fig.tight_layout()
    return fig


Spread = tuple[Sequence[float], float | None, float | None]  # seed values, their mean, their std (None: < 2 seeds)


def seed_spread(groups: Sequence[str], panels: dict[str, Sequence[Spread]], colours: Sequence[str],
                log_panels: Sequence[str] = ()) -> plt.Figure:
    """One panel per metric (its y label), two panels a row: for each group (run) the seeds as small
    dots and the given mean as a diamond with ± one standard deviation as an error bar."""
    n_cols = min(2, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    width = max(4.5, 0.55 * len(groups) + 2.0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, 3.9 * n_rows), squeeze=False)
    x = np.arange(len(groups))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (ylabel, spreads) in zip(axes.flat, panels.items()):
        values = [v for seeds, _, _ in spreads for v in seeds]
        for xi, (seeds, mean, std), colour in zip(x, spreads, colours):
            if not seeds:
                continue
            jitter = np.linspace(-0.12, 0.12, len(seeds)) if len(seeds) > 1 else np.zeros(1)
            ax.scatter(xi - 0.1 + jitter, seeds, color=colour, s=16, alpha=0.6, zorder=2)
            if mean is not None:
                ax.errorbar([xi + 0.22], [mean], yerr=None if std is None else [[std], [std]], fmt="D",
                            color=colour, markersize=6, capsize=4, zorder=3)
        if ylabel in log_panels:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis, values)
        elif values and min(values) < 0 < max(values):
            ax.axhline(0, color="black", linestyle=":", linewidth=0.8)
        ax.set_ylabel(ylabel, fontsize=10)
        long_labels = len(groups) > 3 or max(len(g) for g in groups) > 10
        ax.set_xticks(x, groups, rotation=30 if long_labels else 0, ha="right" if long_labels else "center")
        ax.tick_params(labelsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
