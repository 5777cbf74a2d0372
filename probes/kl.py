"""KL drift (Gate I): how far the tuned policy moved from the base, token by token, on its own samples.

For a response token position t with context c_t (prompt + earlier response tokens), over the full vocabulary
    KL_t(π_T ‖ π_B) = Σ_v π_T(v|c_t) · (log π_T(v|c_t) − log π_B(v|c_t))        (forward, the RL KL term)
    KL_t(π_B ‖ π_T) = Σ_v π_B(v|c_t) · (log π_B(v|c_t) − log π_T(v|c_t))        (reverse)
RLVR drifts are 1e-5–1e-8 nats/token, below what two float32 log-softmaxes subtracted can resolve: both models
run in float32 from float32 weights (bf16 weights upcast exactly; bf16 autocast only with `bf16_forward`,
recorded in the result), and the KL comes from the logit difference in float64 (`token_kl`). Responses are
sampled from TUNED (on-policy) or read from a file, then teacher-forced through both models. Only response
tokens count (up to and including the first end-of-text); padding never does. Identical models give exactly 0.
Where the KL sits (`kl_by_position`): each scored token falls in one class, the first response token (the style
position), a digit token (decoded text, stripped of whitespace, non-empty and all decimal digits; not the
first), or the rest; per class the token count, Σ KL_t(π_T ‖ π_B) and its share of the total Σ over all tokens.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dynamics.devices import resolve_device
from dynamics.documents import KL_SCHEMA, atomic_path, check_schema, finite_json, read_json_document
from probes.models import ProbeError, Prompt, format_for_model, load_model, probe_tokenizer
from probes.sampling import Batch, autocast, encode_prompts, generate

TOP_TOKENS = 20
# float64 elements per chunk of positions in `token_kl`: 2^24 × 8 B = 128 MB per temporary, ~5 temporaries
# (110 positions of a 152k vocabulary at once).
KL_CHUNK_ELEMENTS = 2**24
FLOAT32_FORWARD, BF16_FORWARD = "float32", "bf16-autocast"


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
    kl_by_position: dict[str, dict] | None = None  # `kl_by_position_class`; None in files written before it
    per_token: TokenKL | None = field(default=None, repr=False, compare=False)  # None when read from JSON

    @property
    def on_policy(self) -> bool:
        """Whether the scored responses were sampled from TUNED itself (`sampling.on_policy` in the file)."""
        return self.sampling.get("on_policy") is True

    def provenance(self) -> str:
        """How the scored responses were obtained, as reports should say it: "on-policy" only when the
        file records `sampling.on_policy: true`."""
        if self.on_policy:
            return "on-policy: teacher-forced on the tuned model's own samples"
        return "off-policy: teacher-forced on responses read from a file, not the tuned model's own samples"

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
        return KLResult(**{k: doc[k] for k in names if k in doc}, top_tokens=tuple(TopToken(**t) for t in doc["top_tokens"]))

    @staticmethod
    def read_json(path: str | Path) -> KLResult:
        """`from_json` of a file `dynamics probe kl --json` wrote; a bad file is one error naming it."""
        return KLResult.from_json(read_json_document(path, KL_SCHEMA, ProbeError))


def token_kl(tuned_logits: torch.Tensor, base_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and reverse KL per row over the last (vocabulary) axis, float64, from the logit difference:
        δ = z_T − z_B,   c = lse(z_T) − lse(z_B),   p = softmax(z) = exp(z − lse(z))
        KL(π_T ‖ π_B) = Σ_v p_T,v · (δ_v − c),      KL(π_B ‖ π_T) = Σ_v p_B,v · (c − δ_v)
    with z upcast to float64 (δ of two float32 logits is then exact) and both log-sum-exps in float64.
    Rows are taken KL_CHUNK_ELEMENTS / vocab at a time, so memory stays bounded whatever the row count.
    Error bound for the given logits: |KL̂ − KL| ≲ 8·ε64·(|lse_T| + |lse_B| + max_v |δ_v − c|), ε64 = 1.1e-16,
    i.e. ≈ 3e-14 nats for logits below 30 in size (so values are never below −3e-14); the float32 forward
    that produced the logits (rounding ~ε32·|z| per logit, largely shared by two nearby models) is the
    larger error, measured against a float64 forward in tests/test_probe_kl.py. Equal logits give exactly 0.
    """
    if tuned_logits.shape != base_logits.shape:
        raise ProbeError(f"logit shapes differ: tuned {list(tuned_logits.shape)}, base {list(base_logits.shape)}")
    vocab = tuned_logits.shape[-1]
    flat_tuned, flat_base = tuned_logits.reshape(-1, vocab), base_logits.reshape(-1, vocab)
    forward = torch.empty(flat_tuned.shape[0], dtype=torch.float64, device=flat_tuned.device)
    reverse = torch.empty_like(forward)
    rows = max(1, KL_CHUNK_ELEMENTS // vocab)
    for start in range(0, len(forward), rows):
        z_t, z_b = flat_tuned[start:start + rows].double(), flat_base[start:start + rows].double()
        lse_t, lse_b = torch.logsumexp(z_t, -1, keepdim=True), torch.logsumexp(z_b, -1, keepdim=True)
        log_ratio = (z_t - z_b) - (lse_t - lse_b)  # δ − c = log p_T − log p_B
        forward[start:start + rows] = (torch.exp(z_t - lse_t) * log_ratio).sum(-1)
        reverse[start:start + rows] = -(torch.exp(z_b - lse_b) * log_ratio).sum(-1)
    return forward.view(tuned_logits.shape[:-1]), reverse.view(tuned_logits.shape[:-1])


@contextmanager
def float32_matmuls() -> Iterator[None]:
    """Full-precision float32 matmuls for the block (no TF32 / bf16 reduced-precision shortcuts)."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _logits_to_keep(model: PreTrainedModel, positions: int) -> dict[str, int]:
    """Ask for the last `positions` logits only, where the model's forward takes `logits_to_keep`."""
    return {"logits_to_keep": positions} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}


