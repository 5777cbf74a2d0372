"""`optimizer_analysis`: what the optimizer already knows about an update, without running the model.

For BASE (step t, or the base model) and TUNED (step t+1, read as fp32 masters where the layout holds
them), per paired tensor (`OptimizerCounts`):
- Gate II from TUNED's Adam state: the share of ‖Δ‖² on the top-q% coordinates of v against chance,
  Spearman ρ(|Δ|, v) over changed weights (2-D weights), and the cosine of Δ with −m̂/(√v̂+ε)
  (`dynamics.adam_curvature`);
- Gate III when TUNED is float32: every element moved-and-flipped / moved-but-hidden / unmoved in bf16,
  the hidden ones' drift in half-ULP units, and with NEXT (step t+2) the next-step flip prediction
  against what NEXT stores (`dynamics.bf16_flips`).
The stored bf16 value of a side is its own tensor when it is bf16, the 16-bit copy its layout stores
beside the masters (DeepSpeed ZeRO-1/2 `module`), otherwise the bf16 rounding of its masters (what a
bf16 save would hold). One tensor of each kind in memory at a time; CPU.

Example:
    >>> from dynamics.checkpoints.adam_state import open_adam_state
    >>> adam = open_adam_state("run/global_step_2")                                      # doctest: +SKIP
    >>> r = optimizer_analysis("run/global_step_1", "run/global_step_2", adam=adam, next_checkpoint="run/global_step_3")  # doctest: +SKIP
    >>> r.to_json()["summary"]["flip_prediction_recall"]                                  # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path

import torch

from dynamics import adam_curvature, bf16_flips
from dynamics.api import open_pair
from dynamics.checkpoints import Checkpoint, open_checkpoint
from dynamics.checkpoints.adam_state import AdamHyper, AdamState
from dynamics.documents import OPTIMIZER_SCHEMA, check_schema, read_json_document, write_json_document
from dynamics.errors import CheckpointError
from dynamics.metrics import optimizer_metrics_of
from dynamics.naming import MODULE_KINDS, layer_index, module_kind
from dynamics.optimizer_counts import OptimizerCounts
from dynamics.pipeline import stream_pairs
from dynamics.training_log import TrainingLog


@dataclass(frozen=True)
class OptimizerRecord:
    """One tensor's counters and its own Spearman ρ(|Δ|, v) (None: not 2-D, no state, < 2 changed)."""

    name: str
    layer: int | None
    module_kind: str
    shape: tuple[int, ...]
    counts: OptimizerCounts
    spearman_rho: float | None = None

    def to_row(self) -> dict:
        return {"name": self.name, "layer": self.layer, "module_kind": self.module_kind, "shape": list(self.shape),
                "spearman_rho": self.spearman_rho, **_row(self.counts)}


