"""`ElementStats`: the additive counters one fused elementwise pass produces for a tensor pair.

Notation: W0 = tensor of checkpoint A (base), W1 = of checkpoint B, Δ = W1 − W0 in float32,
n = number of elements. A *finite pair* has W0 and W1 both finite. A *moved* element is a
finite pair whose stored bits differ and that is not a ±0 pair; it has a ULP distance ≥ 1.
A *sign crossing* is a moved element with W0 and W1 of opposite signs, neither of them ±0
(W0·W1 < 0 in exact arithmetic): its ULP distance counts every tiny value on both sides of zero
(−1.0e-4 → +1.08e-4 in bf16 is ~29,000 ULPs), so it is counted in its own bucket, not in the ULP
histogram. A move from or to ±0 stays in the histogram: its distance |ord(W)| is the count of values
between zero and W, on one side.

Every field is a count or a sum, so statistics of a layer, a module kind or the whole model
are the field-wise sum (`+`) of its tensors' stats; ratios are derived afterwards
(`dynamics.metrics`). Both kernel twins (`dynamics.kernels`) fill exactly these fields.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

# |Δ| ≤ τ for τ in this grid (absolute tolerance sparsity; 1e-5 is the common published choice).
ABS_TOLERANCES: tuple[float, ...] = (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3)
# |Δ| ≤ τ·max(|W0|, REL_EPSILON) for τ in this grid (relative tolerance sparsity).
REL_TOLERANCES: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
REL_EPSILON: float = 1e-12
# ULP bucket j holds distances d with 2^(j-1) < d ≤ 2^j (bucket 0: d = 1); 33 buckets cover
# every distance between two float32 values (< 2^32), 16-bit dtypes use buckets 0..16.
ULP_BUCKETS: int = 33


SIGN_CROSSING_LABEL = "sign crossing"


def ulp_bucket_labels() -> list[str]:
    """Human labels of the ULP buckets: "1", "2", "3-4", "5-8", ... (sign crossings: SIGN_CROSSING_LABEL)."""
    labels = ["1", "2"]
    for j in range(2, ULP_BUCKETS):
        labels.append(f"{2 ** (j - 1) + 1}-{2 ** j}")
    return labels


@dataclass(frozen=True)
class ElementStats:
    """Counters of one elementwise pass over (W0, W1).

    numel: n.  changed: elements whose stored bits differ (includes ±0 flips and NaN/Inf changes).
    changed_signed_zero: changed elements where both values are ±0.
    changed_nonfinite: changed elements where W0 or W1 is NaN/Inf.
    nan_a, nan_b, inf_a, inf_b: NaN / ±Inf counts in W0 and W1.
    finite_pairs: elements with W0 and W1 both finite.
    ulp_histogram[j]: moved elements that are not sign crossings, with ULP distance in bucket j.
    sign_crossings: moved elements with W0·W1 < 0 (neither ±0); moved = Σ ulp_histogram + sign_crossings.
        0 in results written before it existed (their crossings are in the histogram).
    within_abs[i]: finite pairs with |Δ| ≤ ABS_TOLERANCES[i].
    within_rel[i]: finite pairs with |Δ| ≤ REL_TOLERANCES[i]·max(|W0|, REL_EPSILON).
    hidden_by_bf16 / hidden_by_fp16: float32 pairs only (None otherwise): moved elements whose
        round-to-nearest-even bf16 (fp16) values have identical bits.
    sum_sq_delta, sum_abs_delta, sum_sq_a, sum_sq_b: Σ Δ², Σ |Δ|, Σ W0², Σ W1² over finite pairs.
    max_abs_delta: max |Δ| over finite pairs (0 when there are none).
    rows, cols, unchanged_rows, unchanged_cols: 2-D tensors only (None otherwise): row and column
        counts, and how many rows / columns have no changed element.
    """

    numel: int
    changed: int
    changed_signed_zero: int
    changed_nonfinite: int
    nan_a: int
    nan_b: int
    inf_a: int
    inf_b: int
    finite_pairs: int
    ulp_histogram: tuple[int, ...]
    within_abs: tuple[int, ...]
    within_rel: tuple[int, ...]
    hidden_by_bf16: int | None
    hidden_by_fp16: int | None
    sum_sq_delta: float
    sum_abs_delta: float
    sum_sq_a: float
    sum_sq_b: float
    max_abs_delta: float
    rows: int | None
    cols: int | None
    unchanged_rows: int | None
    unchanged_cols: int | None
    sign_crossings: int = 0

    @property
    def moved(self) -> int:
        """Changed finite non-±0 elements (= Σ ulp_histogram + sign_crossings)."""
        return sum(self.ulp_histogram) + self.sign_crossings

    def __add__(self, other: ElementStats) -> ElementStats:
        """Field-wise sum (max for max_abs_delta); None + x = x."""
        merged = {}
        for f in fields(self):
            x, y = getattr(self, f.name), getattr(other, f.name)
            if f.name == "max_abs_delta":
                merged[f.name] = max(x, y)
            elif x is None or y is None:
                merged[f.name] = y if x is None else x
            elif isinstance(x, tuple):
                merged[f.name] = tuple(p + q for p, q in zip(x, y))
            else:
                merged[f.name] = x + y
        return ElementStats(**merged)

    @staticmethod
    def zero() -> ElementStats:
        """The neutral element of `+`."""
        return ElementStats(
            numel=0, changed=0, changed_signed_zero=0, changed_nonfinite=0,
            nan_a=0, nan_b=0, inf_a=0, inf_b=0, finite_pairs=0,
            ulp_histogram=(0,) * ULP_BUCKETS,
            within_abs=(0,) * len(ABS_TOLERANCES), within_rel=(0,) * len(REL_TOLERANCES),
            hidden_by_bf16=None, hidden_by_fp16=None,
            sum_sq_delta=0.0, sum_abs_delta=0.0, sum_sq_a=0.0, sum_sq_b=0.0, max_abs_delta=0.0,
            rows=None, cols=None, unchanged_rows=None, unchanged_cols=None,
        )
