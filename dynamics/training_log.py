"""Training logs beside the weights: HF Trainer / TRL `trainer_state.json` (`log_history`), or a JSONL log
whose records carry a `step` (flat, or with the numbers under `data`, as verl's file logger writes).

Every numeric field of a step is kept (records of one step merged, later ones winning); `canonical`
picks the quantities the series report puts on its step axis under one name each, from the first
field present of CANONICAL_FIELDS (TRL, verl and OpenRLHF spellings).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from dynamics.documents import jsonl_records
from dynamics.errors import CheckpointError

TRAINER_STATE = "trainer_state.json"
CANONICAL_FIELDS: dict[str, tuple[str, ...]] = {
    "reward": ("reward", "rewards/mean", "critic/score/mean", "critic/rewards/mean", "train/reward"),
    "kl": ("kl", "objective/kl", "actor/ppo_kl", "actor/kl_loss", "train/kl"),
    "loss": ("loss", "train/loss", "actor/pg_loss", "policy_loss"),
    "entropy": ("entropy", "actor/entropy", "actor/entropy_loss"),
    "clip_fraction": ("clip_ratio/region_mean", "clip_ratio", "actor/pg_clipfrac", "clipfrac", "clip_fraction"),
    "learning_rate": ("learning_rate", "actor/lr", "lr"),
}


@dataclass(frozen=True)
class TrainingLog:
    """step -> {field: value} of every numeric field logged at that step; `global_step` as the trainer saved it."""

    source: str
    steps: dict[int, dict[str, float]]
    global_step: int | None = None
    notes: list[str] = field(default_factory=list)

    def canonical(self, step: int) -> dict[str, float]:
        """The CANONICAL_FIELDS logged at `step` (absent names left out)."""
        logged = self.steps.get(step, {})
        found = {}
        for name, spellings in CANONICAL_FIELDS.items():
            value = next((logged[s] for s in spellings if s in logged), None)
            if value is not None:
                found[name] = value
        return found


def find_training_log(folder: str | Path) -> Path | None:
    """`trainer_state.json` in a checkpoint folder, None without one."""
    path = Path(folder) / TRAINER_STATE
    return path if path.is_file() else None


def read_training_log(path: str | Path) -> TrainingLog:
    """A `trainer_state.json` or a JSONL log (`.jsonl`); a file that is neither is a CheckpointError."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return TrainingLog(str(path), _merge(record for _, record in jsonl_records(path, CheckpointError)))
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable trainer_state.json ({e})") from e
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise CheckpointError(f"{path}: no log_history (not an HF Trainer trainer_state.json)")
    step = state.get("global_step")
    return TrainingLog(str(path), _merge(state["log_history"]), int(step) if isinstance(step, int) else None)


def _merge(records) -> dict[int, dict[str, float]]:
    steps: dict[int, dict[str, float]] = {}
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            continue
        values = {**record, **record["data"]} if isinstance(record.get("data"), dict) else record
        numbers = {k: float(v) for k, v in values.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool) and math.isfinite(v)}
        steps.setdefault(record["step"], {}).update(numbers)
    return dict(sorted(steps.items()))
