"""Plain-data results of a diff: per-tensor records, aggregates, and their JSON form."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import reduce

from dynamics.element_stats import ABS_TOLERANCES, REL_TOLERANCES, ElementStats, ulp_bucket_labels
from dynamics.metrics import derived_metrics
from dynamics.naming import MODULE_KINDS
from dynamics.pairing import Unpaired

SCHEMA = "dynamics.diff/1"


@dataclass(frozen=True)
class CheckpointSide:
    """What was opened for one side of the diff."""

    path: str
    format: str
    notes: list[str]
    tied: dict[str, str]


@dataclass(frozen=True)
class TensorRecord:
    """One compared tensor: identity plus its elementwise counters."""

    name: str
    layer: int | None
    module_kind: str
    shape: tuple[int, ...]
    dtype: str
    stats: ElementStats

    def to_row(self) -> dict:
        """Flat JSON row: identity, raw counters, derived metrics."""
        return {
            "name": self.name, "layer": self.layer, "module_kind": self.module_kind,
            "shape": list(self.shape), "dtype": self.dtype,
            **asdict(self.stats), **derived_metrics(self.stats),
        }


def aggregate(records: list[TensorRecord]) -> ElementStats:
    """Element-weighted aggregate: field-wise sum of the records' counters."""
    return reduce(lambda total, r: total + r.stats, records, ElementStats.zero())


@dataclass(frozen=True)
class DiffResult:
    """Everything `dynamics diff` computed; the CLI serialises exactly this object.

    Aggregates are recomputed from `records`, so they never disagree with the rows.
    `masks` holds bit-packed update masks (numpy uint8, `np.packbits` of the row-major
    changed flags) per tensor name, only when asked for.
    """

    a: CheckpointSide
    b: CheckpointSide
    records: list[TensorRecord]
    unpaired: Unpaired
    device: str
    seconds: float
    bytes_read: int
    masks: dict = field(default_factory=dict)

    def summary(self) -> ElementStats:
        return aggregate(self.records)

    def by_layer(self) -> dict[int, ElementStats]:
        """Per transformer block; tensors outside blocks are left out (see `by_module_kind`)."""
        groups: dict[int, list[TensorRecord]] = defaultdict(list)
        for r in self.records:
            if r.layer is not None:
                groups[r.layer].append(r)
        return {layer: aggregate(groups[layer]) for layer in sorted(groups)}

    def by_module_kind(self) -> dict[str, ElementStats]:
        groups: dict[str, list[TensorRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.module_kind].append(r)
        return {kind: aggregate(groups[kind]) for kind in MODULE_KINDS if kind in groups}

    def by_dtype(self) -> dict[str, ElementStats]:
        """Per compared dtype: ULP distances are only comparable within one dtype."""
        groups: dict[str, list[TensorRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.dtype].append(r)
        return {dtype: aggregate(rs) for dtype, rs in sorted(groups.items())}

    def to_json(self) -> dict:
        """The `dynamics.diff/1` JSON document."""
        summary = self.summary()
        return {
            "schema": SCHEMA,
            "a": asdict(self.a),
            "b": asdict(self.b),
            "device": self.device,
            "seconds": self.seconds,
            "bytes_read": self.bytes_read,
            "constants": {
                "abs_tolerances": list(ABS_TOLERANCES),
                "rel_tolerances": list(REL_TOLERANCES),
                "ulp_bucket_labels": ulp_bucket_labels(),
            },
            "summary": {"tensors": len(self.records), **_stats_row(summary)},
            "by_layer": {str(k): _stats_row(v) for k, v in self.by_layer().items()},
            "by_module_kind": {k: _stats_row(v) for k, v in self.by_module_kind().items()},
            "by_dtype": {k: _stats_row(v) for k, v in self.by_dtype().items()},
            "tensors": [r.to_row() for r in self.records],
            "unpaired": asdict(self.unpaired),
        }


def _stats_row(stats: ElementStats) -> dict:
    return {**asdict(stats), **derived_metrics(stats)}
