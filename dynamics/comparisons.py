"""Several diffs in one streaming pass, every stored tensor read once (`run_comparisons`).

A `Comparison` is an opened pair of checkpoints (`dynamics.api.open_pair`). The pass goes tensor
name by tensor name; within a name, comparison by comparison in the order given. A tensor that
several comparisons share is read once: the same bytes of the same file (`Checkpoint.locations`),
or the same name of the same `Checkpoint` object; it is kept from its first use to its last. For a
series (step k against the base and against step k − 1, k = 1..N, in that order) that holds the
base's, the previous step's and the current step's tensor of one name: memory is bounded by a few
tensors whatever N, and each checkpoint file is read once.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from dynamics.checkpoints import Checkpoint
from dynamics.element_stats import ElementStats
from dynamics.errors import CheckpointError
from dynamics.geometry import GeometryStats, geometry_stats_batched, skip_reason
from dynamics.geometry_options import GeometryOptions
from dynamics.kernels import element_stats
from dynamics.masks import pack_mask, update_mask
from dynamics.naming import layer_index, module_kind
from dynamics.pairing import TensorPair, Unpaired
from dynamics.pipeline import Load, stream_tensors
from dynamics.result import CheckpointSide, DiffResult, TensorRecord

# Same-shaped matrices held for one batched SVD call, per shape (float32 copies of that size are made).
PENDING_GEOMETRY_ELEMENTS = 1 << 26


@dataclass(frozen=True)
class Comparison:
    """Checkpoint B (tuned) against A (base): the pairs to compare and what did not pair."""

    a: Checkpoint
    b: Checkpoint
    pairs: list[TensorPair]
    unpaired: Unpaired


def run_comparisons(comparisons: Sequence[Comparison], device: torch.device, *,
                    geometry: GeometryOptions | None = None, save_masks: bool = False,
                    progress: bool = False, strict: bool = False) -> list[DiffResult]:
    """One `DiffResult` per comparison, from one pass over the tensors (module docstring). `strict`: the
    first tensor holding NaN/Inf on either side is a CheckpointError naming its file and tensor.

    Each result's `seconds` is the whole pass; its `bytes_read` the bytes of the pairs it compared."""
    jobs = _jobs(comparisons)
    loads: list[Load] = []
    position: dict[Hashable, int] = {}
    last_use: dict[Hashable, int] = {}
    for index, job in enumerate(jobs):
        for key, load in zip(job.keys, job.loads):
            if key not in position:
                position[key] = len(loads)
                loads.append(load)
            last_use[key] = index
    key_at = list(position)
    recorders = [_Recorder(geometry, save_masks, c if strict else None) for c in comparisons]
    start = time.perf_counter()
    bar = tqdm(total=sum(load.info.nbytes for load in loads), unit="B", unit_scale=True, disable=not progress,
               desc="diff")
    stream = stream_tensors(loads, device)
    held: dict[Hashable, torch.Tensor] = {}
    try:
        with bar:
            loaded = 0
            for index, job in enumerate(jobs):
                while loaded <= max(position[key] for key in job.keys):
                    held[key_at[loaded]] = next(stream)
                    bar.update(loads[loaded].info.nbytes)
                    loaded += 1
                ta, tb = (held[key].to(job.pair.compare_dtype) for key in job.keys)
                recorders[job.comparison].add(job.pair, ta, tb)
                for key in set(job.keys):
                    if last_use[key] == index:
                        del held[key]
    finally:
        stream.close()
    seconds = time.perf_counter() - start
    return [rec.finish(c, device, seconds) for rec, c in zip(recorders, comparisons)]


@dataclass(frozen=True)
class _Job:
    comparison: int
    pair: TensorPair
    keys: tuple[Hashable, Hashable]
    loads: tuple[Load, Load]


def _jobs(comparisons: Sequence[Comparison]) -> list[_Job]:
    """Every pair of every comparison, grouped by tensor name (in order of first appearance), each
    group in comparison order; keys say which loads are the same bytes."""
    by_name: dict[str, list[_Job]] = defaultdict(list)
    for index, c in enumerate(comparisons):
        for pair in c.pairs:
            loads = (Load(c.a, pair.name, pair.a), Load(c.b, pair.name, pair.b))
            by_name[pair.name].append(_Job(index, pair, (_source(loads[0]), _source(loads[1])), loads))
    return [job for group in by_name.values() for job in group]


