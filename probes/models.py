"""Load local models and tokenizers for the probes, read prompt files, format prompts.

Models load from local folders only (`local_files_only=True`, `trust_remote_code=False`): float32 on the
CPU, the stored dtype (bf16 for our checkpoints) on CUDA. Whatever the weights, log-probabilities are
taken from float32 log-softmax (`probes.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dynamics.documents import jsonl_records
from dynamics.errors import DynamicsError


class ProbeError(DynamicsError):
    """A probe's model, tokenizer or prompt file cannot be used (message names the path)."""


@dataclass(frozen=True)
class Prompt:
    prompt: str
    prompt_id: str
    answer: str | None = None


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local model folder; a pad token is borrowed from eos when missing."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: no usable tokenizer ({str(e).splitlines()[0]})") from e
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ProbeError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | Path, device: torch.device, float32: bool = False) -> PreTrainedModel:
    """A causal LM from a local folder, in eval mode: float32 on CPU (or when asked), its stored dtype on CUDA."""
    dtype = torch.float32 if device.type == "cpu" or float32 else "auto"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                                     dtype=dtype)
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: cannot load a causal LM ({str(e).splitlines()[0]})") from e
    return model.to(device).eval()


def read_prompts(path: str | Path) -> list[Prompt]:
    """Prompts jsonl: a string `prompt` per line, optional `prompt_id` (default: the line number) and `answer`."""
    prompts = []
    for number, record in jsonl_records(path, ProbeError):
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ProbeError(f"{path}:{number}: a line needs a string field 'prompt'")
        answer = record.get("answer")
        prompts.append(Prompt(record["prompt"], str(record.get("prompt_id", number)),
                              None if answer is None else str(answer)))
    if not prompts:
        raise ProbeError(f"{path}: no prompts")
    return prompts


def format_for_model(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool) -> str:
    """The text fed to the model: the tokenizer's chat template with a generation prompt when it has one and
    `chat_template` is on, else the prompt unchanged."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt
