"""The run comparison: each run's checkpoint series and the behavior probe over its generations, joined.

`compare_runs` computes the inputs (used by `dynamics report compare` and `dynamics demo`). The join and
its statistics live here too, as plain data the report renders without computing anything:
- `run_rows`: per run, its seeds' parameter metrics at their last checkpoint (mean ± std across seeds)
  and each seed's behavior shift to that checkpoint, with the probe's across-seed shift;
- `points`: every (run, seed, step) with both a series step and a behavior shift to that step;
- `correlate`: Spearman's rank correlation of a behavior shift with a parameter metric over points, shown
  only with at least MIN_DISTINCT_NONZERO_POINTS distinct (x, shift) points whose shift is not 0, and only
  within one comparable group (`comparable_groups`: RL runs apart from SFT, runs that barely trained left out);
- `zero_advantage_steps`: how many logged steps of a run had no learning signal (module constants below).

Parameter metrics are registered ones (`dynamics.metrics`) read from `SeriesStep.vs_base`; KL and where it sits
(`probes.kl.kl_by_position_class`) from `SeriesStep.kl`; p_style shifts from each run's style.jsonl.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import stats

from dynamics.errors import DynamicsError
from dynamics.geometry_options import GeometryOptions
from dynamics.runs import RunInfo, find_runs
from dynamics.series import Series, SeriesStep, saved_or_live_series
from dynamics.training_log import CANONICAL_FIELDS, read_training_log
from probes.behavior import BehaviorResult, SeedShift, Shift, behavior_probe
from probes.generations import read_generations
from probes.style import StyleShifts, read_style_records, style_shifts

# Registered model-level metrics the comparison joins with behavior shifts, in table and panel order.
PARAMETER_METRICS = ("bitwise_sparsity", "relative_update_norm", "principal_energy_ratio")
MIN_POINTS_FOR_CORRELATION = 3
MIN_DISTINCT_NONZERO_POINTS = 5  # fewer, and ρ rests on ties at 0 (issue 15: ten tied zeros and one SFT point)
# A GRPO step has no learning signal when every reward of its rollout is equal: the logged reward std is 0, or
# (binary rewards, std not logged) the reward mean is 0 or 1. "Most steps" = more than half the logged ones.
ZERO_ADVANTAGE_MAJORITY = 0.5
TRAIN_LOG = "train_log.jsonl"
STYLE_RECORDS = "style.jsonl"
KL_COLUMNS = ("kl_mean_per_token", "kl_share_first", "kl_share_digit")  # from SeriesStep.kl
DEFAULT_GEOMETRY = GeometryOptions()  # the comparison always runs the matrix pass (ρ_k column)


class ComparisonError(DynamicsError):
    """Series that cannot be joined into a comparison (message names the run)."""


@dataclass(frozen=True)
class Comparison:
    runs: tuple[RunInfo, ...]
    series: tuple[Series, ...]  # one per run, same order
    behavior: BehaviorResult | None  # None when no run has a generations.jsonl
    without_generations: tuple[Path, ...]
    style: StyleShifts | None = None  # None when no run has a style.jsonl
    zero_advantage: tuple[ZeroAdvantage | None, ...] = ()  # per series (same order); None without a train log


@dataclass(frozen=True)
class ZeroAdvantage:
    """Logged training steps of one run folder, and how many had no learning signal (module constants)."""

    zero_steps: int
    logged_steps: int

    @property
    def most(self) -> bool:
        """More than ZERO_ADVANTAGE_MAJORITY of the logged steps had zero advantage."""
        return self.logged_steps > 0 and self.zero_steps > ZERO_ADVANTAGE_MAJORITY * self.logged_steps


def zero_advantage_steps(path: str | Path) -> ZeroAdvantage | None:
    """Count the steps of a training log with reward std 0 (when logged as `reward_std`) or else a reward mean
    (`reward_mean` or a CANONICAL_FIELDS reward spelling) of exactly 0 or 1; None when no step logs a reward."""
    log = read_training_log(path)
    zero = logged = 0
    for values in log.steps.values():
        std = values.get("reward_std")
        mean = next((values[k] for k in ("reward_mean", *CANONICAL_FIELDS["reward"]) if k in values), None)
        if std is None and mean is None:
            continue
        logged += 1
        zero += int(std == 0) if std is not None else int(mean in (0.0, 1.0))
    return ZeroAdvantage(zero, logged) if logged else None


def compare_runs(paths: list[str | Path], manifest: str | Path | None = None,
                 geometry: GeometryOptions = DEFAULT_GEOMETRY, device: str = "auto",
                 progress: bool = False) -> Comparison:
    """Series with geometry for every run found in `paths` (cached under each RUN/series; a run folder with
    only a live monitor's series, `dynamics.series.LIVE_SERIES`, gives that one) and the behavior probe over their `generations.jsonl`, relabelled with each run's run/seed/reward labels."""
    runs = find_runs(paths, manifest)
    results = tuple(saved_or_live_series(run, geometry=geometry, device=device, progress=progress) for run in runs)
    with_generations = [run for run in runs if (run.path / "generations.jsonl").is_file()]
    generations = [replace(g, run=run.run, seed=run.seed, reward=run.reward) for run in with_generations
                   for g in read_generations(run.path / "generations.jsonl")]
    records = [replace(r, run=run.run, seed=run.seed, reward=run.reward) for run in runs
               if (run.path / STYLE_RECORDS).is_file() for r in read_style_records(run.path / STYLE_RECORDS)]
    return Comparison(tuple(runs), results, behavior_probe(generations) if generations else None,
                      tuple(run.path for run in runs if run not in with_generations),
                      style_shifts(records) if records else None,
                      tuple(zero_advantage_steps(run.path / TRAIN_LOG) if (run.path / TRAIN_LOG).is_file() else None
                            for run in runs))


# --- statistics ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spread:
    """One value per seed (None where undefined, e.g. ρ_k at Δ = 0), their mean and sample standard
    deviation (ddof 1) over the defined ones; mean None without any, std None with fewer than two."""

    values: tuple[float | None, ...]
    mean: float | None
    std: float | None

    @property
    def present(self) -> tuple[float, ...]:
        return tuple(v for v in self.values if v is not None)


def seed_spread(values: Sequence[float | None]) -> Spread:
    """Mean and sample standard deviation (ddof 1) of the defined values (see `Spread`)."""
    present = [v for v in values if v is not None]
    if not present:
        return Spread(tuple(values), None, None)
    return Spread(tuple(values), float(np.mean(present)),
                  float(np.std(present, ddof=1)) if len(present) > 1 else None)


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's ρ over `n` points and its two-sided p-value; both None with `undefined` saying why."""

    rho: float | None
    p_value: float | None
    n: int
    undefined: str | None = None


def too_few_points(x: Sequence[float], y: Sequence[float]) -> str | None:
    """Why ρ is not shown for these points, or None: fewer than MIN_DISTINCT_NONZERO_POINTS distinct (x, y)
    pairs with y ≠ 0."""
    distinct = len({(a, b) for a, b in zip(x, y) if b != 0})
    if distinct < MIN_DISTINCT_NONZERO_POINTS:
        return f"{distinct} distinct non-zero shift{'s' if distinct != 1 else ''} (< {MIN_DISTINCT_NONZERO_POINTS})"
    return None


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's ρ between x and y and its two-sided p-value (scipy); (None, None) with fewer than
    MIN_POINTS_FOR_CORRELATION points or when either side is constant."""
    if len(x) < MIN_POINTS_FOR_CORRELATION or len(set(x)) < 2 or len(set(y)) < 2:
        return None, None
    result = stats.spearmanr(x, y)
    return float(result.statistic), float(result.pvalue)


# --- the join --------------------------------------------------------------------------------------

def parameter_value(step: SeriesStep, name: str) -> float | None:
    """The registered metric `name` of a series step against the base; `bitwise_sparsity` of the bf16
    tensors when the checkpoint has any, else over all tensors; `principal_energy_ratio` None without
    geometry."""
    metrics = step.vs_base
    if name == "bitwise_sparsity":
        return metrics["bitwise_sparsity_by_dtype"].get("bfloat16", metrics["bitwise_sparsity"])
    if name == "principal_energy_ratio":
        return None if metrics["geometry"] is None else metrics["geometry"]["principal_energy_ratio"]
    return metrics[name]


def runs_by_label(comparison: Comparison) -> dict[str, list[Series]]:
    """Series per run label (in first-seen order), each run's seeds in seed order. A series without run
    labels, or two series of one run with the same seed, is a ComparisonError."""
    runs: dict[str, list[Series]] = {}
    for s in comparison.series:
        if not s.run:
            raise ComparisonError(f"series of {s.run_dir}: no run label; give run, reward and seed (run.json or "
                                  "a manifest)")
        runs.setdefault(s.run["run"], []).append(s)
    for label, seeds in runs.items():
        seeds.sort(key=lambda s: s.run["seed"])
        if len({s.run["seed"] for s in seeds}) < len(seeds):
            raise ComparisonError(f"run {label}: two folders with the same seed")
    return runs


def shift_of(behavior: BehaviorResult | StyleShifts | None, run: str, seed: int, step: int,
             metric: str) -> Shift | None:
    """The behavior probe's (or style records') shift of `metric` for (run, seed) from its first step to `step`."""
    if behavior is None:
        return None
    return next((s for s in behavior.shifts if s.run == run and s.seed == seed and s.to_step == step
                 and s.metric == metric), None)


def seed_shift_of(behavior: BehaviorResult | StyleShifts | None, run: str, step: int,
                  metric: str) -> SeedShift | None:
    """The behavior probe's across-seed shift of `metric` for `run` to `step`."""
    if behavior is None:
        return None
    return next((s for s in behavior.seed_shifts if s.run == run and s.to_step == step and s.metric == metric),
                None)