def response_logits(model: PreTrainedModel, batch: Batch, bf16_forward: bool = False) -> torch.Tensor:
    """float32 logits predicting each response token (batch × response length × vocab); a float32 forward
    unless `bf16_forward` (bf16 autocast)."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    width = batch.response_ids.shape[1]
    with torch.no_grad(), autocast(batch.input_ids.device, bf16_forward), float32_matmuls():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                       use_cache=False, **_logits_to_keep(model, width + 1)).logits
    # The logit at position t predicts token t + 1: the last width + 1 positions minus the final one.
    return logits[:, -(width + 1):-1].float()


def batch_token_kl(tuned: PreTrainedModel, base: PreTrainedModel, batch: Batch,
                   bf16_forward: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward and reverse KL (float64, `token_kl`) at every response position of `batch` (batch × response
    length; exactly 0 where masked, which is never computed)."""
    tuned_logits, base_logits = response_logits(tuned, batch, bf16_forward), response_logits(base, batch, bf16_forward)
    if tuned_logits.shape[-1] != base_logits.shape[-1]:
        raise ProbeError(f"vocabulary sizes differ: tuned {tuned_logits.shape[-1]}, base {base_logits.shape[-1]}")
    kept = batch.response_mask.bool()
    forward = torch.zeros(kept.shape, dtype=torch.float64, device=kept.device)
    reverse = torch.zeros_like(forward)
    forward[kept], reverse[kept] = token_kl(tuned_logits[kept], base_logits[kept])
    return forward, reverse


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


POSITION_CLASSES = ("first", "digit", "rest")


def kl_by_position_class(per_token: TokenKL, tokenizer: PreTrainedTokenizerBase) -> dict[str, dict]:
    """class → {tokens, kl_sum, share}: Σ_t∈class KL_t(π_T ‖ π_B) and its share of Σ_t KL_t (None when that is 0).
    Classes (module doc): "first" = position 0 of a response, "digit" = a later token whose decoded text stripped
    of whitespace is non-empty and all digits, "rest" = the others. Relies on the (sequence, position) order."""
    index = np.asarray(per_token.sequence_index)
    position = np.arange(len(index)) - np.searchsorted(index, index)
    digit_ids = {t for t in set(per_token.token_id.tolist())
                 if (text := tokenizer.decode([t]).strip()) and text.isdigit() and text.isascii()}
    is_digit = np.isin(per_token.token_id, list(digit_ids))
    classes = {"first": position == 0, "digit": (position > 0) & is_digit, "rest": (position > 0) & ~is_digit}
    total = float(per_token.forward.sum())
    return {name: {"tokens": int(chosen.sum()), "kl_sum": float(per_token.forward[chosen].sum()),
                   "share": float(per_token.forward[chosen].sum()) / total if total else None}
            for name, chosen in classes.items()}


