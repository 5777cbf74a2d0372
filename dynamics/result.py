"""Plain-data results of a diff: per-tensor records, aggregates, and their JSON form."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import reduce
from pathlib import Path

import torch

from dynamics.documents import DIFF_SCHEMA, check_schema, read_json_document
from dynamics.element_stats import ABS_TOLERANCES, REL_TOLERANCES, ElementStats, ulp_bucket_labels
from dynamics.errors import MaskError
from dynamics.geometry import GeometryStats
from dynamics.masks import unpack_mask
from dynamics.metrics import derived_metrics, matrix_metrics
from dynamics.naming import MODULE_KINDS
from dynamics.pairing import Unpaired

SCHEMA = DIFF_SCHEMA
# Headline groups of matrices: the papers report the transformer blocks and show embeddings and lm_head
# apart (a vocabulary-wide lm_head can carry most of a model's update energy on its own).
BLOCKS, EMBEDDINGS, LM_HEAD = "transformer blocks", "embeddings", "lm_head"


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
    geometry: GeometryStats | None = None

    def to_row(self) -> dict:
        """Flat JSON row: identity, raw counters, derived metrics, and `geometry` (without the
        singular values, which go to HDF5) when the matrix pass ran."""
        row = {
            "name": self.name, "layer": self.layer, "module_kind": self.module_kind,
            "shape": list(self.shape), "dtype": self.dtype,
            **asdict(self.stats), **derived_metrics(self.stats),
        }
        if self.geometry is not None:
            row["geometry"] = geometry_row(self.geometry)
        return row

    @staticmethod
    def from_row(row: dict) -> TensorRecord:
        """The record a `to_row` row was made from (singular values, kept in HDF5 only, are empty)."""
        geometry = None
        if row.get("geometry") is not None:
            geometry = GeometryStats(**row["geometry"], **{k: () for k in SINGULAR_VALUE_FIELDS})
        return TensorRecord(name=row["name"], layer=row["layer"], module_kind=row["module_kind"],
                            shape=tuple(row["shape"]), dtype=row["dtype"], stats=stats_from_row(row),
                            geometry=geometry)


_TUPLE_FIELDS = ("ulp_histogram", "within_abs", "within_rel")


def stats_from_row(row: dict) -> ElementStats:
    """The `ElementStats` counters stored in a JSON row (per tensor or aggregate)."""
    return ElementStats(**{f.name: tuple(row[f.name]) if f.name in _TUPLE_FIELDS else row[f.name]
                           for f in fields(ElementStats) if f.name in row})


SINGULAR_VALUE_FIELDS = ("singular_values_a", "singular_values_b", "singular_values_delta")


def geometry_row(g: GeometryStats) -> dict:
    """JSON form of `GeometryStats` without the singular-value vectors."""
    return {k: v for k, v in asdict(g).items() if k not in SINGULAR_VALUE_FIELDS}


def geometry_means(records: list[TensorRecord]) -> dict | None:
    """Unweighted mean over matrices of every `GeometryStats` field (None entries skipped), plus every
    registered matrix metric of the group (`dynamics.metrics`, e.g. the Δ-weighted
    `principal_energy_ratio`); None without geometry."""
    rows = [(geometry_row(r.geometry), r.stats.sum_sq_delta) for r in records if r.geometry is not None]
    if not rows:
        return None
    means: dict = {"matrices": len(rows)}
    for key, first in rows[0][0].items():
        if isinstance(first, dict):
            means[key] = {p: _mean([row[key][p] for row, _ in rows if p in row[key]]) for p in first}
        elif not isinstance(first, bool):
            means[key] = _mean([row[key] for row, _ in rows])
    return {**means, **matrix_metrics(records)}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def aggregate(records: list[TensorRecord]) -> ElementStats:
    """Element-weighted aggregate: field-wise sum of the records' counters."""
    return reduce(lambda total, r: total + r.stats, records, ElementStats.zero())


