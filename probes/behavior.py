"""Behavior probe: response features aggregated per (run, step, seed), and shifts between steps with CIs.

Per response (probes.features): correct (only where a reference answer exists), code reasoning, any reasoning
keyword, non-empty \\boxed{} (format), length; beside them the papers' definitions: Rethink_RLVR's "python"
flag and boxed-extractable format flag, the Noisy Rewards RPR score. Per group: the per-prompt means of those
(responses to one prompt averaged), then their mean over prompts with a 95% bootstrap CI over prompts:
    accuracy, code_rate, keyword_rate, format_rate, length,
    code_rate_rethink_rlvr, format_rate_rethink_rlvr, rpr_noisy_rewards.
These come from greedy responses (`decoding` "greedy") only. From sampled responses (`decoding` "sampled", k per
prompt, e.g. T = 1): sampled_accuracy and sampled_code_rate, per prompt the mean over its k samples, then the
mean over prompts with a bootstrap CI over prompts, exactly as above (a prompt is the unit, not a sample).
Our code rule and Rethink_RLVR's flag are also compared response by response (`code_flag_agreement`).
Shifts, per (run, seed): every step against the run's first step, mean(after) − mean(before) over prompts,
paired on prompt_id when both steps saw the same prompts (bootstrap of per-prompt differences + sign-flip
permutation p), unpaired otherwise (p = None). Across seeds: mean, std and Student-t interval of the per-seed
shifts (`seed_shifts`).

>>> result = behavior_probe(read_generations("runs/grpo-true-s1/generations.jsonl"))  # doctest: +SKIP
>>> result.to_json()["shifts"][0]["ci95"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from dynamics.documents import BEHAVIOR_SCHEMA, finite_json
from dynamics.errors import DynamicsError
from probes.features import (
    REASONING_KEYWORDS,
    VERIFIER,
    boxed_answer_extractable,
    has_boxed_answer,
    is_correct,
    keyword_hits,
    mentions_python,
    reasoning_pattern_reward,
    response_length,
    uses_code_reasoning,
)
from probes.generations import Generation
from probes.statistics import (
    bootstrap_mean_ci,
    paired_difference_ci,
    paired_permutation_p,
    seed_interval,
    unpaired_difference_ci,
)

OUR_METRICS = ("accuracy", "code_rate", "keyword_rate", "format_rate", "length")
PAPER_METRICS = ("code_rate_rethink_rlvr", "format_rate_rethink_rlvr", "rpr_noisy_rewards")  # REFERENCES.md
SAMPLED_METRICS = ("sampled_accuracy", "sampled_code_rate")  # from decoding == "sampled" responses
METRICS = OUR_METRICS + PAPER_METRICS + SAMPLED_METRICS
SMALL_BENCHMARK_PROMPTS = 100  # below this, a few points of difference is within seed-to-seed noise


class BehaviorError(DynamicsError):
    """Generations that cannot be grouped or compared (message names the run/step)."""


@dataclass(frozen=True)
class MetricEstimate:
    mean: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class GroupSummary:
    run: str
    step: int
    seed: int
    reward: str
    n_prompts: int
    n_responses: int
    values: dict[str, MetricEstimate | None]  # None: no response carries what the metric needs (e.g. answers)


@dataclass(frozen=True)
class Shift:
    run: str
    seed: int
    reward: str
    from_step: int
    to_step: int
    metric: str
    delta: float
    ci95: tuple[float, float]
    p_value: float | None  # paired sign-flip permutation test; None when prompts do not match
    paired: bool
    n_prompts: int


@dataclass(frozen=True)
class SeedShift:
    run: str
    reward: str
    from_step: int
    to_step: int
    metric: str
    n_seeds: int
    mean: float
    std: float | None
    ci95: tuple[float, float] | None


@dataclass(frozen=True)
class FlagAgreement:
    """Two yes/no rules on the same responses: the count in each cell of their 2×2 table."""

    both: int
    ours_only: int
    theirs_only: int
    neither: int

    @property
    def responses(self) -> int:
        return self.both + self.ours_only + self.theirs_only + self.neither

    @property
    def rate(self) -> float | None:
        """(both + neither) / responses; None without responses."""
        return (self.both + self.neither) / self.responses if self.responses else None

    @staticmethod
    def count(pairs: Sequence[tuple[bool, bool]]) -> FlagAgreement:
        """The table of (ours, theirs) pairs."""
        cells = Counter(pairs)
        return FlagAgreement(cells[True, True], cells[True, False], cells[False, True], cells[False, False])


@dataclass(frozen=True)
class BehaviorResult:
    verifier: str
    length_unit: str
    keywords: tuple[str, ...]
    groups: tuple[GroupSummary, ...]
    shifts: tuple[Shift, ...]
    seed_shifts: tuple[SeedShift, ...]
    code_flag_agreement: FlagAgreement  # our code rule (ours) vs Rethink_RLVR's "python" flag (theirs)

    def to_json(self) -> dict:
        """The `dynamics.behavior/1` document."""
        agreement = {**asdict(self.code_flag_agreement), "rate": self.code_flag_agreement.rate}
        return finite_json({"schema": BEHAVIOR_SCHEMA, "verifier": self.verifier, "length_unit": self.length_unit,
                            "keywords": list(self.keywords), "metrics": list(METRICS),
                            "groups": [asdict(g) for g in self.groups], "shifts": [asdict(s) for s in self.shifts],
                            "seed_shifts": [asdict(s) for s in self.seed_shifts],
                            "code_flag_agreement": agreement})


def response_features(g: Generation, keywords: tuple[str, ...], tokenizer=None) -> dict[str, float | None]:
    """One response's features as numbers (booleans as 0/1); accuracy is None without a reference answer.
    `keywords` replaces our keyword list only; RPR keeps the paper's phrases. A sampled response gives only
    the SAMPLED_METRICS, a greedy one every other metric (the rest None)."""
    if g.decoding == "sampled":
        return {**dict.fromkeys(OUR_METRICS + PAPER_METRICS),
                "sampled_accuracy": None if g.answer is None else float(is_correct(g.response, g.answer)),
                "sampled_code_rate": float(uses_code_reasoning(g.response))}
    return {
        "accuracy": None if g.answer is None else float(is_correct(g.response, g.answer)),
        "code_rate": float(uses_code_reasoning(g.response)),
        "keyword_rate": float(any(keyword_hits(g.response, keywords).values())),
        "format_rate": float(has_boxed_answer(g.response)),
        "length": float(response_length(g.response, tokenizer)),
        "code_rate_rethink_rlvr": float(mentions_python(g.response)),
        "format_rate_rethink_rlvr": float(boxed_answer_extractable(g.response)),
        "rpr_noisy_rewards": reasoning_pattern_reward(g.response),
        **dict.fromkeys(SAMPLED_METRICS),
    }


def _per_prompt_means(rows: list[tuple[str, dict]]) -> dict[str, dict[str, float]]:
    """metric → prompt_id → mean of that prompt's responses (responses with None left out)."""
    sums: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in METRICS}
    for prompt_id, features in rows:
        for m in METRICS:
            if features[m] is not None:
                sums[m][prompt_id].append(features[m])
    return {m: {p: float(np.mean(v)) for p, v in sums[m].items()} for m in METRICS}


