"""KL drift (Gate I): how far the tuned policy moved from the base, token by token, on its own samples.

For a response token position t with context c_t (prompt + earlier response tokens), over the full vocabulary
    KL_t(π_T ‖ π_B) = Σ_v π_T(v|c_t) · (log π_T(v|c_t) − log π_B(v|c_t))        (forward, the RL KL term)
    KL_t(π_B ‖ π_T) = Σ_v π_B(v|c_t) · (log π_B(v|c_t) − log π_T(v|c_t))        (reverse)
from float32 log-softmax of each model's logits. Responses are sampled from TUNED (on-policy) or read from a
file, then teacher-forced through both models. Only response tokens count (up to and including the first
end-of-text); padding never does. Identical models give exactly 0.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dynamics.devices import resolve_device
from dynamics.documents import KL_SCHEMA, atomic_path, check_schema, finite_json, read_json_document
from probes.models import ProbeError, Prompt, format_for_model, load_model, load_tokenizer
from probes.sampling import Batch, autocast, encode_prompts, generate

TOP_TOKENS = 20
# Positions whose float32 vocabulary rows are live at once: 1024 × 152k × 4 B × ~5 temporaries ≈ 3 GB.
KL_CHUNK_POSITIONS = 1024


@dataclass(frozen=True)
class TokenKL:
    """KL of every scored response token, flattened in (sequence, position) order."""

    forward: np.ndarray  # KL(π_T ‖ π_B) per token, float64
    reverse: np.ndarray  # KL(π_B ‖ π_T) per token
    sequence_index: np.ndarray
    token_id: np.ndarray


@dataclass(frozen=True)
class TopToken:
    token: str
    token_id: int
    count: int
    kl_sum: float
    kl_mean: float


@dataclass(frozen=True)
class KLResult:
    base: str
    tuned: str
    kl_mean_per_token: float
    kl_median_per_token: float
    kl_p95_per_token: float
    kl_reverse_mean_per_token: float
    kl_mean_per_sequence: float
    tokens: int
    sequences: int
    top_tokens: tuple[TopToken, ...]
    sampling: dict
    per_token: TokenKL | None = field(default=None, repr=False, compare=False)  # None when read from JSON

    def to_json(self) -> dict:
        """The `dynamics.kl/1` document (per-token values go to HDF5, not JSON)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "per_token"}
        doc["top_tokens"] = [asdict(t) for t in self.top_tokens]
        return finite_json({"schema": KL_SCHEMA, **doc})

    @staticmethod
    def from_json(doc: dict) -> KLResult:
        """The result a `dynamics.kl/1` document was written from (per-token values, kept in HDF5, are None)."""
        check_schema(doc, KL_SCHEMA)
        names = {f.name for f in fields(KLResult)} - {"per_token", "top_tokens"}
        return KLResult(**{k: doc[k] for k in names}, top_tokens=tuple(TopToken(**t) for t in doc["top_tokens"]))

    @staticmethod
    def read_json(path: str | Path) -> KLResult:
        """`from_json` of a file `dynamics probe kl --json` wrote; a bad file is one error naming it."""
        return KLResult.from_json(read_json_document(path, KL_SCHEMA, ProbeError))


def token_kl(tuned_logits: torch.Tensor, base_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and reverse KL per position over the last (vocabulary) axis, in float32."""
    log_t = F.log_softmax(tuned_logits.float(), dim=-1)
    log_b = F.log_softmax(base_logits.float(), dim=-1)
    difference = log_t - log_b
    return (log_t.exp() * difference).sum(-1), (log_b.exp() * -difference).sum(-1)


def _response_logits(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Logits predicting each response token (shape batch × response length × vocab)."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    with torch.no_grad(), autocast(batch.input_ids.device):
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False).logits
    return logits[:, batch.prompt_length - 1:-1]


def batch_token_kl(tuned: PreTrainedModel, base: PreTrainedModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and reverse KL at every response position of `batch` (batch × response length; 0 where masked)."""
    tuned_logits, base_logits = _response_logits(tuned, batch), _response_logits(base, batch)
    if tuned_logits.shape[-1] != base_logits.shape[-1]:
        raise ProbeError(f"vocabulary sizes differ: tuned {tuned_logits.shape[-1]}, base {base_logits.shape[-1]}")
    vocab = tuned_logits.shape[-1]
    flat_tuned, flat_base = tuned_logits.reshape(-1, vocab), base_logits.reshape(-1, vocab)
    forward = torch.empty(flat_tuned.shape[0], dtype=torch.float32, device=flat_tuned.device)
    reverse = torch.empty_like(forward)
    for start in range(0, len(forward), KL_CHUNK_POSITIONS):
        stop = start + KL_CHUNK_POSITIONS
        forward[start:stop], reverse[start:stop] = token_kl(flat_tuned[start:stop], flat_base[start:stop])
    mask = batch.response_mask.to(forward.dtype)
    return forward.view_as(mask) * mask, reverse.view_as(mask) * mask


def responses_batch(tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str],
                    device: torch.device) -> Batch:
    """Teacher-forcing batch of given responses: prompts left-padded, responses right-padded (no eos added)."""
    encoded = encode_prompts(tokenizer, prompts, device)
    ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    if any(len(i) == 0 for i in ids):
        raise ProbeError("an empty response cannot be scored")
    width = max(len(i) for i in ids)
    response_ids = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(ids), width), dtype=torch.long, device=device)
    for row, i in enumerate(ids):
        response_ids[row, :len(i)] = torch.tensor(i, device=device)
        mask[row, :len(i)] = 1
    return Batch(input_ids=torch.cat([encoded["input_ids"], response_ids], dim=1),
                 attention_mask=torch.cat([encoded["attention_mask"], mask], dim=1),
                 prompt_length=encoded["input_ids"].shape[1], response_mask=mask)


