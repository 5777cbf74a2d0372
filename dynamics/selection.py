"""Weight selection for sparse fine-tuning: boolean masks per tensor, with exact budgets.

A `MaskSet` maps tensor names to bool tensors shaped like the weights (True = selected / trainable).
`select` builds the Path Not Taken's masks from a base checkpoint; the combinators build the rest:

- principal: M_princ, the top-α elements of |W0^(k)|, W0^(k) = U_k Σ_k V_kᵀ the rank-k reconstruction;
- low_magnitude: M_low, the bottom-α elements of |W0|;
- random: α of the elements, uniformly;
- `complement`, `union`, `intersection` (e.g. M_princ^c ∪ M_low, M_princ ∩ M_low^c), `random_like`
  (another mask's per-tensor counts at random places), `from_diff` (what a run actually changed).

Budgets are exact: a set of n elements gets round(α·n) of them (`budget_count`), ties in the score
broken by position (lower row-major index first; across tensors, in the order they come), so the same
inputs always give the same mask.

Example:
    >>> principal = select("runs/base", "principal", 0.5, k=64)                    # doctest: +SKIP
    >>> mask = union(complement(principal), select("runs/base", "low_magnitude", 0.5))  # doctest: +SKIP
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

import torch

from dynamics.checkpoints import Checkpoint, open_checkpoint
from dynamics.errors import MaskError
from dynamics.geometry import randomized_svd
from dynamics.naming import is_projection_weight
from dynamics.result import DiffResult

MaskSet = dict[str, torch.Tensor]
Rule = str  # "principal" | "low_magnitude" | "random"
RULES: tuple[str, ...] = ("principal", "low_magnitude", "random")
Include = Callable[[str, tuple[int, ...]], bool] | Collection[str] | None


def budget_count(fraction: float, numel: int) -> int:
    """round(α·n), halves rounded up: the exact number of elements a budget α of n elements selects."""
    if not 0.0 <= fraction <= 1.0:
        raise MaskError(f"budget {fraction}: expected a fraction in [0, 1]")
    return min(numel, math.floor(fraction * numel + 0.5))


def top_count(scores: torch.Tensor, count: int, largest: bool = True) -> torch.Tensor:
    """Bool mask of exactly `count` elements with the largest (or smallest) scores; among equal scores
    at the threshold, lower row-major positions win. NaN scores are a ValueError."""
    flat = scores.reshape(-1)
    n = flat.numel()
    if not 0 <= count <= n:
        raise ValueError(f"cannot select {count} of {n} elements")
    if count in (0, n):
        return torch.full(scores.shape, count == n, dtype=torch.bool, device=scores.device)
    if bool(torch.isnan(flat).any()):
        raise ValueError("scores hold NaN")
    key = flat if largest else -flat
    threshold = torch.kthvalue(key, n - count + 1).values
    above, equal = key > threshold, key == threshold
    need = count - int(above.sum())
    return (above | (equal & (torch.cumsum(equal, 0) <= need))).view(scores.shape)


def select(
    base: str | Path | Checkpoint | Mapping[str, torch.Tensor],
    rule: Rule,
    budget: float,
    *,
    k: int = 64,
    exact: bool = False,
    per_tensor: bool = True,
    include: Include = None,
    within: MaskSet | None = None,
    seed: int = 0,
) -> MaskSet:
    """Masks of `rule` with budget α = `budget` over the base's tensors `include` takes.

    Args:
        base: checkpoint path, opened Checkpoint, or a state dict (e.g. `model.state_dict()`).
        rule: "principal" (top-α of |U_k Σ_k V_kᵀ| of W0; 2-D tensors only; k clamped to min(m, n), where
            the reconstruction is W0 itself), "low_magnitude" (bottom-α of |W0|) or "random".
        k: rank of the reconstruction; exact: full SVD instead of `randomized_svd` (seed 0).
        per_tensor: α of every tensor (default), or α of all included elements together (one ranking
            across tensors: scores of every included tensor are held at once).
        include: names, or a predicate (name, shape) → bool; default `is_projection_weight`
            (the 2-D q, k, v, o, gate, up, down weights).
        within: rank only the True elements of these masks (e.g. `complement(principal)` for a
            non-principal low-magnitude mask); the budget still counts α of every element of a tensor
            (α·n of them, at most |within|), and only tensors `within` names are included.
        seed: for "random": tensor t's draws come from a generator seeded with seed ⊕ crc32(name).

    Raises MaskError for an unknown rule, a budget outside [0, 1], a non-2-D tensor under "principal",
    or NaN weights, naming the tensor.
    """
    if rule not in RULES:
        raise MaskError(f"selection rule {rule!r}: expected one of {', '.join(RULES)}")
    budget_count(budget, 0)
    if within is not None:
        include = _restricted(include, within)
    largest = rule != "low_magnitude"
    scored = ((name, _candidates(name, _scores(name, w, rule, k, exact, seed), within, largest), largest)
              for name, w in _included(base, include))
    if per_tensor:
        return {name: _top(name, s, budget_count(budget, s.numel()), largest) for name, s, _ in scored}
    items = list(scored)
    if not items:
        return {}
    flat = torch.cat([s.reshape(-1) for _, s, _ in items])
    chosen = _top("all included tensors", flat, budget_count(budget, flat.numel()), largest)
    masks, start = {}, 0
    for name, s, _ in items:
        masks[name] = chosen[start: start + s.numel()].view(s.shape)
        start += s.numel()
    return masks


def complement(masks: MaskSet) -> MaskSet:
    """M^c per tensor."""
    return {name: ~m for name, m in masks.items()}


def union(*sets: MaskSet) -> MaskSet:
    """M_1 ∪ M_2 ∪ … per tensor; every set must name the same tensors with the same shapes."""
    return _combine(sets, torch.logical_or)


def intersection(*sets: MaskSet) -> MaskSet:
    """M_1 ∩ M_2 ∩ … per tensor; every set must name the same tensors with the same shapes."""
    return _combine(sets, torch.logical_and)


def random_like(masks: MaskSet, seed: int = 0) -> MaskSet:
    """Uniformly random masks with exactly the per-tensor counts of `masks` (the paper's density-matched
    random baseline); draws as in `select(..., "random", seed=seed)`."""
    return {name: _top(name, _uniform(name, m.shape, seed, m.device), int(m.sum()), True) for name, m in masks.items()}


def from_diff(result: DiffResult, tolerance: float | None = None) -> MaskSet:
    """What a run changed: `result.mask(name, tolerance)` for every tensor whose bitwise mask the diff
    kept (`diff(..., save_masks=True)`), or, with a tolerance, for every tensor of the diff."""
    names = [r.name for r in result.records if tolerance is not None or r.name in result.packed_masks]
    if not names:
        raise MaskError(f"{result.b.path}: the diff kept no update masks (diff with save_masks=True)")
    return {name: result.mask(name, tolerance) for name in names}


def density(masks: MaskSet) -> dict[str, float]:
    """Selected share per tensor, and "all": the element-weighted share over every tensor."""
    shares = {name: m.float().mean().item() if m.numel() else 0.0 for name, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    shares["all"] = sum(int(m.sum()) for m in masks.values()) / total if total else 0.0
    return shares


def _included(base, include: Include) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(base, Mapping):
        shapes = {name: tuple(t.shape) for name, t in base.items()}
        read = base.__getitem__
    else:
        ckpt = base if isinstance(base, Checkpoint) else open_checkpoint(base)
        shapes = {name: info.shape for name, info in ckpt.tensors.items()}
        read = ckpt.read
    if include is None:
        take = is_projection_weight
    elif callable(include):
        take = include
    else:
        wanted = set(include)
        unknown = wanted - shapes.keys()
        if unknown:
            raise MaskError(f"{getattr(base, 'path', 'state dict')}: no tensor {min(unknown)} to select from")
        take = lambda name, shape: name in wanted
    for name, shape in shapes.items():
        if take(name, shape):
            yield name, read(name).detach()


def _scores(name: str, w: torch.Tensor, rule: Rule, k: int, exact: bool, seed: int) -> torch.Tensor:
    """|W0^(k)| (principal), |W0| (low_magnitude) or uniform draws (random), float32."""
    if rule == "random":
        return _uniform(name, w.shape, seed, w.device)
    w = w.float()
    if not bool(torch.isfinite(w).all()):
        raise MaskError(f"tensor {name}: NaN/Inf weights cannot be ranked")
    if rule == "low_magnitude":
        return w.abs()
    if w.dim() != 2:
        raise MaskError(f"tensor {name}: the principal mask needs a 2-D weight, got shape {list(w.shape)}")
    rank = min(k, *w.shape)
    if exact:
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        u, s, v = u[:, :rank], s[:rank], vh[:rank].mT
    else:
        u, s, v = randomized_svd(w, rank)
    return ((u * s) @ v.mT).abs()


def _restricted(include: Include, within: MaskSet) -> Callable[[str, tuple[int, ...]], bool]:
    """`include` narrowed to the tensors `within` names."""
    if include is None:
        return lambda name, shape: name in within
    if callable(include):
        return lambda name, shape: name in within and include(name, shape)
    names = set(include)
    return lambda name, shape: name in within and name in names


def _candidates(name: str, scores: torch.Tensor, within: MaskSet | None, largest: bool) -> torch.Tensor:
    """Scores with the elements outside `within[name]` pushed past every candidate (−∞ / +∞)."""
    if within is None:
        return scores
    allowed = within[name]
    if tuple(allowed.shape) != tuple(scores.shape):
        raise MaskError(f"tensor {name}: `within` mask of shape {list(allowed.shape)} does not fit {list(scores.shape)}")
    return scores.masked_fill(~allowed.to(scores.device, torch.bool), -math.inf if largest else math.inf)


def _uniform(name: str, shape: tuple[int, ...], seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed ^ zlib.crc32(name.encode()))
    return torch.rand(shape, generator=generator).to(device)


def _top(name: str, scores: torch.Tensor, count: int, largest: bool) -> torch.Tensor:
    """`top_count` with errors naming the tensor; ±∞ scores (outside `within`) are never selected."""
    candidates = int(torch.isfinite(scores).sum())
    if count > candidates:
        raise MaskError(f"tensor {name}: a budget of {count} elements exceeds its {candidates} candidates")
    try:
        return top_count(scores, count, largest)
    except ValueError as e:
        raise MaskError(f"tensor {name}: {e}") from None


def _combine(sets: tuple[MaskSet, ...], op: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> MaskSet:
    if not sets:
        raise MaskError("combining masks needs at least one mask set")
    names = set(sets[0])
    for other in sets[1:]:
        if set(other) != names:
            raise MaskError(f"tensor {min(names ^ set(other))}: not in every mask set")
    combined = {}
    for name in sets[0]:
        masks = [s[name] for s in sets]
        if any(m.shape != masks[0].shape for m in masks):
            raise MaskError(f"tensor {name}: masks of different shapes {[list(m.shape) for m in masks]}")
        result = masks[0]
        for m in masks[1:]:
            result = op(result, m)
        combined[name] = result
    return combined
