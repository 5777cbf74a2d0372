"""Write a `DiffResult` as JSON and HDF5, atomically (`dynamics.documents.atomic_path`)."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dynamics.documents import DIFF_SCHEMA, atomic_path, finite_json, write_json_document
from dynamics.element_stats import (
    ABS_TOLERANCES,
    REL_EPSILON,
    REL_TOLERANCES,
    SIGN_CROSSING_LABEL,
    ULP_BUCKETS,
    ElementStats,
    ulp_bucket_labels,
)
from dynamics.geometry import GeometryStats
from dynamics.metrics import derived_metrics, metrics_needing
from dynamics.result import SINGULAR_VALUE_FIELDS, DiffResult, TensorRecord

if TYPE_CHECKING:
    import h5py


def write_json(result: DiffResult, path: str | Path) -> None:
    """The `dynamics.diff/1` document of `result` (see `write_json_document`)."""
    write_json_document(result.to_json(), path)


MASK_BIT_ORDER = ("row-major flags of the tensor, 8 per byte, most significant bit first, zero-padded "
                  "(numpy.unpackbits(data, count=prod(shape)).reshape(shape))")


def write_h5(result: DiffResult, path: str | Path) -> None:
    """HDF5 that h5py and pandas read without this package; every name is a UTF-8 string.

    /tensors: one entry per compared tensor (the JSON rows' order): `name`, `module_kind`, `dtype`
    (strings), `shape` (variable-length int64), `layer` (float64, NaN = no layer, as JSON null), every
    `ElementStats` counter (int64; the counters that can be null — rows, cols, hidden_by_* — float64
    with NaN), `ulp_histogram` (n × 33, attrs `bucket_labels`, `bucket_upper_edges` = 2^j; sign crossings
    are the separate `sign_crossings`), `within_abs` / `within_rel` (attrs `tau`, and `epsilon` for the
    relative scale max(|W0|, ε)), and the registered element metrics (float64). /summary: the same
    columns for the whole model. /geometry (after the matrix pass): one entry per measured matrix,
    `name` plus every `GeometryStats` scalar (None → NaN) and its per-p / per-r dicts as n × c
    datasets (attr `columns`). /singular_values/<tensor>/{a,b,delta}; /masks/<tensor> with attrs
    `shape` and `bit_order` (MASK_BIT_ORDER); /diff_json: the full JSON document.
    """
    import h5py  # only when HDF5 is asked for: it costs ~0.3 s of every `dynamics diff` start

    strings = h5py.string_dtype()  # variable-length UTF-8
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["schema"] = DIFF_SCHEMA
        f.attrs["a"] = result.a.path
        f.attrs["b"] = result.b.path
        f.attrs["device"] = result.device
        f.create_dataset("diff_json", data=json.dumps(finite_json(result.to_json())), dtype=strings)
        tensors = f.create_group("tensors")
        records = result.records
        for column in ("name", "module_kind", "dtype"):
            tensors.create_dataset(column, data=[getattr(r, column) for r in records], dtype=strings)
        tensors.create_dataset("layer", data=_nullable([r.layer for r in records]))
        shapes = tensors.create_dataset("shape", (len(records),), dtype=h5py.vlen_dtype(np.int64))
        for i, r in enumerate(records):
            shapes[i] = np.array(r.shape, dtype=np.int64)
        _write_rows(tensors, [r.stats for r in records])
        _write_rows(f.create_group("summary"), [result.summary()])
        _write_geometry(f, [r for r in records if r.geometry is not None], strings)
        singular_values = f.create_group("singular_values")
        for record in records:
            if record.geometry is not None:
                group = singular_values.create_group(record.name)
                for side in ("a", "b", "delta"):
                    group.create_dataset(side, data=np.array(getattr(record.geometry, f"singular_values_{side}")))
        masks = f.create_group("masks")
        masks.attrs["bit_order"] = MASK_BIT_ORDER
        for record in records:
            if record.name in result.packed_masks:
                ds = masks.create_dataset(record.name, data=result.packed_masks[record.name], compression="gzip")
                ds.attrs["shape"] = list(record.shape)
                ds.attrs["bit_order"] = MASK_BIT_ORDER


def _nullable(values: list) -> np.ndarray:
    """float64 column with NaN where the value is None (JSON null); integers below 2^53 stay exact."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _write_rows(group: h5py.Group, rows: list[ElementStats]) -> None:
    for f in fields(ElementStats):
        values = [getattr(s, f.name) for s in rows]
        if f.name in ("ulp_histogram", "within_abs", "within_rel"):
            group.create_dataset(f.name, data=np.array(values, dtype=np.int64).reshape(len(rows), -1))
        elif f.type == "float":
            group.create_dataset(f.name, data=np.array(values, dtype=np.float64))
        elif "None" in str(f.type):
            group.create_dataset(f.name, data=_nullable(values))
        else:
            group.create_dataset(f.name, data=np.array(values, dtype=np.int64))
    group["ulp_histogram"].attrs["bucket_labels"] = ulp_bucket_labels()
    group["ulp_histogram"].attrs["bucket_upper_edges"] = np.array([2**j for j in range(ULP_BUCKETS)], dtype=np.int64)
    group["ulp_histogram"].attrs["sign_crossings"] = (f"'{SIGN_CROSSING_LABEL}' (W0·W1 < 0, neither ±0) is the "
                                                      "sign_crossings column, not a bucket here")
    group["within_abs"].attrs["tau"] = np.array(ABS_TOLERANCES)
    group["within_rel"].attrs["tau"] = np.array(REL_TOLERANCES)
    group["within_rel"].attrs["epsilon"] = REL_EPSILON
    derived = [derived_metrics(s) for s in rows]
    for name in metrics_needing("element"):
        values = [d[name] for d in derived]
        if all(v is None or isinstance(v, float) for v in values):
            group.create_dataset(name, data=np.array([np.nan if v is None else v for v in values], dtype=np.float64))


def _write_geometry(f: h5py.File, records: list[TensorRecord], strings) -> None:
    """/geometry: `name` and one column per `GeometryStats` field of the measured matrices."""
    if not records:
        return
    group = f.create_group("geometry")
    group.create_dataset("name", data=[r.name for r in records], dtype=strings)
    rows = [asdict(r.geometry) for r in records]
    for field in fields(GeometryStats):
        if field.name in SINGULAR_VALUE_FIELDS:
            continue
        values = [row[field.name] for row in rows]
        if isinstance(values[0], dict):
            columns = list(dict.fromkeys(key for v in values for key in v))
            data = np.array([[np.nan if v.get(c) is None else v[c] for c in columns] for v in values], dtype=np.float64)
            group.create_dataset(field.name, data=data.reshape(len(values), len(columns)))
            group[field.name].attrs["columns"] = columns
        elif isinstance(values[0], bool):
            group.create_dataset(field.name, data=np.array(values, dtype=bool))
        elif all(type(v) is int for v in values):
            group.create_dataset(field.name, data=np.array(values, dtype=np.int64))
        else:
            group.create_dataset(field.name, data=_nullable(values))