def summarise_token_kl(per_token: TokenKL, tokenizer: PreTrainedTokenizerBase, base: str, tuned: str,
                       sampling: dict) -> KLResult:
    """Means, median and p95 per token, mean per-sequence sum, and the tokens with the largest KL sums."""
    if len(per_token.forward) == 0:
        raise ProbeError("no response tokens to score")
    sums: dict[int, list[float]] = defaultdict(lambda: [0, 0.0])
    for token, value in zip(per_token.token_id.tolist(), per_token.forward.tolist()):
        sums[token][0] += 1
        sums[token][1] += value
    ranked = sorted(sums.items(), key=lambda item: -item[1][1])[:TOP_TOKENS]
    top = tuple(TopToken(tokenizer.decode([t]), t, int(c), float(s), float(s / c)) for t, (c, s) in ranked)
    n_sequences = int(per_token.sequence_index.max()) + 1
    per_sequence = np.bincount(per_token.sequence_index, weights=per_token.forward, minlength=n_sequences)
    return KLResult(base=base, tuned=tuned, kl_mean_per_token=float(per_token.forward.mean()),
                    kl_median_per_token=float(np.median(per_token.forward)),
                    kl_p95_per_token=float(np.percentile(per_token.forward, 95)),
                    kl_reverse_mean_per_token=float(per_token.reverse.mean()),
                    kl_mean_per_sequence=float(per_sequence.mean()), tokens=len(per_token.forward),
                    sequences=n_sequences, top_tokens=top, sampling=sampling, per_token=per_token)


def kl_drift(base: str | Path, tuned: str | Path, prompts: list[Prompt] | None = None,
             responses: list[tuple[str, str]] | None = None, *, samples_per_prompt: int = 4,
             max_new_tokens: int = 256, temperature: float = 1.0, batch_size: int = 8, seed: int = 0,
             chat_template: bool = True, device: str = "auto", progress: bool = False) -> KLResult:
    """On-policy KL drift of `tuned` from `base` (module doc): sample `samples_per_prompt` responses per prompt
    from `tuned` (or score the given (prompt, response) pairs), teacher-force them through both models.

    >>> result = kl_drift("runs/base", "runs/grpo-true-s1/checkpoint-40", read_prompts("prompts.jsonl"))  # doctest: +SKIP
    """
    if (prompts is None) == (responses is None):
        raise ProbeError("give prompts (to sample responses) or responses (to score), not both")
    target = resolve_device(device)
    tokenizer = load_tokenizer(tuned)
    tuned_model, base_model = load_model(tuned, target), load_model(base, target)
    if responses is None:
        pairs = [(p.prompt, None) for p in prompts for _ in range(samples_per_prompt)]
        sampling = {"on_policy": True, "samples_per_prompt": samples_per_prompt, "max_new_tokens": max_new_tokens,
                    "temperature": temperature, "seed": seed, "chat_template": chat_template}
    else:
        pairs = list(responses)
        sampling = {"on_policy": False, "chat_template": chat_template}
    torch.manual_seed(seed)
    forward, reverse, sequence_index, token_id = [], [], [], []
    bar = tqdm(total=len(pairs), desc="kl", disable=not progress)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        texts = [format_for_model(tokenizer, p, chat_template) for p, _ in chunk]
        if responses is None:
            batch = generate(tuned_model, tokenizer, texts, max_new_tokens, sample=True, temperature=temperature)
        else:
            batch = responses_batch(tokenizer, texts, [r for _, r in chunk], target)
        fwd, rev = batch_token_kl(tuned_model, base_model, batch)
        kept = batch.response_mask.bool()
        rows = torch.arange(start, start + len(chunk), device=kept.device)[:, None].expand_as(kept)
        forward.append(fwd[kept].double().cpu())
        reverse.append(rev[kept].double().cpu())
        sequence_index.append(rows[kept].cpu())
        token_id.append(batch.response_ids[kept].cpu())
        bar.update(len(chunk))
    bar.close()
    per_token = TokenKL(torch.cat(forward).numpy(), torch.cat(reverse).numpy(),
                        torch.cat(sequence_index).numpy(), torch.cat(token_id).numpy())
    return summarise_token_kl(per_token, tokenizer, str(base), str(tuned), sampling)


def write_kl_h5(result: KLResult, path: str | Path) -> None:
    """Per-token forward/reverse KL with sequence index and token id, atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema"] = KL_SCHEMA
        for name in ("forward", "reverse", "sequence_index", "token_id"):
            f.create_dataset(f"per_token/{name}", data=getattr(result.per_token, name), compression="gzip")
