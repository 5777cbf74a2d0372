"""`GeometryOptions`: the matrix pass's settings as one frozen object, from the CLI to the cache key."""

from __future__ import annotations

from dataclasses import dataclass

# Cap of the default k: 64 directions are "principal" for the largest matrices the papers study.
DEFAULT_K_CAP = 64
# k²/(m·n) above this share: the "principal" block is no longer small against the matrix (cautioned).
K_SHARE_CAUTION = 0.02


def default_rank_k(m: int, n: int) -> int:
    """k = min(64, max(1, min(m, n) // 8)): an eighth of the smaller side, so the top-k block of a square
    matrix holds k²/(m·n) = 1/64 ≈ 1.6% of it (below K_SHARE_CAUTION) and a 64-wide matrix gets k = 8."""
    return min(DEFAULT_K_CAP, max(1, min(m, n) // 8))


@dataclass(frozen=True)
class GeometryOptions:
    """Top-`k` singular subspaces by randomized SVD (`exact`: full SVD, for small models and checks).

    k = None: `default_rank_k(m, n)` per matrix; an integer k is clamped to min(m, n) per matrix (and
    said so). Passed unchanged to `diff`, `series`, `compare_runs` and the reports; `None` in their place
    means no matrix pass. Its fields are part of the series cache key.
    """

    k: int | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 1:
            raise ValueError(f"GeometryOptions.k must be at least 1, got {self.k}")