def kl_value(step: SeriesStep, name: str) -> float | None:
    """A KL_COLUMNS value of a series step: the mean KL per token, or the share of the KL sum at the first
    response token / at digit tokens (`probes.kl.kl_by_position_class`); None where not measured."""
    if step.kl is None:
        return None
    if name == "kl_mean_per_token":
        return step.kl.get("kl_mean_per_token")
    split = step.kl.get("kl_by_position") or {}
    return (split.get(name.removeprefix("kl_share_")) or {}).get("share")


def shift_source(comparison: Comparison, metric: str) -> BehaviorResult | StyleShifts | None:
    """Where the shifts of `metric` come from: the style records for "p_style", else the behavior probe."""
    return comparison.style if metric == "p_style" else comparison.behavior


@dataclass(frozen=True)
class RunRow:
    """One run at its seeds' last checkpoints.

    parameters: registered metric → its spread over the seeds (against the base).
    shifts: behavior metric → each seed's shift to its last checkpoint (None where not measured).
    seed_shift: behavior metric → the probe's across-seed shift to the latest of those steps.
    shift_spread: behavior metric → the seeds' shifts, with the probe's across-seed mean and std where
        it has one, else their own (`seed_spread`).
    kl: KL_COLUMNS name → its spread over the seeds at their last checkpoint.
    zero_advantage: per seed, its training log's zero-advantage count (None without a log).
    """

    run: str
    reward: str
    seeds: tuple[int, ...]
    last_steps: tuple[int, ...]  # one per seed
    parameters: dict[str, Spread]
    shifts: dict[str, tuple[Shift | None, ...]]
    seed_shift: dict[str, SeedShift | None]
    shift_spread: dict[str, Spread]
    kl: dict[str, Spread]
    zero_advantage: tuple[ZeroAdvantage | None, ...]

    @property
    def idle_seeds(self) -> tuple[int, ...]:
        """Seeds whose advantage was zero for most logged steps."""
        return tuple(seed for seed, z in zip(self.seeds, self.zero_advantage) if z is not None and z.most)


