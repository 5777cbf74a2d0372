"""`Monitor`: the statistics `dynamics diff` computes, measured during training from the weights in memory.

Every `every` optimizer steps, each parameter W_t is compared with the starting weights W_0 (vs base) and
with the last measured step (vs previous), tensor by tensor through the same fused kernel (`dynamics.kernels`:
Triton on CUDA, the torch twin on the CPU), so the counters are those `dynamics diff` gives for checkpoints
saved in `storage_dtype` at those steps:
- storage pass: W0 and W_t both rounded to `storage_dtype` (bitwise sparsity of a bf16 save, ULP distances,
  norms of the stored values);
- masters pass (`masters=True` and float32 parameters): the float32 values themselves, as `dynamics diff` of
  float32 saves gives them: norms of the true update and `hidden_by_bf16_fraction` = moved fp32 elements whose
  bf16 roundings agree. Its snapshots are float32 (4 bytes per weight and copy instead of 2).
- optimizer (an Adam optimizer given to `step`): Adam's v curvature share and the momentum cosine of the update
  since the previous measurement (`dynamics.optimizer_analysis.tensor_counts`), plus the bf16 flip / hidden
  counts of the masters when their snapshots are float32; then, with `every=1`, the next-step flip prediction
  (`dynamics.bf16_flips.predicted_flips`, a bool per weight kept until the next step): checked at the next
  measurement, its counts go into this step's optimizer summary and its precision / recall into the next
  step's logged scalars.
- matrix pass every `geometry_every` steps (`dynamics.geometry`, on the storage pass's pair).
Nothing is written to the parameters or to global random state: training numerics do not change.
Results go to `out/series.json` (`dynamics.series/1`, rewritten atomically after each measurement) and are
returned by `step` as flat scalars for a logger (`dynamics/bitwise_sparsity`, ...).

>>> monitor = Monitor(model, every=10, out="runs/live")          # doctest: +SKIP
>>> for batch in data:                                           # doctest: +SKIP
...     loss(model, batch).backward(); optimizer.step(); optimizer.zero_grad()
...     monitor.step(model, optimizer)
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, replace
from functools import reduce
from pathlib import Path

import torch

from dynamics import bf16_flips
from dynamics.checkpoints.adam_state import AdamHyper
from dynamics.documents import write_json_document
from dynamics.geometry import geometry_stats_batched, skip_reason
from dynamics.geometry_options import GeometryOptions
from dynamics.kernels import element_stats
from dynamics.kernels.elementwise_cpu import SUPPORTED_DTYPES
from dynamics.live.shards import distributed, local_tensor, reduce_records
from dynamics.live.snapshots import Snapshots, size
from dynamics.metrics import METRICS, optimizer_metrics_of
from dynamics.naming import layer_index, module_kind
from dynamics.optimizer_analysis import tensor_counts
from dynamics.optimizer_counts import OptimizerCounts
from dynamics.pairing import Unpaired
from dynamics.result import CheckpointSide, DiffResult, TensorRecord
from dynamics.series import Series, SeriesStep, model_metrics
from dynamics.training_log import TrainingLog

LIVE_SIDE = "live"


class Monitor:
    """Measure a model's update against its starting weights while it trains (module docstring).

    Args:
        model: the module whose parameters are measured (snapshots are taken here: create the monitor
            before the first optimizer step). Parameters with requires_grad=False at this point are taken as
            constant: no snapshot, measured once against themselves (so totals stay those of full checkpoints).
        every: measure after every `every`-th optimizer step.
        storage_dtype: the dtype a checkpoint of this run would be saved in (bitwise sparsity is in it).
        masters: also run the float32 pass on float32 parameters (float32 snapshots; module docstring).
        out: folder for `series.json`; None: nothing written.
        geometry_every: also run the matrix pass every this many steps (a multiple of `every`); None: never.
        geometry: the matrix pass's options (default `GeometryOptions()`).
    """

    def __init__(self, model: torch.nn.Module, every: int = 1, *, storage_dtype: torch.dtype = torch.bfloat16,
                 masters: bool = False, out: str | Path | None = None, geometry_every: int | None = None,
                 geometry: GeometryOptions | None = None):
        if every < 1:
            raise ValueError(f"Monitor: every must be at least 1, got {every}")
        if storage_dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"Monitor: storage_dtype must be one of {', '.join(map(str, SUPPORTED_DTYPES))}, "
                             f"got {storage_dtype}")
        if geometry_every is not None and (geometry_every < 1 or geometry_every % every):
            raise ValueError(f"Monitor: geometry_every={geometry_every} must be a positive multiple of every={every}")
        self.every, self.storage_dtype, self.geometry_every = every, storage_dtype, geometry_every
        self.geometry = (geometry or GeometryOptions()) if geometry_every is not None else None
        self.out = None if out is None else Path(out)
        if self.out is not None:
            self.out.mkdir(parents=True, exist_ok=True)  # an unwritable folder fails here, not after a step
        self.masters = masters
        self.steps: list[SeriesStep] = []
        self.calls = 0
        self._last_call: float | None = None
        self._reported = False
        self._rank0 = not distributed() or torch.distributed.get_rank() == 0
        tensors = {name: local_tensor(p)[0] for name, p in model.named_parameters() if p.requires_grad}
        self.frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        self._frozen_records: dict[str, dict[str, TensorRecord]] = {}
        self._predicted: dict[str, torch.Tensor] = {}  # name -> bf16 flips predicted for the next step
        self._last_counts: tuple[int, OptimizerCounts] | None = None  # tensors, total of the last measurement
        self.snapshots = Snapshots.take(tensors, {name: self._snapshot_dtype(t) for name, t in tensors.items()})

    def _snapshot_dtype(self, t: torch.Tensor) -> torch.dtype:
        wider = t.dtype == torch.float32 and self.storage_dtype != torch.float32
        return torch.float32 if self.masters and wider else self.storage_dtype

    @torch.no_grad()
    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
             global_step: int | None = None) -> dict[str, float] | None:
        """Call after each optimizer step. Measures when the step (`global_step`, default the number of calls)
        is a multiple of `every`; returns the logged scalars then, else None."""
        self.calls += 1
        step = self.calls if global_step is None else global_step
        now = time.perf_counter()
        between = None if self._last_call is None else now - self._last_call
        if step % self.every:
            self._last_call = now
            return None
        logged = self._measure(model, optimizer, step, between)
        self._last_call = time.perf_counter()
        return logged

    def _measure(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                 between: float | None) -> dict[str, float]:
        start = time.perf_counter()
        first = not self.steps
        with_geometry = self.geometry is not None and step % self.geometry_every == 0
        adam = _adam_states(optimizer)
        passes: dict[str, list[TensorRecord]] = {"base": [], "previous": [], "masters": [], "masters_previous": []}
        sharded: dict[str, list[bool]] = {k: [] for k in passes}
        counts: list[OptimizerCounts] = []
        checked = OptimizerCounts()
        for name, p in model.named_parameters():
            live, is_shard = local_tensor(p)
            records, optimizer_counts, flips = self._parameter(name, p, live.detach(), first, with_geometry, adam)
            for kind, record in records.items():
                passes[kind].append(record)
                sharded[kind].append(is_shard)
            if optimizer_counts is not None:
                counts.append(optimizer_counts)
            if flips is not None:
                checked = checked + flips
        device = next(model.parameters()).device
        if distributed():
            passes = {k: reduce_records(v, sharded[k], device) for k, v in passes.items()}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        vs_base = model_metrics(_result(passes["base"], seconds))
        vs_previous = model_metrics(_result(passes["previous"], seconds)) if passes["previous"] else None
        if passes["masters"]:
            vs_base["masters"] = model_metrics(_result(passes["masters"], seconds))
        if vs_previous is not None and passes["masters_previous"]:
            vs_previous["masters"] = model_metrics(_result(passes["masters_previous"], seconds))
        if checked.predicted_numel and self._last_counts is not None:  # last step's prediction, checked now
            tensors, total = self._last_counts
            self.steps[-1] = replace(self.steps[-1], optimizer=_summary(tensors, total + checked))
        summary = None
        if counts:
            total = reduce(lambda x, y: x + y, counts, OptimizerCounts())
            self._last_counts = (len(counts), total)
            summary = _summary(len(counts), total)
        self.steps.append(SeriesStep(step, f"{LIVE_SIDE}:step-{step}", vs_base, vs_previous, None, None, summary))
        self._write()
        if self._rank0 and not self._reported and between is not None:
            self._report_cost(seconds, between)
        logged = logged_scalars(self.steps[-1])
        if checked.predicted_numel:
            for name in ("flip_prediction_precision", "flip_prediction_recall"):
                value = optimizer_metrics_of(checked)[name]
                if value is not None:
                    logged[f"dynamics/optimizer/{name}"] = value
        return logged

    def _parameter(self, name: str, p: torch.Tensor, live: torch.Tensor, first: bool, with_geometry: bool,
                   adam: dict[int, tuple]
                   ) -> tuple[dict[str, TensorRecord], OptimizerCounts | None, OptimizerCounts | None]:
        """One parameter's records by pass (module docstring; no "previous" passes at the first measurement),
        its Adam counts (None without a state) and the check of the flips predicted one step ago (None
        without a prediction); then its previous snapshot := `live`."""
        if name in self.frozen:
            records = self._frozen(name, p, live, with_geometry)
            return {k: r for k, r in records.items() if not first or k in ("base", "masters")}, None, None
        base, previous = self.snapshots.on(name, live.device)
        stored = live.to(self.storage_dtype)
        pairs = {"base": (base.to(self.storage_dtype), stored)}
        if not first:
            pairs["previous"] = (previous.to(self.storage_dtype), stored)
        if base.dtype == torch.float32 and live.dtype == torch.float32 and self.storage_dtype != torch.float32:
            pairs["masters"] = (base, live)
            if not first:
                pairs["masters_previous"] = (previous, live)
        shape = tuple(p.shape)
        records = {kind: self._record(name, shape, a, b, with_geometry and kind == "base") for kind, (a, b) in pairs.items()}
        counts, checked = None, None
        predicted = self._predicted.pop(name, None)
        if predicted is not None:
            flipped = live.to(torch.bfloat16).view(torch.int16) != previous.to(torch.bfloat16).view(torch.int16)
            checked = OptimizerCounts(predicted_numel=live.numel(), predicted_flips=int(predicted.sum()),
                                      next_flips=int(flipped.sum()), predicted_and_next=int((predicted & flipped).sum()))
        if id(p) in adam and adam[id(p)][0].shape == live.shape:
            m, v, hyper = adam[id(p)]
            a, b = previous, live.to(previous.dtype)
            counts = tensor_counts(a, b, a.to(torch.bfloat16), b.to(torch.bfloat16), (m, v), hyper)[0]
            if self.every == 1 and b.dtype == torch.float32:
                self._predicted[name] = bf16_flips.predicted_flips(b, b.to(torch.bfloat16), m, v, hyper)
        self.snapshots.keep(name, live)
        return records, counts, checked

    def _frozen(self, name: str, p: torch.Tensor, live: torch.Tensor, with_geometry: bool) -> dict[str, TensorRecord]:
        """Records of a frozen parameter, W against itself (every element unchanged), made once: it has no
        snapshot. With the matrix pass a fresh one is made, as its geometry is not cached."""
        if name not in self._frozen_records or with_geometry:
            stored = live.to(self.storage_dtype)
            records = {"base": self._record(name, tuple(p.shape), stored, stored, with_geometry)}
            records["previous"] = replace(records["base"], geometry=None)
            if live.dtype == torch.float32 and self.masters and self.storage_dtype != torch.float32:
                records["masters"] = records["masters_previous"] = self._record(name, tuple(p.shape), live, live, False)
            if with_geometry:
                return records
            self._frozen_records[name] = records
        return self._frozen_records[name]

    def add_log(self, step: int, values: dict) -> None:
        """Keep the training log's canonical quantities (reward, KL, loss, ...; `dynamics.training_log`) of
        `values`, the trainer's log at `step`, in that measured step (no-op for a step not measured)."""
        for index, measured in enumerate(self.steps):
            if measured.step == step:
                numeric = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
                logged = TrainingLog("trainer logs", {step: numeric}).canonical(step)
                self.steps[index] = replace(measured, log={**(measured.log or {}), **logged} or None)
                self._write()

    def _write(self) -> None:
        if self.out is not None and self._rank0:
            write_json_document(self.series().to_json(), self.out / "series.json")

    def _record(self, name: str, shape: tuple[int, ...], a: torch.Tensor, b: torch.Tensor,
                with_geometry: bool) -> TensorRecord:
        a, b = a.contiguous(), b.contiguous()  # the Triton kernel reads contiguous tensors
        stats = element_stats(a, b)
        geometry = None
        if with_geometry and skip_reason(shape, a.dtype) is None and a.dim() == 2 and stats.finite_pairs == stats.numel:
            geometry = geometry_stats_batched([(a, b, None)], k=self.geometry.k, exact=self.geometry.exact)[0]
        return TensorRecord(name=name, layer=layer_index(name), module_kind=module_kind(name), shape=shape,
                            dtype=str(a.dtype).removeprefix("torch."), stats=stats, geometry=geometry)

    def _report_cost(self, seconds: float, between: float) -> None:
        """The one-time message: where the snapshots are, their bytes, and one measurement's time against the
        time from the previous `step` call to this one (the training step, and the measurement if that was one)."""
        self._reported = True
        print(f"dynamics live: snapshots {'; '.join(self.snapshots.placement)}, "
              f"{size(self.snapshots.nbytes)} in all; one measurement takes {1e3 * seconds:.1f} ms against "
              f"{1e3 * between:.1f} ms for the step before it ({seconds / between:.1%})", file=sys.stderr, flush=True)

    def series(self) -> Series:
        """The measurements so far as a `dynamics.series/1` series (run_dir and out_dir: `out`)."""
        options = {"geometry": None if self.geometry is None else asdict(self.geometry),
                   "live": {"every": self.every, "storage_dtype": str(self.storage_dtype).removeprefix("torch."),
                            "masters": self.masters, "geometry_every": self.geometry_every}}
        folder = "" if self.out is None else str(self.out)
        return Series(run_dir=folder, base=f"{LIVE_SIDE}:start", run=None, options=options, kl_source=None,
                      steps=list(self.steps), out_dir=folder, diffs_computed=len(self.steps), diffs_cached=0)


