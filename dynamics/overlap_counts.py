"""`OverlapCounts`: additive counters of R runs' update masks over one set of elements.

Everything the cross-run consistency metrics need (`dynamics.metrics`, needs "overlap") is a count,
so a module kind, a layer or the model is the field-wise sum of its tensors' counters and the ratios
are taken afterwards (element-weighted, like the diff's aggregates).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations


def run_pairs(runs: int) -> list[tuple[int, int]]:
    """The unordered run pairs (i, j), i < j, in the order `OverlapCounts.intersections` holds them."""
    return list(combinations(range(runs), 2))


def pair_key(i: int, j: int) -> str:
    """JSON key of run pair (i, j): "0-1"."""
    return f"{i}-{j}"


@dataclass(frozen=True)
class OverlapCounts:
    """numel: n elements.  updated[r]: |M_r|, elements run r changed.
    intersections[p]: |M_i ∩ M_j| for the p-th pair of `run_pairs(R)`.
    updated_by_all: elements every run changed; updated_by_none: elements no run changed."""

    numel: int
    updated: tuple[int, ...]
    intersections: tuple[int, ...]
    updated_by_all: int
    updated_by_none: int

    @property
    def runs(self) -> int:
        return len(self.updated)

    def pairs(self) -> list[tuple[int, int, int]]:
        """(i, j, |M_i ∩ M_j|) per run pair."""
        return [(i, j, c) for (i, j), c in zip(run_pairs(self.runs), self.intersections)]

    def __add__(self, other: OverlapCounts) -> OverlapCounts:
        if other.runs != self.runs:
            raise ValueError(f"cannot add overlap counters of {self.runs} and {other.runs} runs")
        return OverlapCounts(
            numel=self.numel + other.numel,
            updated=tuple(x + y for x, y in zip(self.updated, other.updated)),
            intersections=tuple(x + y for x, y in zip(self.intersections, other.intersections)),
            updated_by_all=self.updated_by_all + other.updated_by_all,
            updated_by_none=self.updated_by_none + other.updated_by_none,
        )

    @staticmethod
    def zero(runs: int) -> OverlapCounts:
        """The neutral element of `+` for `runs` runs."""
        return OverlapCounts(0, (0,) * runs, (0,) * len(run_pairs(runs)), 0, 0)