def run_rows(comparison: Comparison, shift_metrics: Sequence[str]) -> list[RunRow]:
    """Every run of the comparison at its seeds' last checkpoints (see `RunRow`)."""
    rows = []
    idle = dict(zip((id(s) for s in comparison.series), comparison.zero_advantage))
    for label, seeds in runs_by_label(comparison).items():
        last = [s.steps[-1] for s in seeds]
        latest = max(step.step for step in last)
        shifts, seed_shift, shift_spread = {}, {}, {}
        for metric in shift_metrics:
            source = shift_source(comparison, metric)
            per_seed = tuple(shift_of(source, label, s.run["seed"], step.step, metric) for s, step in zip(seeds, last))
            across = seed_shift_of(source, label, latest, metric)
            deltas = tuple(s.delta for s in per_seed if s is not None)
            own = seed_spread(deltas)
            if across is not None:
                own = Spread(deltas, across.mean, across.std if len(deltas) > 1 else None)
            shifts[metric], seed_shift[metric], shift_spread[metric] = per_seed, across, own
        rows.append(RunRow(
            run=label, reward=seeds[0].run["reward"], seeds=tuple(s.run["seed"] for s in seeds),
            last_steps=tuple(step.step for step in last),
            parameters={name: seed_spread([parameter_value(step, name) for step in last])
                        for name in PARAMETER_METRICS},
            shifts=shifts, seed_shift=seed_shift, shift_spread=shift_spread,
            kl={name: seed_spread([kl_value(step, name) for step in last]) for name in KL_COLUMNS},
            zero_advantage=tuple(idle.get(id(s)) for s in seeds)))
    return rows


@dataclass(frozen=True)
class Point:
    """One (run, seed, step) with a behavior shift to that step and the step's parameter metrics."""

    run: str
    reward: str
    seed: int
    step: int
    shift: Shift
    parameters: dict[str, float | None]  # PARAMETER_METRICS → value against the base


def points(comparison: Comparison) -> list[Point]:
    """Every (run, seed, step) that has both a series step and behavior (or p_style) shifts to that step, one
    point per shift (metric), in series then step then shift order."""
    shifts = [*(comparison.behavior.shifts if comparison.behavior else ()),
              *(comparison.style.shifts if comparison.style else ())]
    if not shifts:
        return []
    out = []
    for s in comparison.series:
        if not s.run:
            raise ComparisonError(f"series of {s.run_dir}: no run label; give run, reward and seed (run.json or "
                                  "a manifest)")
        label, seed = s.run["run"], s.run["seed"]
        for step in s.steps:
            parameters = {name: parameter_value(step, name) for name in PARAMETER_METRICS}
            out += [Point(label, s.run["reward"], seed, step.step, shift, parameters)
                    for shift in shifts if shift.run == label and shift.seed == seed and shift.to_step == step.step]
    return out


def correlate(chosen: Sequence[Point], parameter: str, positive_only: bool = False) -> tuple[list[Point],
                                                                                              RankCorrelation]:
    """The points with a value of `parameter` (positive ones when `positive_only`, as a log axis needs)
    and Spearman's ρ of their behavior shift against it; `undefined` says why ρ is not defined."""
    kept = [p for p in chosen if p.parameters[parameter] is not None
            and (not positive_only or p.parameters[parameter] > 0)]
    x, y = [p.parameters[parameter] for p in kept], [p.shift.delta for p in kept]
    undefined = too_few_points(x, y)
    if undefined is not None:
        return kept, RankCorrelation(None, None, len(x), undefined)
    rho, p_value = rank_correlation(x, y)
    if rho is None:
        if len(x) < MIN_POINTS_FOR_CORRELATION:
            undefined = f"< {MIN_POINTS_FOR_CORRELATION} points"
        else:
            undefined = "shift constant" if len({p.shift.delta for p in kept}) < 2 else "x constant"
    return kept, RankCorrelation(rho, p_value, len(x), undefined)


def comparable_groups(chosen: Sequence[Point], comparison: Comparison) -> tuple[dict[str, list[Point]],
                                                                                  list[tuple[str, int]]]:
    """Points split into "RL" (every reward but sft) and "SFT", leaving out the (run, seed) folders whose
    advantage was zero for most steps (they did not train, so their parameter change says nothing); returns
    the groups with points and the (run, seed) pairs left out."""
    idle = {(s.run["run"], s.run["seed"]) for s, z in zip(comparison.series, comparison.zero_advantage)
            if s.run and z is not None and z.most}
    groups: dict[str, list[Point]] = {}
    for p in chosen:
        if (p.run, p.seed) not in idle:
            groups.setdefault("SFT" if p.reward == "sft" else "RL", []).append(p)
    return groups, sorted(idle)