def logged_scalars(step: SeriesStep) -> dict[str, float]:
    """The headline scalars of a measured step for a trainer's logger: `dynamics/NAME` against the start,
    `dynamics/previous/NAME` against the last measurement, `dynamics/masters/...` of the float32 pass,
    `dynamics/optimizer/NAME` of the Adam counts (registered names, `dynamics.metrics`; None values left out)."""
    out: dict[str, float] = {}

    def add(prefix: str, values: dict | None) -> None:
        for name, value in (values or {}).items():
            metric = METRICS.get(name)
            if metric is not None and (metric.headline or name.startswith("hidden_by")) and isinstance(value, float):
                out[f"{prefix}{name}"] = value

    add("dynamics/", step.vs_base)
    add("dynamics/masters/", step.vs_base.get("masters"))
    if step.vs_previous is not None:
        add("dynamics/previous/", step.vs_previous)
        add("dynamics/previous/masters/", step.vs_previous.get("masters"))
    add("dynamics/optimizer/", step.optimizer)
    return out


def _summary(tensors: int, total: OptimizerCounts) -> dict:
    """The model-level `dynamics.optimizer/1` summary of summed counts (as `OptimizerResult.to_json` writes it)."""
    return {"tensors": tensors, **asdict(total), **optimizer_metrics_of(total)}


def _result(records: list[TensorRecord], seconds: float) -> DiffResult:
    side = CheckpointSide(path=LIVE_SIDE, format=LIVE_SIDE, notes=[], tied={})
    return DiffResult(a=side, b=side, records=records, unpaired=Unpaired(), device="live", seconds=seconds,
                      bytes_read=0)


def _adam_states(optimizer: torch.optim.Optimizer | None) -> dict[int, tuple]:
    """id(parameter) -> (m, v, AdamHyper) of every parameter with an Adam state; empty without an optimizer."""
    if optimizer is None:
        return {}
    found = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" in state and "betas" in group:
                hyper = AdamHyper(lr=float(group["lr"]), beta1=group["betas"][0], beta2=group["betas"][1],
                                  eps=group["eps"], weight_decay=group.get("weight_decay", 0.0),
                                  step=int(state["step"]))
                found[id(p)] = (state["exp_avg"], state["exp_avg_sq"], hyper)
    return found
