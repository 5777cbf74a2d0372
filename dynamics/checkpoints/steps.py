"""Step folders of a training run: which folder names stand for an optimizer step, and which step.

HF Trainer / TRL write `checkpoint-N`, verl `global_step_N`, DeepSpeed (OpenRLHF) `global_stepN`,
Megatron `iter_NNNNNNN` (seven digits), other loops `step_N`; `checkpoint_N` and `step-N` are accepted too.
"""

from __future__ import annotations

import re

STEP_FOLDER = re.compile(r"^(?:(?:checkpoint|global_step|step)[-_]|global_step|iter_)(\d+)$")
STEP_FOLDER_NAMES = "checkpoint-N, global_step_N, global_stepN, iter_NNNNNNN or step_N"


def step_of_folder(name: str) -> int | None:
    """The step a folder name stands for ("global_step4" → 4, "iter_0000100" → 100), None for other names."""
    match = STEP_FOLDER.match(name)
    return None if match is None else int(match.group(1))