def _estimate(per_prompt: dict[str, float], bootstrap: int, seed: int) -> MetricEstimate | None:
    if not per_prompt:
        return None
    values = np.array(list(per_prompt.values()))
    return MetricEstimate(float(values.mean()), bootstrap_mean_ci(values, bootstrap, seed))


def _shift(before: dict[str, float], after: dict[str, float], bootstrap: int, permutations: int,
           seed: int) -> tuple[float, tuple[float, float], float | None, bool, int] | None:
    if not before or not after:
        return None
    if set(before) == set(after):
        keys = sorted(before)
        a, b = np.array([before[k] for k in keys]), np.array([after[k] for k in keys])
        return (float((b - a).mean()), paired_difference_ci(a, b, bootstrap, seed),
                paired_permutation_p(b - a, permutations, seed), True, len(keys))
    a, b = np.array(list(before.values())), np.array(list(after.values()))
    return (float(b.mean() - a.mean()), unpaired_difference_ci(a, b, bootstrap, seed), None, False,
            min(len(a), len(b)))


def behavior_probe(generations: Sequence[Generation], tokenizer=None, keywords: tuple[str, ...] | None = None,
                   bootstrap: int = 2000, permutations: int = 10000, seed: int = 0) -> BehaviorResult:
    """Features, per-group estimates, per-seed shifts vs the first step, and across-seed shifts (module doc)."""
    keywords = tuple(keywords) if keywords else REASONING_KEYWORDS
    if not generations:
        raise BehaviorError("no generations to score")
    rows: dict[tuple[str, int, int], list[tuple[str, dict]]] = defaultdict(list)
    rewards: dict[str, set[str]] = defaultdict(set)
    for g in generations:
        rows[(g.run, g.step, g.seed)].append((g.prompt_id, response_features(g, keywords, tokenizer)))
        rewards[g.run].add(g.reward)
    mixed = {run: labels for run, labels in rewards.items() if len(labels) > 1}
    if mixed:
        run, labels = next(iter(mixed.items()))
        raise BehaviorError(f"run {run!r} carries several reward labels {sorted(labels)}: label runs apart")
    reward = {run: labels.pop() for run, labels in rewards.items()}

    means = {key: _per_prompt_means(r) for key, r in rows.items()}
    groups = tuple(
        GroupSummary(run, step, s, reward[run], len({p for p, _ in rows[(run, step, s)]}), len(rows[(run, step, s)]),
                     {m: _estimate(means[(run, step, s)][m], bootstrap, seed) for m in METRICS})
        for run, step, s in sorted(rows))

    shifts = []
    steps_of: dict[tuple[str, int], list[int]] = defaultdict(list)
    for run, step, s in sorted(rows):
        steps_of[(run, s)].append(step)
    for (run, s), steps in sorted(steps_of.items()):
        for step in steps[1:]:
            for m in METRICS:
                found = _shift(means[(run, steps[0], s)][m], means[(run, step, s)][m], bootstrap, permutations, seed)
                if found is not None:
                    delta, ci, p, paired, n = found
                    shifts.append(Shift(run, s, reward[run], steps[0], step, m, delta, ci, p, paired, n))

    per_seed: dict[tuple[str, int, int, str], list[float]] = defaultdict(list)
    for sh in shifts:
        per_seed[(sh.run, sh.from_step, sh.to_step, sh.metric)].append(sh.delta)
    seed_shifts = tuple(
        SeedShift(run, reward[run], a, b, m, len(d), float(np.mean(d)),
                  float(np.std(d, ddof=1)) if len(d) > 1 else None, seed_interval(np.array(d)))
        for (run, a, b, m), d in sorted(per_seed.items()))
    agreement = FlagAgreement.count([(bool(f["code_rate"]), bool(f["code_rate_rethink_rlvr"]))
                                     for r in rows.values() for _, f in r if f["code_rate"] is not None])
    return BehaviorResult(VERIFIER, "tokens" if tokenizer is not None else "words", keywords, groups,
                          tuple(shifts), seed_shifts, agreement)
