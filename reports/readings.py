"""One-line readings that close each gate of the three-gate report: pure functions of numbers the
diff, KL and Fisher results already hold (registered metrics, never recomputed here), with the
thresholds as named constants.

The thresholds are conventions for a first reading, not statistical tests: a reader who needs
more looks at the tables above the line.
"""

from __future__ import annotations

# Gate I — KL drift KL(π_B ‖ π_A) in nats per token, on-policy (B's own samples). RL with a KL
# anchor typically stays in the thousandths to hundredths; SFT on off-policy data drifts further.
SMALL_KL_NATS = 0.01       # below: a small drift
LARGE_KL_NATS = 0.1        # above: a large drift
# Until KL is measured: relative update norm ‖Δ‖_F/‖W0‖_F, a weight-space stand-in.
SMALL_UPDATE_NORM = 1e-3   # below: a small update (RL-like runs at lr ~1e-6 sit here)
LARGE_UPDATE_NORM = 1e-2   # above: a large update (SFT-like runs at lr ~1e-4 sit here)

# Gate II — principal energy ratio ρ_k / (k²/(m·n)): the update's share of energy in the top-k
# principal block against the share a random direction would have.
OFF_PRINCIPAL_RATIO = 0.5  # below: off-principal
ON_PRINCIPAL_RATIO = 2.0   # above: on-principal; in between: indistinguishable from random
# Gate II — curvature alignment: share of ‖Δ‖² on the top-q% diagonal-Fisher coordinates of the
# base over its chance level q/100, read at the smallest q measured.
FISHER_AVOIDED_RATIO = 0.5  # below: the update avoids high-curvature coordinates
FISHER_ALIGNED_RATIO = 2.0  # above: the update concentrates on them; in between: as chance

# Gate III — bitwise sparsity (share of bit-identical weights) and, for float32 pairs, the share
# of moved weights whose bf16 roundings are equal.
SPARSE_BITWISE = 0.5       # above: sparse under the stored dtype
HIDDEN_MOSTLY = 0.5        # above: most of the float32 movement is invisible once stored in bf16

KL_PROBE_COMMAND = "dynamics probe kl BASE TUNED --prompts P --json kl.json"
FISHER_PROBE_COMMAND = "dynamics probe fisher BASE TUNED --prompts P --json fisher.json"


def _sci(x: float) -> str:
    return f"{x:.2e}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x >= 0.001 or x == 0 else f"{100 * x:.3f}%"


def kl_reading(kl_mean_per_token: float | None, relative_update_norm: float | None,
               kl_p95_per_token: float | None = None, on_policy: bool = True) -> str:
    """Gate I: KL drift when measured (said on-policy only when the KL file says so), classed against
    SMALL_KL_NATS / LARGE_KL_NATS, with its 95th percentile; otherwise what is missing plus the relative update norm classed against
    SMALL_UPDATE_NORM / LARGE_UPDATE_NORM."""
    if kl_mean_per_token is not None:
        size = _classed(kl_mean_per_token, SMALL_KL_NATS, LARGE_KL_NATS, "drift")
        where = "on-policy" if on_policy else "off-policy: responses read from a file"
        reading = f"KL drift: {kl_mean_per_token:.3g} nats per token ({where}, KL(π_B ‖ π_A)), {size}"
        if kl_p95_per_token is not None:
            reading += f"; 95th percentile {kl_p95_per_token:.3g}"
        if relative_update_norm is not None:
            reading += f"; in weight space ‖Δ‖/‖W0‖ = {_sci(relative_update_norm)}"
        return reading + "."
    missing = f"KL drift not measured (run `{KL_PROBE_COMMAND}` and pass `--kl kl.json`)"
    if relative_update_norm is None:
        return f"{missing}; no relative update norm either (W0 = 0)."
    size = _classed(relative_update_norm, SMALL_UPDATE_NORM, LARGE_UPDATE_NORM, "update")
    return f"{missing}; in weight space ‖Δ‖/‖W0‖ = {_sci(relative_update_norm)}, {size}."


def _classed(value: float, small: float, large: float, noun: str) -> str:
    if value < small:
        return f"a small {noun} (< {small:g})"
    if value > large:
        return f"a large {noun} (> {large:g})"
    return f"a moderate {noun} ({small:g} … {large:g})"


def fisher_reading(share: float | None, over_chance: float | None, q_percent: float) -> str:
    """Gate II, curvature: `share` of ‖Δ‖² on the top-q% Fisher coordinates and `over_chance` (the
    registered `fisher_share_over_chance`, share / (q/100)) → "concentrated on high-curvature
    coordinates" (> FISHER_ALIGNED_RATIO), "avoids them" (< FISHER_AVOIDED_RATIO), else "as chance";
    no reading without a share (Δ = 0)."""
    if share is None or over_chance is None:
        return "no update energy to place on Fisher coordinates (Δ = 0)."
    text = f"{_pct(share)} of ‖Δ‖² on the top-{q_percent:g}% Fisher coordinates ({over_chance:.2g}× chance)"
    if over_chance > FISHER_ALIGNED_RATIO:
        return f"concentrated on high-curvature coordinates: {text}."
    if over_chance < FISHER_AVOIDED_RATIO:
        return f"avoids high-curvature coordinates: {text}."
    return f"at chance, blind to curvature: {text}."


def principal_energy_reading(ratio: float | None, max_angle_deg: float | None = None) -> str:
    """Gate II: `ratio` = the registered `principal_energy_ratio` (ρ_k over the random baseline,
    Δ-energy-weighted) → "off-principal" (< OFF_PRINCIPAL_RATIO), "on-principal" (> ON_PRINCIPAL_RATIO),
    else "indistinguishable from random directions"; plus the max principal angle when given. No
    reading when the ratio is None (Δ = 0 in every measured matrix)."""
    if ratio is None:
        return "no update energy to place (Δ = 0 in every measured matrix)."
    share = f"update energy in the top-k block is {ratio:.2g}× the random baseline"
    if ratio < OFF_PRINCIPAL_RATIO:
        reading = f"off-principal: {share}"
    elif ratio > ON_PRINCIPAL_RATIO:
        reading = f"on-principal: {share}"
    else:
        reading = f"indistinguishable from random directions: {share}"
    if max_angle_deg is not None:
        reading += f"; top-k subspaces rotate by {max_angle_deg:.2g}° at most (mean over matrices)"
    return reading + "."


def precision_reading(bitwise_sparsity: float | None, dtypes: list[str],
                      hidden_by_bf16: float | None = None) -> str:
    """Gate III: "sparse under DTYPE" when bitwise_sparsity > SPARSE_BITWISE, else "dense under
    DTYPE"; for float32 pairs also whether bf16 storage would hide most of the movement
    (hidden_by_bf16 > HIDDEN_MOSTLY)."""
    if bitwise_sparsity is None:
        return "no elements compared."
    stored = "/".join(_short(d) for d in dtypes) or "the stored dtype"
    word = "sparse" if bitwise_sparsity > SPARSE_BITWISE else "dense"
    reading = f"{word} under {stored}: {_pct(bitwise_sparsity)} of the weights are bit-identical"
    if hidden_by_bf16 is not None:
        if hidden_by_bf16 > HIDDEN_MOSTLY:
            reading += f"; stored as bf16, {_pct(hidden_by_bf16)} of the moved weights would not move"
        else:
            reading += f"; stored as bf16, only {_pct(hidden_by_bf16)} of the moved weights would be hidden"
    return reading + "."


def _short(dtype: str) -> str:
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "float64": "fp64"}.get(dtype, dtype)