def _source(load: Load) -> Hashable:
    """What identifies a stored tensor: its bytes in a file when stored raw, else (checkpoint, name)."""
    location = load.ckpt.locations.get(load.name)
    if location is not None:
        path, offset, nbytes = location
        return ("file", str(path.resolve()), offset, nbytes)
    return ("read", id(load.ckpt), load.name)


class _Recorder:
    """The records, masks and pending matrix pass of one comparison, built pair by pair."""

    def __init__(self, geometry: GeometryOptions | None, save_masks: bool, strict: Comparison | None = None):
        self.geometry, self.save_masks, self.strict = geometry, save_masks, strict
        self.records: list[TensorRecord] = []
        self.masks: dict = {}
        self.geometry_skipped: list[dict] = []
        self.bytes_read = 0
        self.matrices = _MatrixBatches(geometry)

    def add(self, pair: TensorPair, a: torch.Tensor, b: torch.Tensor) -> None:
        stats = element_stats(a, b)
        if self.strict is not None:
            _raise_if_nonfinite(self.strict, pair.name, stats)
        if self.geometry is not None:
            reason = skip_reason(pair.a.shape, pair.compare_dtype)
            if reason is None and stats.finite_pairs < stats.numel:
                reason = "NaN/Inf values"
            if reason is None:
                self.matrices.add(len(self.records), a, b)
            else:
                self.geometry_skipped.append({"name": pair.name, "reason": reason})
        self.records.append(TensorRecord(
            name=pair.name, layer=layer_index(pair.name), module_kind=module_kind(pair.name),
            shape=pair.a.shape, dtype=str(pair.compare_dtype).removeprefix("torch."), stats=stats,
        ))
        if self.save_masks:
            self.masks[pair.name] = pack_mask(update_mask(a, b))
        self.bytes_read += pair.nbytes

    def finish(self, comparison: Comparison, device: torch.device, seconds: float) -> DiffResult:
        records = list(self.records)
        for index, matrix in self.matrices.finish().items():
            records[index] = replace(records[index], geometry=matrix)
        return DiffResult(
            a=_side(comparison.a), b=_side(comparison.b), records=records, unpaired=comparison.unpaired,
            device=device.type, seconds=seconds, bytes_read=self.bytes_read, packed_masks=self.masks,
            geometry_skipped=self.geometry_skipped,
        )


def _raise_if_nonfinite(comparison: Comparison, name: str, stats: ElementStats) -> None:
    """CheckpointError naming the file (A's first) and tensor when either side holds NaN/Inf."""
    for ckpt, nan, inf in ((comparison.a, stats.nan_a, stats.inf_a), (comparison.b, stats.nan_b, stats.inf_b)):
        if nan or inf:
            location = ckpt.locations.get(name)
            where = location[0] if location is not None else ckpt.path
            raise CheckpointError(f"{where}: tensor {name}: {nan} NaN and {inf} Inf values (--strict)")


class _MatrixBatches:
    """Pending 2-D pairs grouped by shape; a group goes through `geometry_stats_batched` (one batched
    SVD) when it holds PENDING_GEOMETRY_ELEMENTS elements, the rest at `finish`. Results by record index."""

    def __init__(self, options: GeometryOptions | None):
        self.options = options
        self.pending: dict[tuple[int, ...], list[tuple[int, torch.Tensor, torch.Tensor]]] = defaultdict(list)
        self.done: dict[int, GeometryStats] = {}

    def add(self, index: int, a: torch.Tensor, b: torch.Tensor) -> None:
        group = self.pending[tuple(a.shape)]
        group.append((index, a, b))
        if len(group) * a.numel() >= PENDING_GEOMETRY_ELEMENTS:
            self._run(tuple(a.shape))

    def _run(self, shape: tuple[int, ...]) -> None:
        group = self.pending.pop(shape)
        stats = geometry_stats_batched([(a, b, None) for _, a, b in group], k=self.options.k, exact=self.options.exact)
        self.done.update((index, s) for (index, _, _), s in zip(group, stats))

    def finish(self) -> dict[int, GeometryStats]:
        for shape in list(self.pending):
            self._run(shape)
        return self.done


def _side(ckpt: Checkpoint) -> CheckpointSide:
    return CheckpointSide(path=str(ckpt.path), format=ckpt.format, notes=list(ckpt.notes), tied=dict(ckpt.tied))
