"""Figures say what they draw: zoomed share axes, log bars from their baseline, grey Δ = 0 cells, legends
of drawn artists only, and series curves from step 0."""

import numpy as np
from matplotlib.patches import Rectangle

from reports import figures


def _legend_texts(fig) -> list[str]:
    legend = fig.axes[0].get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_share_bars_zoom_to_the_data():
    fig = figures.bars(["a", "b"], [0.964, 0.967], "run", "bitwise sparsity", "t", unit_interval=True)
    low, high = fig.axes[0].get_ylim()
    assert 0.95 < low < 0.964 and 0.967 < high < 0.98
    assert any(t.get_text().startswith("y axis zoomed: starts at 0.9") for t in fig.axes[0].texts)
    spread = figures.bars(["a", "b"], [0.1, 0.9], "run", "bitwise sparsity", "t", unit_interval=True)
    assert spread.axes[0].get_ylim() == (0.0, 1.08)


def test_log_bars_start_at_the_baseline_and_have_no_bar_without_one():
    fig = figures.bars(["q", "k", "v"], [40.0, 0.05, 2.0], "kind", "ratio", "t", log=True,
                       hlines=[(1.0, "random directions (= 1)")])
    rects = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_width() < 1]
    assert [r.get_y() for r in rects] == [1.0, 1.0, 1.0]
    assert np.allclose([r.get_y() + r.get_height() for r in rects], [40.0, 0.05, 2.0], rtol=1e-12)
    bare = figures.bars(["q", "k"], [1e-5, 1e-2], "kind", "norm", "t", log=True)
    assert not bare.axes[0].patches and len(bare.axes[0].collections) == 1  # markers, not bars


def test_heatmap_zero_cells_are_grey_on_a_linear_scale():
    fig = figures.heatmap(["0", "1"], ["q", "k"], [[0.0, 2e-3], [3e-3, None]], "kind", "layer", "norm", "t",
                          log=None, zero_is_grey=True)
    shown = fig.axes[0].images[0].get_array()
    assert shown.mask.tolist() == [[True, False], [False, True]]  # masked cells take the grey "bad" colour
    plain = figures.heatmap(["0"], ["q", "k"], [[0.0, 2e-3]], "kind", "layer", "norm", "t")
    assert not np.ma.getmaskarray(plain.axes[0].images[0].get_array()).any()


def test_step_curve_legend_lists_only_drawn_curves_and_visible_bands():
    fig = figures.step_curves([0, 4], [("vs base", [None, 2.0], "-"), ("vs previous", [None, None], "--")],
                              "ratio", "t", "tab:blue", log=True, hlines=[(1.0, "random (= 1)")],
                              bands=[(10, 1e6, "tab:blue", "on-principal"), (1e-6, 0.1, "tab:orange", "off-principal")])
    assert _legend_texts(fig) == ["vs base", "random (= 1)"]  # no empty curve, no band off the axis


def test_series_curves_start_at_step_0_from_the_base(tmp_path):
    from types import SimpleNamespace

    from reports.series import _sparsity_blocks

    steps = [SimpleNamespace(step=s, vs_base={"bitwise_sparsity": v, "headline_tolerance_sparsity": v},
                             vs_previous=None if s == 2 else {"bitwise_sparsity": 0.99}) for s, v in ((2, 0.98), (4, 0.97))]
    figure = _sparsity_blocks(steps, tmp_path, "tab:blue")[0]
    rows = figure.data.read_text().splitlines()
    assert rows[1].startswith("0,1.0,1.0,") and [r.split(",")[0] for r in rows[1:]] == ["0", "2", "4"]
    assert "step 0 is the base itself" in figure.caption