@dataclass(frozen=True)
class OptimizerResult:
    """Per-tensor records of `optimizer_analysis` and their aggregates (counters summed).

    `log`: the training log's canonical quantities at TUNED's step (`dynamics.training_log`), `log_step` that step.
    """

    base: str
    tuned: str
    optimizer: str | None
    next_checkpoint: str | None
    records: list[OptimizerRecord]
    notes: list[str] = field(default_factory=list)
    log_step: int | None = None
    log: dict[str, float] = field(default_factory=dict)

    def summary(self) -> OptimizerCounts:
        return _total(self.records)

    def by_module_kind(self) -> dict[str, OptimizerCounts]:
        groups: dict[str, list[OptimizerRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.module_kind].append(r)
        return {k: _total(groups[k]) for k in MODULE_KINDS if k in groups}

    def by_layer(self) -> dict[int, OptimizerCounts]:
        groups: dict[int, list[OptimizerRecord]] = defaultdict(list)
        for r in self.records:
            if r.layer is not None:
                groups[r.layer].append(r)
        return {layer: _total(groups[layer]) for layer in sorted(groups)}

    def to_json(self) -> dict:
        """The `dynamics.optimizer/1` document."""
        return {
            "schema": OPTIMIZER_SCHEMA, "base": self.base, "tuned": self.tuned, "optimizer": self.optimizer,
            "next_checkpoint": self.next_checkpoint, "notes": list(self.notes),
            "log_step": self.log_step, "log": dict(self.log),
            "summary": {"tensors": len(self.records), **_row(self.summary())},
            "by_module_kind": {k: _row(c) for k, c in self.by_module_kind().items()},
            "by_layer": {str(k): _row(c) for k, c in self.by_layer().items()},
            "tensors": [r.to_row() for r in self.records],
        }

    @classmethod
    def from_json(cls, doc: dict) -> OptimizerResult:
        check_schema(doc, OPTIMIZER_SCHEMA, error=CheckpointError)
        records = [OptimizerRecord(r["name"], r["layer"], r["module_kind"], tuple(r["shape"]),
                                   OptimizerCounts.from_row(r), r["spearman_rho"]) for r in doc["tensors"]]
        return cls(doc["base"], doc["tuned"], doc["optimizer"], doc["next_checkpoint"], records, list(doc["notes"]),
                   doc["log_step"], dict(doc["log"]))

    @classmethod
    def read_json(cls, path: str | Path) -> OptimizerResult:
        return cls.from_json(read_json_document(path, OPTIMIZER_SCHEMA, CheckpointError))

    def write_json(self, path: str | Path) -> None:
        write_json_document(self.to_json(), path)


def optimizer_analysis(base: str | Path, tuned: str | Path, *, adam: AdamState | None = None,
                       next_checkpoint: str | Path | None = None, log: TrainingLog | None = None,
                       component: str | None = None) -> OptimizerResult:
    """`OptimizerRecord` of every paired tensor of BASE → TUNED (see the module docstring).

    Args:
        adam: TUNED's Adam state (`dynamics.checkpoints.adam_state.open_adam_state`); without it only Gate III.
        next_checkpoint: the checkpoint one step after TUNED, for the flip prediction's precision and recall.
        log: the run's training log; its canonical quantities at TUNED's step go into the result.
        component: the verl component of step folders (default actor).
    """
    ckpt_a, ckpt_b, pairs, _ = open_pair(base, tuned, masters=True, component=component)
    stored_a, stored_b = _stored_bf16(base, ckpt_a, component), _stored_bf16(tuned, ckpt_b, component)
    ckpt_c = open_checkpoint(next_checkpoint, masters=True, component=component) if next_checkpoint else None
    stored_c = _stored_bf16(next_checkpoint, ckpt_c, component) if ckpt_c is not None else None
    notes = [f"base: {line}" for line in ckpt_a.notes] + [f"tuned: {line}" for line in ckpt_b.notes]
    if adam is not None:
        notes += adam.notes
    records = []
    for loaded in stream_pairs(ckpt_a, ckpt_b, pairs, torch.device("cpu")):
        name = loaded.pair.name
        moments = adam.moments(name) if adam is not None and name in adam.shapes else None
        hyper = adam.hyper[name] if moments is not None else None
        after = None
        if ckpt_c is not None and name in ckpt_c.tensors and moments is not None:
            after = stored_c(name, ckpt_c.read(name))
        counts, rho = tensor_counts(loaded.a, loaded.b, stored_a(name, loaded.a), stored_b(name, loaded.b),
                                    moments, hyper, after)
        records.append(OptimizerRecord(name, layer_index(name), module_kind(name), tuple(loaded.a.shape), counts, rho))
    step = log.global_step if log is not None else None
    return OptimizerResult(str(ckpt_a.path), str(ckpt_b.path), str(adam.path) if adam is not None else None,
                           str(next_checkpoint) if next_checkpoint is not None else None, records, notes,
                           step, log.canonical(step) if log is not None and step is not None else {})


def tensor_counts(a: torch.Tensor, b: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor,
                  moments: tuple[torch.Tensor, torch.Tensor] | None = None, hyper: AdamHyper | None = None,
                  next_stored: torch.Tensor | None = None) -> tuple[OptimizerCounts, float | None]:
    """Counters of one tensor: a, b as read (b float32 for Gate III), sa, sb their stored bf16 values,
    (m, v) and hyper of b's Adam state, next_stored the next checkpoint's bf16 value (module docstring)."""
    counts: dict = {"numel": a.numel()}
    rho = None
    delta = b.double() - a.double()
    if moments is not None:
        m, v = moments
        direction = adam_curvature.adam_direction(m, v, hyper)
        counts.update(with_state=a.numel(), momentum_dot=float((delta * direction).sum()),
                      momentum_sq_delta=float(delta.square().sum()),
                      momentum_sq_direction=float(direction.square().sum()))
        if a.dim() == 2:
            top_count, top_sum = adam_curvature.top_v_counts(delta, v)
            changed = delta != 0
            rho = adam_curvature.spearman(delta.abs()[changed], v.double()[changed])
            counts.update(matrices=1, matrix_numel=a.numel(), sum_sq_delta_matrix=float(delta.square().sum()),
                          top_v_count=top_count, sum_sq_delta_top_v=top_sum,
                          spearman_weighted=rho * int(changed.sum()) if rho is not None else 0.0,
                          spearman_weight=int(changed.sum()) if rho is not None else 0)
    if b.dtype == torch.float32:
        masks = bf16_flips.classify(a.float(), b, sa, sb)
        counts.update(classified=a.numel(), **{k: int(mask.sum()) for k, mask in masks.items()},
                      hidden_drift_histogram=bf16_flips.drift_histogram(
                          bf16_flips.half_ulp_units(sb, b)[masks["moved_hidden"]]))
        if moments is not None and next_stored is not None:
            predicted = bf16_flips.predicted_flips(b, sb, *moments, hyper)
            actual = next_stored.view(torch.int16) != sb.view(torch.int16)
            counts.update(predicted_numel=a.numel(), predicted_flips=int(predicted.sum()),
                          next_flips=int(actual.sum()), predicted_and_next=int((predicted & actual).sum()))
    return OptimizerCounts(**counts), rho


def _stored_bf16(path: str | Path, ckpt: Checkpoint, component: str | None
                 ) -> Callable[[str, torch.Tensor], torch.Tensor]:
    """name, tensor as read -> its stored bf16 value (module docstring: own, stored copy, or rounding)."""
    stored = open_checkpoint(path, component=component)
    has_copy = stored.format != ckpt.format

    def bf16(name: str, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.bfloat16:
            return tensor
        info = stored.tensors.get(name)
        if has_copy and info is not None and info.dtype == torch.bfloat16 and info.shape == tuple(tensor.shape):
            return stored.read(name)
        return tensor.to(torch.bfloat16)

    return bf16


def _total(records: list[OptimizerRecord]) -> OptimizerCounts:
    return reduce(lambda total, r: total + r.counts, records, OptimizerCounts())


def _row(c: OptimizerCounts) -> dict:
    return {**asdict(c), **optimizer_metrics_of(c)}
