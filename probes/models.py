"""Load local models and tokenizers for the probes, read prompt files, format prompts.

Models load from local folders only (`local_files_only=True`, `trust_remote_code=False`): float32 on the
CPU or when asked (the KL and Fisher probes always ask), the stored dtype on CUDA otherwise. A PEFT adapter
folder is merged onto the base folder the caller names, never onto its config's `base_model_name_or_path`.

Tokenizers: exactly the one the folder's `tokenizer.json` describes (`PreTrainedTokenizerFast` on that file,
special tokens and chat template from `tokenizer_config.json` / `special_tokens_map.json`), whatever class
the folder's model type would make `AutoTokenizer` pick; `check_tokenizer` holds it against the file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as transformers_logging

from dynamics.checkpoints import Checkpoint, open_checkpoint
from dynamics.documents import jsonl_records
from dynamics.errors import CheckpointError, DynamicsError

SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
                      "additional_special_tokens")
TOKENIZER_SETTING_KEYS = ("model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces",
                          "chat_template")


class ProbeError(DynamicsError):
    """A probe's model, tokenizer or prompt file cannot be used (message names the path)."""


@dataclass(frozen=True)
class Prompt:
    prompt: str
    prompt_id: str
    answer: str | None = None


@contextmanager
def transformers_progress(enabled: bool) -> Iterator[None]:
    """transformers' own bars ("Loading weights", "Writing model shards") on or off for the block."""
    were_enabled = transformers_logging.is_progress_bar_enabled()
    (transformers_logging.enable_progress_bar if enabled else transformers_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (transformers_logging.enable_progress_bar if were_enabled else transformers_logging.disable_progress_bar)()


def is_adapter(path: str | Path) -> bool:
    """A PEFT adapter folder: it holds `adapter_config.json`."""
    return (Path(path) / "adapter_config.json").is_file()


def _needs_base(adapter: str | Path) -> ProbeError:
    return ProbeError(f"{adapter}: is a PEFT adapter; name the base model it applies to")


def tokenizer_folder(model: str | Path, base: str | Path | None = None) -> Path:
    """Where a model's tokenizer is saved: its own folder, or the base's for an adapter saved without one."""
    saved = any((Path(model) / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    if saved or not is_adapter(model):
        return Path(model)
    if base is None:
        raise _needs_base(model)
    return Path(base)


def _json_file(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: not a readable JSON file ({e})") from e
    if not isinstance(doc, dict):
        raise ProbeError(f"{path}: expected a JSON object")
    return doc


def _token_text(value: object) -> object:
    """A saved special token as text: `{"content": "<eos>", ...}` → "<eos>" (lists element by element)."""
    if isinstance(value, list):
        return [_token_text(v) for v in value]
    return value["content"] if isinstance(value, dict) else value


def saved_tokenizer_settings(folder: Path) -> dict:
    """Special tokens (special_tokens_map.json, then tokenizer_config.json over it), TOKENIZER_SETTING_KEYS
    and the chat template (chat_template.jinja over the config's), as saved."""
    saved = {**_json_file(folder / "special_tokens_map.json"), **_json_file(folder / "tokenizer_config.json")}
    settings = {k: _token_text(saved[k]) for k in SPECIAL_TOKEN_KEYS if k in saved}
    settings.update({k: saved[k] for k in TOKENIZER_SETTING_KEYS if k in saved})
    template = folder / "chat_template.jinja"
    if template.is_file():
        settings["chat_template"] = template.read_text()
    return settings


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved in a local folder: `PreTrainedTokenizerFast` on its `tokenizer.json` with the saved
    settings (AutoTokenizer only for a folder without tokenizer.json); a pad token is borrowed from eos when
    missing."""
    folder = Path(path)
    try:
        if (folder / "tokenizer.json").is_file():
            tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                **saved_tokenizer_settings(folder))
        else:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ProbeError(f"{path}: no usable tokenizer ({reason})") from e
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ProbeError(f"{path}: the tokenizer has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path, texts: Sequence[str]) -> None:
    """ProbeError (one line naming `folder`) unless `tokenizer` encodes every text to the ids the folder's
    tokenizer.json gives (`tokenizers.Tokenizer.from_file`, special tokens on and off); a folder without
    tokenizer.json has nothing to check against."""
    file = Path(folder) / "tokenizer.json"
    if not file.is_file():
        return
    saved = Tokenizer.from_file(str(file))
    for text in texts:
        for special in (False, True):
            ids = tokenizer(text, add_special_tokens=special)["input_ids"]
            if ids != saved.encode(text, add_special_tokens=special).ids:
                raise ProbeError(f"{folder}: the loaded tokenizer ({type(tokenizer).__name__}) does not reproduce "
                                 f"tokenizer.json's encoding of {text[:40]!r}")


def _from_pretrained(path: str | Path, dtype: torch.dtype | str) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, trust_remote_code=False,
                                                    dtype=dtype)
    except (OSError, ValueError) as e:
        raise ProbeError(f"{path}: cannot load a causal LM ({str(e).splitlines()[0]})") from e


def _float32_reads(ckpt: Checkpoint) -> Checkpoint:
    """`ckpt` whose reads upcast to float32 (exact), so an adapter merged onto it is not rounded back to bf16."""
    return dataclasses.replace(ckpt, reader=lambda name: ckpt.read(name).float(), locations={})


@torch.no_grad()
def merge_adapter(model: PreTrainedModel, adapter: str | Path, base: str | Path) -> None:
    """Load W + scale·(B @ A) (`dynamics.checkpoints`' LoRA reader, merged in float32 onto `base`'s tensors)
    into `model`, a model loaded from `base`: every tensor of the merged checkpoint, by name."""
    try:
        merged = open_checkpoint(adapter, base=_float32_reads(open_checkpoint(base)))
        state = model.state_dict()
        for name in merged.tensors:
            if name not in state:
                raise ProbeError(f"{adapter}: tensor {name} of the merged adapter is not in {base}'s model")
            state[name].copy_(merged.read(name))
    except CheckpointError as e:
        raise ProbeError(str(e)) from e


def load_model(path: str | Path, device: torch.device, float32: bool = False, base: str | Path | None = None,
               progress: bool = False) -> PreTrainedModel:
    """A causal LM from a local folder, in eval mode: float32 on CPU (or when asked), its stored dtype on CUDA.

    An adapter folder (`is_adapter`) is merged onto `base`, which it needs; `progress` shows transformers' bars.
    """
    dtype = torch.float32 if device.type == "cpu" or float32 else "auto"
    with transformers_progress(progress):
        if not is_adapter(path):
            model = _from_pretrained(path, dtype)
        elif base is None:
            raise _needs_base(path)
        else:
            model = _from_pretrained(base, dtype)
            merge_adapter(model, path, base)
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


def probe_tokenizer(model: str | Path, base: str | Path | None, prompts: Sequence[str], chat_template: bool,
                    responses: Sequence[str] = ()) -> PreTrainedTokenizerBase:
    """A probe's tokenizer, checked once per run: `load_tokenizer` of `tokenizer_folder(model, base)`, held by
    `check_tokenizer` against its tokenizer.json on the prompts as the model sees them and on `responses`."""
    folder = tokenizer_folder(model, base)
    tokenizer = load_tokenizer(folder)
    texts = {format_for_model(tokenizer, p, chat_template) for p in prompts} | {r for r in responses if r}
    check_tokenizer(tokenizer, folder, sorted(texts))
    return tokenizer


def format_for_model(tokenizer: PreTrainedTokenizerBase, prompt: str, chat_template: bool) -> str:
    """The text fed to the model: the tokenizer's chat template with a generation prompt when it has one and
    `chat_template` is on, else the prompt unchanged."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt
