"""Curvature alignment (Gate II, model side): does the update avoid the base model's high-Fisher weights?

Diagonal empirical Fisher of BASE over N sequences sampled from BASE itself (one backward per sequence):
    F_j = (1/N) Σ_n (∂ log p_B(s_n) / ∂θ_j)²,   log p_B(s_n) = Σ_t log p_B(response token t of s_n | context)
Per 2-D weight, with Δ = W_tuned − W_base in float32 and T_q = the ⌈q/100 · n⌉ coordinates of largest F:
    share_q = Σ_{j∈T_q} Δ_j² / Σ_j Δ_j²     (chance level for an update blind to curvature: q/100)
and Spearman ρ between |Δ_j| and F_j over changed weights (Δ_j ≠ 0; a seeded subsample of 10^6 above that).
Model level: share_q = Σ_tensors Σ_{T_q} Δ² / Σ_tensors ‖Δ‖², and the median ρ over tensors.
Memory: BASE in float32 plus one float32 accumulator per selected weight (`layers` limits the selection).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from dynamics.api import open_pair
from dynamics.devices import resolve_device
from dynamics.documents import FISHER_SCHEMA, check_schema, finite_json, read_json_document
from dynamics.naming import layer_index
from probes.models import ProbeError, format_for_model, load_model, probe_tokenizer
from probes.sampling import Batch, generate, token_log_probs

Q_PERCENT = (1, 5, 10)
SPEARMAN_MAX_POINTS = 1_000_000


@dataclass(frozen=True)
class TensorAlignment:
    name: str
    share_top_q: dict[str, float | None]  # q (as text, JSON keys) → share of ‖Δ‖²; None when Δ = 0
    spearman: float | None
    n_changed: int


@dataclass(frozen=True)
class FisherResult:
    base: str
    tuned: str
    q_percent: tuple[int, ...]
    samples: int
    tensors: tuple[TensorAlignment, ...]
    model: dict

    def to_json(self) -> dict:
        """The `dynamics.fisher/1` document."""
        return finite_json({"schema": FISHER_SCHEMA, "base": self.base, "tuned": self.tuned,
                            "q_percent": list(self.q_percent), "samples": self.samples,
                            "tensors": [asdict(t) for t in self.tensors], "model": self.model})

    @staticmethod
    def from_json(doc: dict) -> FisherResult:
        """The result a `dynamics.fisher/1` document was written from."""
        check_schema(doc, FISHER_SCHEMA)
        return FisherResult(doc["base"], doc["tuned"], tuple(doc["q_percent"]), doc["samples"],
                            tuple(TensorAlignment(**t) for t in doc["tensors"]), doc["model"])

    @staticmethod
    def read_json(path: str | Path) -> FisherResult:
        """`from_json` of a file `dynamics probe fisher --json` wrote; a bad file is one error naming it."""
        return FisherResult.from_json(read_json_document(path, FISHER_SCHEMA, ProbeError))


def empirical_fisher_diagonal(parameters: dict[str, torch.nn.Parameter],
                              sample_losses: Iterable[Callable[[], torch.Tensor]]) -> tuple[dict[str, torch.Tensor], int]:
    """Mean squared gradient per coordinate, one backward per sample loss (a per-sample −log-likelihood):
    F = (1/N) Σ_n (∇ℓ_n)². Returns the float32 diagonals and N."""
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in parameters.items()}
    n = 0
    for loss in sample_losses:
        for p in parameters.values():
            p.grad = None
        loss().backward()
        for name, p in parameters.items():
            if p.grad is not None:
                fisher[name] += p.grad.float() ** 2
        n += 1
    if n == 0:
        raise ProbeError("the empirical Fisher needs at least one sample")
    return {name: f / n for name, f in fisher.items()}, n


def top_fisher_energy(delta: torch.Tensor, fisher: torch.Tensor, q_percent: float) -> float:
    """Σ Δ_j² over the ⌈q/100 · n⌉ coordinates of largest F (the numerator of share_q)."""
    k = max(1, math.ceil(q_percent / 100 * fisher.numel()))
    top = torch.topk(fisher.flatten(), k).indices
    return float((delta.flatten()[top].double() ** 2).sum())


def fisher_spearman(delta: torch.Tensor, fisher: torch.Tensor, seed: int = 0) -> float | None:
    """Spearman ρ of |Δ| and F over coordinates with Δ ≠ 0 (seeded subsample above 10^6); None below 3 changed
    coordinates or when either side is constant."""
    changed = (delta != 0).flatten()
    a, b = delta.flatten()[changed].abs().double().cpu().numpy(), fisher.flatten()[changed].double().cpu().numpy()
    if len(a) > SPEARMAN_MAX_POINTS:
        keep = np.random.default_rng(seed).choice(len(a), SPEARMAN_MAX_POINTS, replace=False)
        a, b = a[keep], b[keep]
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    return float(stats.spearmanr(a, b).statistic)


def align(name: str, delta: torch.Tensor, fisher: torch.Tensor, q_percent: tuple[int, ...] = Q_PERCENT,
          seed: int = 0) -> tuple[TensorAlignment, dict[str, float], float]:
    """One tensor's shares and ρ, plus its top-q energies and ‖Δ‖² (for the model-level pooled shares)."""
    total = float((delta.double() ** 2).sum())
    energies = {str(q): top_fisher_energy(delta, fisher, q) for q in q_percent}
    shares = {q: (e / total if total > 0 else None) for q, e in energies.items()}
    return TensorAlignment(name, shares, fisher_spearman(delta, fisher, seed), int((delta != 0).sum())), energies, total