def summarise_token_kl(per_token: TokenKL, tokenizer: PreTrainedTokenizerBase, base: str, tuned: str,
                       sampling: dict) -> KLResult:
    """Means, median and p95 per token, mean per-sequence sum, the tokens with the largest KL sums, and the
    split of Σ KL over first / digit / other response tokens (`kl_by_position_class`)."""
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
                    sequences=n_sequences, top_tokens=top, sampling=sampling,
                    kl_by_position=kl_by_position_class(per_token, tokenizer), per_token=per_token)


def kl_drift(base: str | Path, tuned: str | Path, prompts: list[Prompt] | None = None,
             responses: list[tuple[str, str]] | None = None, *, samples_per_prompt: int = 4,
             max_new_tokens: int = 256, temperature: float = 1.0, batch_size: int = 8, seed: int = 0,
             chat_template: bool = True, bf16_forward: bool = False, device: str = "auto",
             progress: bool = False) -> KLResult:
    """On-policy KL drift of `tuned` from `base` (module doc): sample `samples_per_prompt` responses per prompt
    from `tuned` (or score the given (prompt, response) pairs), teacher-force them through both models.

    `tuned` may be a PEFT adapter folder: it is merged onto `base` (never onto its config's base). The
    tokenizer is the one saved with `tuned` (or `base` for an adapter saved without one), checked once
    against its tokenizer.json on the prompts and responses. `bf16_forward` samples and scores under bf16
    autocast: faster, but its rounding swamps KLs below ~1e-4 nats; the result records which forward ran.

    >>> result = kl_drift("runs/base", "runs/grpo-true-s1/checkpoint-40", read_prompts("prompts.jsonl"))  # doctest: +SKIP
    """
    if (prompts is None) == (responses is None):
        raise ProbeError("give prompts (to sample responses) or responses (to score), not both")
    target = resolve_device(device)
    if responses is None:
        pairs = [(p.prompt, None) for p in prompts for _ in range(samples_per_prompt)]
        sampling = {"on_policy": True, "samples_per_prompt": samples_per_prompt, "max_new_tokens": max_new_tokens,
                    "temperature": temperature, "seed": seed, "chat_template": chat_template}
    else:
        pairs = list(responses)
        sampling = {"on_policy": False, "chat_template": chat_template}
    sampling["forward"] = BF16_FORWARD if bf16_forward else FLOAT32_FORWARD
    tokenizer = probe_tokenizer(tuned, base, [p for p, _ in pairs], chat_template, [r for _, r in pairs if r])
    tuned_model = load_model(tuned, target, float32=True, base=base, progress=progress)
    base_model = load_model(base, target, float32=True, progress=progress)
    torch.manual_seed(seed)
    forward, reverse, sequence_index, token_id = [], [], [], []
    bar = tqdm(total=len(pairs), desc="kl", disable=not progress)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        texts = [format_for_model(tokenizer, p, chat_template) for p, _ in chunk]
        if responses is None:
            batch = generate(tuned_model, tokenizer, texts, max_new_tokens, sample=True, temperature=temperature,
                             bf16=bf16_forward)
        else:
            batch = responses_batch(tokenizer, texts, [r for _, r in chunk], target)
        fwd, rev = batch_token_kl(tuned_model, base_model, batch, bf16_forward)
        kept = batch.response_mask.bool()
        rows = torch.arange(start, start + len(chunk), device=kept.device)[:, None].expand_as(kept)
        forward.append(fwd[kept].cpu())
        reverse.append(rev[kept].cpu())
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
