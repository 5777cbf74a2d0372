"""p(style): the exact probability that a model opens its response with one of a list of style openings.

For a prompt x and openings o¹…oᴷ (token sequences o = o_1…o_L, each tokenised on its own and appended to
the prompt's tokens, as a sampler's tokens would follow them)
    p_style(x) = Σ_k Π_t π(o^k_t | x, o^k_<t)
teacher-forced, no sampling noise. The openings must be prefix-free after tokenisation (no opening's tokens
begin another's, no two equal), so the events are disjoint and the sum is a probability; otherwise refused.
The forward pass runs in the model's own dtype with no autocast and no TF32 matmuls (float32 weights, as
`style_probe` loads them, for exact values), the log-softmax in float32, the sum over t in float64.
Records: one JSON object per line (prompt_id, step, p_style, run, seed, reward), like generations jsonl.
`style_probe` (`dynamics probe style`): per model the mean of p_style over prompts with a 95% bootstrap CI over
prompts, and its shift vs the first model, mean over prompts of p_style(model) − p_style(first), with a paired
bootstrap CI and a paired sign-flip permutation p (the prompts are the same for every model).
`style_shifts` (a run's style.jsonl over training): per (run, seed) every step against its first, metric
"p_style", as the behavior probe's shifts (paired on prompt_id), and across seeds a t-interval.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dynamics.devices import resolve_device
from dynamics.documents import STYLE_SCHEMA, check_schema, finite_json, jsonl_records, write_jsonl_records
from dynamics.errors import DynamicsError
from probes.behavior import SeedShift, Shift, across_seeds, prompt_shift
from probes.kl import float32_matmuls
from probes.models import Prompt, format_for_model, load_model, probe_tokenizer
from probes.sampling import encode_prompts
from probes.statistics import bootstrap_mean_ci, paired_difference_ci, paired_permutation_p


class StyleError(DynamicsError):
    """Openings that cannot define p(style), or a style records file that cannot be read (names the file)."""


@dataclass(frozen=True)
class StyleRecord:
    prompt_id: str
    step: int
    p_style: float
    run: str = "run"
    seed: int = 0
    reward: str = "none"


def opening_token_ids(tokenizer: PreTrainedTokenizerBase, openings: Sequence[str]) -> list[list[int]]:
    """Each opening's token ids (no special tokens); raises StyleError unless they are non-empty and prefix-free."""
    if not openings:
        raise StyleError("style openings: none given")
    ids = [tokenizer(o, add_special_tokens=False)["input_ids"] for o in openings]
    for opening, tokens in zip(openings, ids):
        if not tokens:
            raise StyleError(f"style opening {opening!r}: tokenises to no tokens")
    for i, a in enumerate(ids):
        for j, b in enumerate(ids):
            if i != j and len(a) <= len(b) and b[:len(a)] == a:
                raise StyleError(f"style openings {openings[i]!r} and {openings[j]!r}: not prefix-free after "
                                 f"tokenisation ({a} begins {b}); p(style) would count one event twice")
    return ids


def _opening_log_prob(model: PreTrainedModel, encoded: dict, opening: list[int]) -> torch.Tensor:
    """log Π_t π(o_t | prompt, o_<t) per prompt row, float64 (log-softmax in float32)."""
    rows = encoded["input_ids"].shape[0]
    device = encoded["input_ids"].device
    tail = torch.tensor(opening, device=device).expand(rows, -1)
    input_ids = torch.cat([encoded["input_ids"], tail], dim=1)
    attention = torch.cat([encoded["attention_mask"], torch.ones_like(tail)], dim=1)
    position_ids = (attention.cumsum(dim=1) - 1).clamp(min=0)
    # The logit at position t predicts token t + 1: the last L + 1 positions predict o_1…o_L (and one past it).
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids, use_cache=False,
                   logits_to_keep=len(opening) + 1).logits
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return log_probs.gather(-1, tail.unsqueeze(-1)).squeeze(-1).double().sum(dim=1)


@torch.no_grad()
def style_probability(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                      openings: list[str], batch_size: int = 64) -> torch.Tensor:
    """p_style(x) = Σ_k Π_t π(o^k_t | x, o^k_<t) for every prompt x (already formatted), float64 on the CPU.

    Prompts are left-padded in batches of `batch_size`, positions follow the attention mask (as in
    probes/sampling.py), so padding never changes a row's value. Raises StyleError for openings that are empty
    or not prefix-free after tokenisation.
    """
    ids = opening_token_ids(tokenizer, openings)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(prompts), batch_size):
            encoded = encode_prompts(tokenizer, prompts[start:start + batch_size], device)
            with float32_matmuls():
                log_p = torch.stack([_opening_log_prob(model, encoded, opening) for opening in ids])
            out.append(log_p.exp().sum(dim=0).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64)


def write_style_records(records: Iterable[StyleRecord], path: str | Path, append: bool = False) -> None:
    """Write (or append to) a style records jsonl file; a fresh file is written atomically."""
    write_jsonl_records(map(asdict, records), path, append)


def read_style_records(path: str | Path) -> list[StyleRecord]:
    """All lines of a style records jsonl file; a malformed line raises StyleError naming the file and line."""
    out = []
    for number, record in jsonl_records(path, StyleError):
        if not isinstance(record, dict) or not isinstance(record.get("prompt_id"), str) \
                or not isinstance(record.get("p_style"), (int, float)) or isinstance(record.get("p_style"), bool):
            raise StyleError(f"{path}:{number}: a line needs a string 'prompt_id' and a number 'p_style'")
        known = {k: v for k, v in record.items() if k in StyleRecord.__dataclass_fields__}
        try:
            out.append(StyleRecord(prompt_id=known["prompt_id"], step=int(known.get("step", 0)),
                                   p_style=float(known["p_style"]), run=str(known.get("run", "run")),
                                   seed=int(known.get("seed", 0)), reward=str(known.get("reward", "none"))))
        except (TypeError, ValueError) as e:
            raise StyleError(f"{path}:{number}: {e}") from e
    return out


