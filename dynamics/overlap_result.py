"""`OverlapResult`: what `dynamics.overlap` measured, per tensor and aggregated, with its JSON and HDF5.

JSON (`dynamics.overlap/1`): counters and every registered overlap metric per tensor, per module kind,
per layer and for the model (counters summed, so aggregates are element-weighted). HDF5: the same JSON,
the row and column profiles of every 2-D tensor's consensus map, and with `save_consensus` the maps
themselves as vote counts (C = votes / runs).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from functools import reduce
from pathlib import Path

import numpy as np

from dynamics.documents import (
    OVERLAP_SCHEMA,
    atomic_path,
    check_schema,
    finite_json,
    read_json_document,
    write_json_document,
)
from dynamics.metrics import overlap_metrics
from dynamics.naming import MODULE_KINDS
from dynamics.overlap_counts import OverlapCounts


@dataclass(frozen=True)
class OverlapRecord:
    """One tensor's counters. row_profile[i] = ρ_i = (1/n) Σ_j C_ij and col_profile[j] = κ_j = (1/m) Σ_i C_ij
    of the consensus map C = (1/R) Σ_r M_r (2-D tensors only; empty after `from_json`, kept in HDF5)."""

    name: str
    layer: int | None
    module_kind: str
    shape: tuple[int, ...]
    counts: OverlapCounts
    row_profile: tuple[float, ...] = ()
    col_profile: tuple[float, ...] = ()

    def to_row(self) -> dict:
        return {"name": self.name, "layer": self.layer, "module_kind": self.module_kind,
                "shape": list(self.shape), **_counts_row(self.counts)}


@dataclass(frozen=True)
class OverlapResult:
    """Cross-run consistency of R ≥ 2 runs' update masks against one base.

    base, runs: paths as given; rule: the change rule's name (`dynamics.masks.rule_name`);
    not_in_all_runs: tensor names left out because some run does not pair them;
    consensus: tensor name → uint8 vote counts Σ_r M_r (only with `save_consensus`).
    """

    base: str
    runs: list[str]
    rule: str
    records: list[OverlapRecord]
    not_in_all_runs: list[str] = field(default_factory=list)
    consensus: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self) -> OverlapCounts:
        return _total(self.records, len(self.runs))

    def by_module_kind(self) -> dict[str, OverlapCounts]:
        groups: dict[str, list[OverlapRecord]] = defaultdict(list)
        for r in self.records:
            groups[r.module_kind].append(r)
        return {k: _total(groups[k], len(self.runs)) for k in MODULE_KINDS if k in groups}

    def by_layer(self) -> dict[int, OverlapCounts]:
        groups: dict[int, list[OverlapRecord]] = defaultdict(list)
        for r in self.records:
            if r.layer is not None:
                groups[r.layer].append(r)
        return {layer: _total(groups[layer], len(self.runs)) for layer in sorted(groups)}

    def to_json(self) -> dict:
        """The `dynamics.overlap/1` document."""
        return {
            "schema": OVERLAP_SCHEMA, "base": self.base, "runs": list(self.runs), "rule": self.rule,
            "summary": {"tensors": len(self.records), **_counts_row(self.summary())},
            "by_module_kind": {k: _counts_row(c) for k, c in self.by_module_kind().items()},
            "by_layer": {str(k): _counts_row(c) for k, c in self.by_layer().items()},
            "tensors": [r.to_row() for r in self.records],
            "not_in_all_runs": list(self.not_in_all_runs),
        }

    @staticmethod
    def from_json(doc: dict) -> OverlapResult:
        """`to_json` read back (profiles and consensus maps live in HDF5 and come back empty)."""
        check_schema(doc, OVERLAP_SCHEMA)
        records = [OverlapRecord(row["name"], row["layer"], row["module_kind"], tuple(row["shape"]), _counts_of(row))
                   for row in doc["tensors"]]
        return OverlapResult(doc["base"], list(doc["runs"]), doc["rule"], records, list(doc["not_in_all_runs"]))

    @staticmethod
    def read_json(path: str | Path) -> OverlapResult:
        return OverlapResult.from_json(read_json_document(path, OVERLAP_SCHEMA))

    def write_json(self, path: str | Path) -> None:
        write_json_document(self.to_json(), path)

    def write_h5(self, path: str | Path) -> None:
        """`/overlap_json` (the JSON document), `/row_profile/<name>` and `/col_profile/<name>` (float64),
        and `/consensus/<name>` (uint8 votes, attrs `runs` and `shape`) when the maps were kept."""
        import h5py  # lazily: `import dynamics` should not pay for it

        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            f.attrs["schema"] = OVERLAP_SCHEMA
            f.attrs["runs"] = len(self.runs)
            f.create_dataset("overlap_json", data=json.dumps(finite_json(self.to_json())))
            rows, cols, maps = f.create_group("row_profile"), f.create_group("col_profile"), f.create_group("consensus")
            for r in self.records:
                if r.row_profile:
                    rows.create_dataset(r.name, data=np.array(r.row_profile, dtype=np.float64))
                    cols.create_dataset(r.name, data=np.array(r.col_profile, dtype=np.float64))
                if r.name in self.consensus:
                    ds = maps.create_dataset(r.name, data=self.consensus[r.name], compression="gzip")
                    ds.attrs["runs"] = len(self.runs)
                    ds.attrs["shape"] = list(r.shape)


def _total(records: list[OverlapRecord], runs: int) -> OverlapCounts:
    return reduce(lambda total, r: total + r.counts, records, OverlapCounts.zero(runs))


def _counts_row(c: OverlapCounts) -> dict:
    counters = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(c).items()}
    return {**counters, **overlap_metrics(c)}


def _counts_of(row: dict) -> OverlapCounts:
    return OverlapCounts(row["numel"], tuple(row["updated"]), tuple(row["intersections"]),
                         row["updated_by_all"], row["updated_by_none"])
