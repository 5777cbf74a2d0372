"""Generations jsonl: one response per line, the format every probe reads and the lab writes.

A line is a JSON object with
  prompt (str), response (str)                      — required
  prompt_id (str)   — pairs the same prompt across runs/steps (defaults to the prompt text)
  answer (str|null) — reference answer, for correctness
  run (str), step (int), seed (int)                 — which checkpoint produced it
  reward (str)      — true | majority | format | random[-<γ>] | incorrect | noisy-<p> | rpr | sft | none
  sample (int)      — index of the response among those drawn for the prompt (0 for greedy)
  decoding (str)    — "greedy" or "sampled"
Missing optional fields take the defaults below, so a file with only prompt/response is valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dynamics.documents import jsonl_records, write_jsonl_records
from dynamics.errors import DynamicsError

REWARD_LABELS = ("true", "majority", "format", "random", "incorrect", "noisy", "rpr", "sft", "none")


class GenerationsError(DynamicsError):
    """A generations file cannot be read (message names the file and line)."""


@dataclass(frozen=True)
class Generation:
    prompt: str
    response: str
    prompt_id: str = ""
    answer: str | None = None
    run: str = "run"
    step: int = 0
    seed: int = 0
    reward: str = "none"
    sample: int = 0
    decoding: str = "greedy"

    def __post_init__(self) -> None:
        if not self.prompt_id:
            object.__setattr__(self, "prompt_id", self.prompt)


def reward_family(reward: str) -> str:
    """`noisy-0.2` → `noisy`; every other label is its own family (used for colours and grouping)."""
    return reward.split("-", 1)[0]


def read_generations(path: str | Path) -> list[Generation]:
    """All lines of a generations jsonl file; a malformed line raises naming the file and line number."""
    out = []
    for number, record in jsonl_records(path, GenerationsError):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) \
                or not isinstance(record.get("response"), str):
            raise GenerationsError(f"{path}:{number}: a line needs string fields 'prompt' and 'response'")
        unknown = set(record) - set(Generation.__dataclass_fields__)
        known = {k: v for k, v in record.items() if k not in unknown}
        if known.get("answer") is not None:
            known["answer"] = str(known["answer"])
        try:
            generation = Generation(**known)
            generation = replace(generation, step=int(generation.step), seed=int(generation.seed),
                                 sample=int(generation.sample))
        except (TypeError, ValueError) as e:
            raise GenerationsError(f"{path}:{number}: {e}") from e
        if reward_family(generation.reward) not in REWARD_LABELS:
            raise GenerationsError(f"{path}:{number}: reward {generation.reward!r} is not one of "
                                   f"{', '.join(REWARD_LABELS)} (noisy as noisy-<p>)")
        out.append(generation)
    return out


def write_generations(generations: Iterable[Generation], path: str | Path, append: bool = False) -> None:
    """Write (or append to) a generations jsonl file; a fresh file is written atomically."""
    write_jsonl_records(map(asdict, generations), path, append)
