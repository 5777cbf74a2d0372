"""Save and load lab checkpoints: HF folders with the tokenizer files, stored in bf16 (fp32 masters on request).

Training keeps fp32 master weights; a saved bf16 checkpoint is a rounded copy, as mixed-precision trainers
write them. A fine-tuning run starts from the bf16 base upcast to fp32, as RLVR starts from a released bf16
model: a weight that no update pushes across a bf16 rounding boundary keeps its stored bits.
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from probes.models import load_tokenizer, transformers_progress


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, folder: Path,
                    dtype: torch.dtype) -> Path:
    """Write a `dtype` copy of `model` and the tokenizer files into `folder`; the master model is untouched.

    The files go to `.<name>.partial` beside it, renamed to `folder` once complete, so a `checkpoint-N` folder
    that exists is whole (a killed run leaves only the partial one, which the next save replaces).
    """
    folder = Path(folder)
    partial = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    stored = copy.deepcopy(model).to(dtype)
    with transformers_progress(False):  # a bar per shard of a few MB is noise
        stored.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def load_for_training(folder: Path, device: torch.device) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A local checkpoint as fp32 master weights on `device`, with exactly the tokenizer saved beside it
    (`probes.models.load_tokenizer`; no remote code)."""
    with transformers_progress(False):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                     trust_remote_code=False)
    return model.to(device), load_tokenizer(folder)