@dataclass(frozen=True)
class StyleEstimate:
    model: str
    mean: float  # mean of p_style over prompts
    ci95: tuple[float, float]  # bootstrap over prompts
    shift: float | None  # mean over prompts of p_style(model) − p_style(first model); None for the first
    shift_ci95: tuple[float, float] | None  # paired bootstrap over prompts
    shift_p_value: float | None  # paired sign-flip permutation test


@dataclass(frozen=True)
class StyleResult:
    openings: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    models: tuple[StyleEstimate, ...]
    p_style: tuple[tuple[float, ...], ...]  # per model, per prompt (prompt_ids order)

    def to_json(self) -> dict:
        """The `dynamics.style/1` document."""
        return finite_json({"schema": STYLE_SCHEMA, "openings": list(self.openings),
                            "prompt_ids": list(self.prompt_ids), "models": [asdict(m) for m in self.models],
                            "p_style": [list(row) for row in self.p_style]})

    @staticmethod
    def from_json(doc: dict) -> StyleResult:
        """The result a `dynamics.style/1` document was written from."""
        check_schema(doc, STYLE_SCHEMA, error=StyleError)
        models = tuple(StyleEstimate(m["model"], m["mean"], tuple(m["ci95"]), m["shift"],
                                     None if m["shift_ci95"] is None else tuple(m["shift_ci95"]),
                                     m["shift_p_value"]) for m in doc["models"])
        return StyleResult(tuple(doc["openings"]), tuple(doc["prompt_ids"]), models,
                           tuple(tuple(row) for row in doc["p_style"]))


def summarize_style(models: Sequence[str], values: np.ndarray, openings: Sequence[str], prompt_ids: Sequence[str],
                    bootstrap: int = 2000, permutations: int = 10000, seed: int = 0) -> StyleResult:
    """Estimates and paired shifts vs the first model from `values[model, prompt]` (module doc)."""
    estimates = []
    for i, model in enumerate(models):
        shift = shift_ci = p = None
        if i:
            shift = float((values[i] - values[0]).mean())
            shift_ci = paired_difference_ci(values[0], values[i], bootstrap, seed)
            p = paired_permutation_p(values[i] - values[0], permutations, seed)
        estimates.append(StyleEstimate(str(model), float(values[i].mean()), bootstrap_mean_ci(values[i], bootstrap, seed),
                                       shift, shift_ci, p))
    return StyleResult(tuple(openings), tuple(prompt_ids), tuple(estimates), tuple(map(tuple, values.tolist())))


def style_probe(models: Sequence[str | Path], prompts: Sequence[Prompt], openings: Sequence[str], *,
                base: str | Path | None = None, batch_size: int = 64, bootstrap: int = 2000,
                permutations: int = 10000, seed: int = 0, chat_template: bool = True, device: str = "auto",
                progress: bool = True) -> StyleResult:
    """p_style of every prompt under every model (PEFT adapters applied to `base`), then `summarize_style`.
    The openings are checked against the first model's tokenizer before any model loads."""
    texts = None
    values = []
    for model_path in tqdm(models, desc="p(style)", disable=not progress):
        tokenizer = probe_tokenizer(model_path, base, [p.prompt for p in prompts], chat_template)
        opening_token_ids(tokenizer, openings)
        texts = [format_for_model(tokenizer, p.prompt, chat_template) for p in prompts]
        model = load_model(model_path, resolve_device(device), float32=True, base=base, progress=progress)
        values.append(style_probability(model, tokenizer, texts, list(openings), batch_size).numpy())
        del model
    return summarize_style([str(m) for m in models], np.stack(values), openings, [p.prompt_id for p in prompts],
                           bootstrap, permutations, seed)


@dataclass(frozen=True)
class StyleShifts:
    """p_style shifts of runs over training, in the behavior probe's types (metric "p_style")."""

    shifts: tuple[Shift, ...]
    seed_shifts: tuple[SeedShift, ...]


def style_shifts(records: Sequence[StyleRecord], bootstrap: int = 2000, permutations: int = 10000,
                 seed: int = 0) -> StyleShifts:
    """Per (run, seed) each later step's mean p_style − the first step's, over prompts (`prompt_shift`: paired
    on prompt_id when both steps scored the same prompts), then `across_seeds`."""
    values: dict[tuple[str, int], dict[int, dict[str, float]]] = {}
    reward: dict[str, str] = {}
    for r in records:
        values.setdefault((r.run, r.seed), {}).setdefault(r.step, {})[r.prompt_id] = r.p_style
        reward[r.run] = r.reward
    shifts = []
    for (run, run_seed), by_step in sorted(values.items()):
        steps = sorted(by_step)
        for step in steps[1:]:
            found = prompt_shift(by_step[steps[0]], by_step[step], bootstrap, permutations, seed)
            if found is not None:
                delta, ci, p, paired, n = found
                shifts.append(Shift(run, run_seed, reward[run], steps[0], step, "p_style", delta, ci, p, paired, n))
    return StyleShifts(tuple(shifts), across_seeds(shifts))
