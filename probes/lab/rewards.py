"""Reward functions for the lab's GRPO runs: ground truth and the spurious rewards, each seeded.

  true        r = 1 if the final answer equals the reference (probes.features.is_correct) else 0
  format      r = 1 if the response has a non-empty \\boxed{} answer else 0 (correctness ignored)
  random      r ~ Bernoulli(γ), γ = 0.5, independent of the response
  incorrect   r = 1 if the response has a final answer and it is wrong else 0 (only wrong answers pay)
  noisy-<p>   the true reward, flipped (1 − r) with probability p

A reward is a callable (responses, reference answers) → rewards; the random ones draw from their own
`random.Random(seed)`, so a run's rewards depend only on its seed and its responses.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from dynamics.errors import DynamicsError
from probes.features import final_answer, has_boxed_answer, is_correct

Reward = Callable[[list[str], list[str]], list[float]]

RANDOM_REWARD_PROBABILITY = 0.5


class RewardError(DynamicsError):
    """A reward label that the lab does not know."""


def true_reward(responses: list[str], answers: list[str]) -> list[float]:
    return [float(is_correct(r, a)) for r, a in zip(responses, answers)]


def format_reward(responses: list[str], answers: list[str]) -> list[float]:
    return [float(has_boxed_answer(r)) for r in responses]


def incorrect_reward(responses: list[str], answers: list[str]) -> list[float]:
    return [float(final_answer(r) is not None and not is_correct(r, a)) for r, a in zip(responses, answers)]


def random_reward(seed: int, probability: float = RANDOM_REWARD_PROBABILITY) -> Reward:
    """r ~ Bernoulli(probability), drawn from `random.Random(seed)` one response at a time."""
    rng = random.Random(seed)

    def reward(responses: list[str], answers: list[str]) -> list[float]:
        return [float(rng.random() < probability) for _ in responses]

    return reward


def noisy_reward(seed: int, flip_probability: float) -> Reward:
    """The true reward with each value flipped (r → 1 − r) with `flip_probability`."""
    rng = random.Random(seed)

    def reward(responses: list[str], answers: list[str]) -> list[float]:
        return [1.0 - r if rng.random() < flip_probability else r for r in true_reward(responses, answers)]

    return reward


def make_reward(label: str, seed: int) -> Reward:
    """The reward for a label: true | format | random | incorrect | noisy-<p> with 0 ≤ p ≤ 1."""
    fixed = {"true": true_reward, "format": format_reward, "incorrect": incorrect_reward}
    if label in fixed:
        return fixed[label]
    if label == "random":
        return random_reward(seed)
    if label.startswith("noisy-"):
        try:
            p = float(label.removeprefix("noisy-"))
        except ValueError:
            p = -1.0
        if 0.0 <= p <= 1.0:
            return noisy_reward(seed, p)
    raise RewardError(f"unknown reward {label!r}: use true, format, random, incorrect or noisy-<p> (0 ≤ p ≤ 1)")
