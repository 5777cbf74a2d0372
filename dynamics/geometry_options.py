"""`GeometryOptions`: the matrix pass's settings as one frozen object, from the CLI to the cache key."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GeometryOptions:
    """Top-`k` singular subspaces by randomized SVD (`exact`: full SVD, for small models and checks).

    Passed unchanged to `diff`, `series`, `compare_runs` and the reports; `None` in their place means
    no matrix pass. Its fields are part of the series cache key.
    """

    k: int = 64
    exact: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"GeometryOptions.k must be at least 1, got {self.k}")
