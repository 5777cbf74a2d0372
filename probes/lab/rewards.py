"""Reward functions for the lab's GRPO runs: ground truth and the spurious rewards, as the papers define them.

  true        r = 1 if the final answer equals the reference (probes.features.is_correct) else 0
  format      r = 1 if a boxed answer can be extracted (Rethink_RLVR; `boxed_answer_extractable`) else 0
  random      r ~ Bernoulli(γ), γ = 0.5, independent of the response; `random-<γ>` for another γ
  incorrect   the true reward against a wrong pseudo-label (Rethink_RLVR): the study replaces each training
              problem's answer by the majority vote of k base samples and keeps only the problems whose
              majority label is wrong (`majority_label`), so r = 1 exactly when the response's answer is that
              wrong label
  noisy-<p>   the true reward, with probability p for the whole prompt group flipped to 1 − r (Lv et al.)
  rpr         the reasoning-pattern reward `probes.features.reasoning_pattern_reward`, phrases as the paper's
              code spells them; of those the lab's traces contain "first, " and "finally, " (language style,
              0.1 with a box) and none in the code style (0), so after group normalisation it rewards the
              language style; adding the lab's "then, " would only rescale it (every problem has ≥ 2 steps)

A reward is a callable (responses, reference answers) → rewards, the responses of one prompt group
consecutive; the random ones draw from their own `random.Random(seed)`, so a run's rewards depend only on its
seed and its responses.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from dynamics.errors import DynamicsError
from probes.features import boxed_answer_extractable, final_answer, is_correct, reasoning_pattern_reward

Reward = Callable[[list[str], list[str]], list[float]]

RANDOM_REWARD_PROBABILITY = 0.5
REWARD_LABELS = "true, format, random, random-<γ>, incorrect, noisy-<p>, rpr (0 ≤ γ, p ≤ 1)"


class RewardError(DynamicsError):
    """A reward label that the lab does not know."""


def true_reward(responses: list[str], answers: list[str]) -> list[float]:
    return [float(is_correct(r, a)) for r, a in zip(responses, answers)]


def format_reward(responses: list[str], answers: list[str]) -> list[float]:
    return [float(boxed_answer_extractable(r)) for r in responses]


def rpr_reward(responses: list[str], answers: list[str]) -> list[float]:
    return [reasoning_pattern_reward(r) for r in responses]


def random_reward(seed: int, probability: float = RANDOM_REWARD_PROBABILITY) -> Reward:
    """r ~ Bernoulli(probability), drawn from `random.Random(seed)` one response at a time."""
    rng = random.Random(seed)

    def reward(responses: list[str], answers: list[str]) -> list[float]:
        return [float(rng.random() < probability) for _ in responses]

    return reward


def noisy_reward(seed: int, flip_probability: float, group_size: int) -> Reward:
    """The true reward; each consecutive group of `group_size` responses is flipped as a whole (r → 1 − r)
    with `flip_probability`, one draw of `random.Random(seed)` per group."""
    rng = random.Random(seed)

    def reward(responses: list[str], answers: list[str]) -> list[float]:
        if len(responses) % group_size:
            raise ValueError(f"{len(responses)} responses are not whole groups of {group_size}")
        scores = true_reward(responses, answers)
        out = []
        for start in range(0, len(scores), group_size):
            flip = rng.random() < flip_probability
            out += [1.0 - r if flip else r for r in scores[start:start + group_size]]
        return out

    return reward


def majority_label(responses: list[str]) -> str | None:
    """The most frequent final answer among `responses` (ties: the one seen first; None if no answers)."""
    counts = Counter(a for a in map(final_answer, responses) if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def _probability(label: str, prefix: str) -> float | None:
    try:
        p = float(label.removeprefix(prefix))
    except ValueError:
        return None
    return p if 0.0 <= p <= 1.0 else None


def make_reward(label: str, seed: int, group_size: int) -> Reward:
    """The reward for a label (see the module docstring); `group_size` for the group-level noise."""
    fixed = {"true": true_reward, "format": format_reward, "incorrect": true_reward, "rpr": rpr_reward}
    if label in fixed:
        return fixed[label]
    if label == "random":
        return random_reward(seed)
    for prefix in ("random-", "noisy-"):
        if label.startswith(prefix) and (p := _probability(label, prefix)) is not None:
            return random_reward(seed, p) if prefix == "random-" else noisy_reward(seed, p, group_size)
    raise RewardError(f"unknown reward {label!r}: use {REWARD_LABELS}")
