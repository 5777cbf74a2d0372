"""Write a `DiffResult` as JSON and HDF5, atomically (`dynamics.documents.atomic_path`)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamics.documents import DIFF_SCHEMA, atomic_path, finite_json, write_json_document
from dynamics.element_stats import ElementStats
from dynamics.metrics import derived_metrics, metrics_needing
from dynamics.result import DiffResult

if TYPE_CHECKING:
    import h5py

NOT_APPLICABLE_INT = -1  # HDF5 stand-in for None in integer columns (e.g. rows of a 1-D tensor)


def write_json(result: DiffResult, path: str | Path) -> None:
    """The `dynamics.diff/1` document of `result` (see `write_json_document`)."""
    write_json_document(result.to_json(), path)


def write_h5(result: DiffResult, path: str | Path) -> None:
    """HDF5 with one dataset per column of the per-tensor rows (`/tensors/<field>`), the histogram
    and tolerance counts as 2-D datasets, the model summary in `/summary`, the full JSON document
    in `/diff_json`, top-k singular values of W0, W1 and Δ in `/singular_values/<tensor name>/{a,b,delta}`
    after the matrix pass, and bit-packed update masks in `/masks/<tensor name>` when present.
    Integer None → -1, float None → NaN."""
    import h5py  # only when HDF5 is asked for: it costs ~0.3 s of every `dynamics diff` start

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema"] = DIFF_SCHEMA
        f.attrs["a"] = result.a.path
        f.attrs["b"] = result.b.path
        f.attrs["device"] = result.device
        f.create_dataset("diff_json", data=json.dumps(finite_json(result.to_json())))
        _write_rows(f.create_group("tensors"), [r.stats for r in result.records])
        f["tensors"].create_dataset("name", data=np.array([r.name for r in result.records], dtype=object),
                                    dtype=h5py.string_dtype())
        f["tensors"].create_dataset("layer", data=np.array(
            [NOT_APPLICABLE_INT if r.layer is None else r.layer for r in result.records], dtype=np.int64))
        f["tensors"].create_dataset("module_kind", data=np.array([r.module_kind for r in result.records], dtype=object),
                                    dtype=h5py.string_dtype())
        _write_rows(f.create_group("summary"), [result.summary()])
        singular_values = f.create_group("singular_values")
        for record in result.records:
            if record.geometry is not None:
                group = singular_values.create_group(record.name)
                for side in ("a", "b", "delta"):
                    group.create_dataset(side, data=np.array(getattr(record.geometry, f"singular_values_{side}")))
        masks = f.create_group("masks")
        for record in result.records:
            if record.name in result.packed_masks:
                ds = masks.create_dataset(record.name, data=result.packed_masks[record.name], compression="gzip")
                ds.attrs["shape"] = list(record.shape)


def _write_rows(group: h5py.Group, rows: list[ElementStats]) -> None:
    for f in fields(ElementStats):
        values = [getattr(s, f.name) for s in rows]
        if f.name in ("ulp_histogram", "within_abs", "within_rel"):
            group.create_dataset(f.name, data=np.array(values, dtype=np.int64).reshape(len(rows), -1))
        elif f.type == "float":
            group.create_dataset(f.name, data=np.array(values, dtype=np.float64))
        else:
            group.create_dataset(f.name, data=np.array(
                [NOT_APPLICABLE_INT if v is None else v for v in values], dtype=np.int64))
    derived = [derived_metrics(s) for s in rows]
    for name in metrics_needing("element"):
        values = [d[name] for d in derived]
        if all(v is None or isinstance(v, float) for v in values):
            group.create_dataset(name, data=np.array([np.nan if v is None else v for v in values], dtype=np.float64))
