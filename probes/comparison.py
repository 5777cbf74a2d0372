"""Inputs of the run comparison: each run's checkpoint series and the behavior probe over its generations.

Used by `dynamics report compare` and `dynamics demo`; the report itself only renders what this returns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from dynamics.geometry_options import GeometryOptions
from dynamics.runs import RunInfo, find_runs
from dynamics.series import Series, series
from probes.behavior import BehaviorResult, behavior_probe
from probes.generations import read_generations


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunInfo, ...]
    series: tuple[Series, ...]  # one per run, same order
    behavior: BehaviorResult | None  # None when no run has a generations.jsonl
    without_generations: tuple[Path, ...]


def compare_runs(paths: list[str | Path], manifest: str | Path | None = None,
                 geometry: GeometryOptions = GeometryOptions(), device: str = "auto",
                 progress: bool = False) -> Comparison:
    """Series with geometry for every run found in `paths` (cached under each RUN/series) and the behavior
    probe over their `generations.jsonl`, relabelled with each run's run/seed/reward labels."""
    runs = find_runs(paths, manifest)
    results = tuple(series(run.path, base=run.base, geometry=geometry, device=device, labels=run,
                           progress=progress) for run in runs)
    with_generations = [run for run in runs if (run.path / "generations.jsonl").is_file()]
    generations = [replace(g, run=run.run, seed=run.seed, reward=run.reward) for run in with_generations
                   for g in read_generations(run.path / "generations.jsonl")]
    return Comparison(tuple(runs), results, behavior_probe(generations) if generations else None,
                      tuple(run.path for run in runs if run not in with_generations))