def parse_layers(text: str | None) -> set[int] | None:
    """'0,1,10-12' → {0, 1, 10, 11, 12}; None → every layer."""
    if not text:
        return None
    layers = set()
    try:
        for part in text.split(","):
            low, _, high = part.strip().partition("-")
            layers.update(range(int(low), int(high or low) + 1))
    except ValueError as e:
        raise ProbeError(f"--layers {text!r}: expected indices and ranges like '0,1,10-12'") from e
    return layers


def sequence_losses(model, batch: Batch) -> list[Callable[[], torch.Tensor]]:
    """One −log-likelihood closure per sampled sequence (row) of `batch`."""
    def row_loss(i: int) -> Callable[[], torch.Tensor]:
        row = Batch(batch.input_ids[i:i + 1], batch.attention_mask[i:i + 1], batch.prompt_length,
                    batch.response_mask[i:i + 1])
        return lambda: -(token_log_probs(model, row) * row.response_mask).sum()
    return [row_loss(i) for i in range(len(batch.input_ids))]


def fisher_alignment(base: str | Path, tuned: str | Path, prompts: list, *, samples_per_prompt: int = 1,
                     max_new_tokens: int = 128, temperature: float = 1.0, layers: set[int] | None = None,
                     seed: int = 0, chat_template: bool = True, device: str = "auto",
                     progress: bool = False) -> FisherResult:
    """Empirical Fisher of `base` on its own samples, then the alignment of Δ = tuned − base (module doc).

    Δ is read from the checkpoints through `dynamics.api.open_pair`, the diff's own road: any format the
    diff opens, a PEFT adapter merged onto `base` (never onto its config's base), names normalised and paired.
    The tokenizer is `base`'s, checked once against its tokenizer.json (`probes.models.probe_tokenizer`)."""
    target = resolve_device(device)
    tokenizer = probe_tokenizer(base, None, [p.prompt for p in prompts], chat_template)
    # float32 gradients: squares of bf16 ones lose the tail
    model = load_model(base, target, float32=True, progress=progress)
    ckpt_base, ckpt_tuned, pairs, _ = open_pair(base, tuned)
    paired = {pair.name: pair for pair in pairs}
    selected = {name: p for name, p in model.named_parameters()
                if p.ndim == 2 and (layers is None or layer_index(name) in layers)}
    if not selected:
        raise ProbeError(f"{base}: no 2-D weights in the selected layers {sorted(layers or [])}")
    for name, p in model.named_parameters():
        p.requires_grad_(name in selected)
    missing = [name for name in selected if name not in paired]
    if missing:
        raise ProbeError(f"{tuned}: tensor {missing[0]} does not pair with the base's (missing or another shape)")
    torch.manual_seed(seed)
    texts = [format_for_model(tokenizer, p.prompt, chat_template) for p in prompts for _ in range(samples_per_prompt)]
    losses = []
    for start in tqdm(range(0, len(texts), 8), desc="sample", disable=not progress):
        losses += sequence_losses(model, generate(model, tokenizer, texts[start:start + 8], max_new_tokens,
                                                   sample=True, temperature=temperature))
    fisher, n = empirical_fisher_diagonal(selected, tqdm(losses, desc="fisher", disable=not progress))
    rows, energy, total = [], {str(q): 0.0 for q in Q_PERCENT}, 0.0
    for name, p in selected.items():
        pair = paired[name]  # Δ from the checkpoint files, exactly as `dynamics diff` pairs them
        delta = (ckpt_tuned.read(name).to(target, pair.compare_dtype).float()
                 - ckpt_base.read(name).to(target, pair.compare_dtype).float())
        row, energies, delta_sq = align(name, delta, fisher[name], seed=seed)
        rows.append(row)
        total += delta_sq
        for q in energy:
            energy[q] += energies[q]
    rhos = [r.spearman for r in rows if r.spearman is not None]
    model_summary = {"share_top_q": {q: (e / total if total > 0 else None) for q, e in energy.items()},
                     "spearman_median": float(np.median(rhos)) if rhos else None}
    return FisherResult(str(base), str(tuned), Q_PERCENT, n, tuple(rows), model_summary)