@dataclass(frozen=True)
class DiffResult:
    """Everything `dynamics diff` computed; the CLI serialises exactly this object.

    Aggregates are recomputed from `records`, so they never disagree with the rows.
    `packed_masks` holds bit-packed update masks (numpy uint8, `np.packbits` of the row-major
    changed flags) per tensor name, only when asked for; `mask(name)` / `masks()` unpack them.
    """

    a: CheckpointSide
    b: CheckpointSide
    records: list[TensorRecord]
    unpaired: Unpaired
    device: str
    seconds: float
    bytes_read: int
    packed_masks: dict = field(default_factory=dict)
    geometry_skipped: list[dict] = field(default_factory=list)

    @staticmethod
    def from_json(doc: dict) -> DiffResult:
        """The result a `dynamics.diff/1` document was written from (`to_json` read back; masks and
        singular values live in HDF5 and come back empty). Aggregates are recomputed from the rows."""
        check_schema(doc, DIFF_SCHEMA)
        return DiffResult(
            a=CheckpointSide(**doc["a"]), b=CheckpointSide(**doc["b"]),
            records=[TensorRecord.from_row(row) for row in doc["tensors"]],
            unpaired=Unpaired(**doc["unpaired"]), device=doc["device"], seconds=doc["seconds"],
            bytes_read=doc["bytes_read"], geometry_skipped=list((doc.get("geometry") or {}).get("skipped", [])))

    @staticmethod
    def read_json(path: str | Path) -> DiffResult:
        """`from_json` of the file `dynamics diff --json` wrote; a bad file is one DynamicsError naming it."""
        return DiffResult.from_json(read_json_document(path, DIFF_SCHEMA))

    def mask(self, name: str, tolerance: float | None = None) -> torch.Tensor:
        """Bool tensor shaped like weight `name`, True where the run changed it.

        `tolerance=None`: stored bits differ, unpacked from `packed_masks` (MaskError unless the diff
        kept masks: `diff(..., save_masks=True)`). `tolerance=τ`: |Δ| > τ, which needs the tensors: both
        are read again from the diffed paths (`dynamics.update_masks.changed_masks`).
        """
        if tolerance is not None:
            from dynamics.update_masks import changed_masks

            return next(iter(changed_masks(self.a.path, self.b.path, tolerance, names=[name])))[1]
        record = next((r for r in self.records if r.name == name), None)
        if record is None:
            raise MaskError(f"{self.b.path}: no tensor {name} in this diff")
        if name not in self.packed_masks:
            raise MaskError(f"{self.b.path}: tensor {name}: no update mask kept (diff with save_masks=True)")
        return torch.from_numpy(unpack_mask(self.packed_masks[name], record.shape))

    def masks(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, `mask(name)`) for every tensor whose bitwise mask was kept, in record order; one
        unpacked mask alive at a time if the caller does not keep them."""
        for record in self.records:
            if record.name in self.packed_masks:
                yield record.name, self.mask(record.name)

    def has_geometry(self) -> bool:
        return any(r.geometry is not None for r in self.records)

    def summary(self) -> ElementStats:
        return aggregate(self.records)

    def layer_groups(self) -> dict[int, list[TensorRecord]]:
        """Records per transformer block; tensors outside blocks are left out (see module kinds)."""
        groups: dict[int, list[TensorRecord]] = defaultdict(list)
        for r in self.records:
            if r.layer is not None:
                groups[r.layer].append(r)
        return {layer: groups[layer] for layer in sorted(groups)}

    def module_kind_groups(self) -> dict[str, list[TensorRecord]]:
        groups: dict[str, list[TensorRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.module_kind].append(r)
        return {kind: groups[kind] for kind in MODULE_KINDS if kind in groups}

    def scope_groups(self) -> dict[str, list[TensorRecord]]:
        """Headline scopes, each only when it holds a tensor: BLOCKS (tensors with a layer index, other than
        embeddings and lm_head), EMBEDDINGS (module kind embed) and LM_HEAD."""
        groups = {
            BLOCKS: [r for r in self.records if r.layer is not None and r.module_kind not in ("embed", "lm_head")],
            EMBEDDINGS: [r for r in self.records if r.module_kind == "embed"],
            LM_HEAD: [r for r in self.records if r.module_kind == "lm_head"],
        }
        return {scope: records for scope, records in groups.items() if records}

    def by_layer(self) -> dict[int, ElementStats]:
        return {layer: aggregate(rs) for layer, rs in self.layer_groups().items()}

    def by_module_kind(self) -> dict[str, ElementStats]:
        return {kind: aggregate(rs) for kind, rs in self.module_kind_groups().items()}

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
            "schema": DIFF_SCHEMA,
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
            **self._geometry_json(),
        }

    def _geometry_json(self) -> dict:
        if not any(r.geometry is not None for r in self.records) and not self.geometry_skipped:
            return {}
        return {"geometry": {
            "summary": geometry_means(self.records),
            "by_scope": {k: geometry_means(rs) for k, rs in self.scope_groups().items()},
            "by_layer": {str(k): geometry_means(rs) for k, rs in self.layer_groups().items()},
            "by_module_kind": {k: geometry_means(rs) for k, rs in self.module_kind_groups().items()},
            "skipped": self.geometry_skipped,
        }}


def _stats_row(stats: ElementStats) -> dict:
    return {**asdict(stats), **derived_metrics(stats)}
