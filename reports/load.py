"""Report input: a `DiffResult` or its `dynamics.diff/1` JSON document, as one plain dict; the
series, KL, Fisher and behavior documents other commands write, each checked for its schema.

Reports render; they never define a metric. Where a report needs a value for a group the
document does not aggregate (a layer × module-kind cell), it sums the rows' `ElementStats`
counters and calls the registered metrics of `dynamics.metrics`, exactly as `DiffResult` does.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from dynamics.documents import finite_json, read_json_document
from dynamics.element_stats import ElementStats
from dynamics.errors import DynamicsError
from dynamics.metrics import MetricValue, derived_metrics
from dynamics.result import SCHEMA, DiffResult

FISHER_SCHEMA = "dynamics.fisher/1"  # probes.fisher.SCHEMA, kept here so reports need not import torch


class ReportError(DynamicsError):
    """A report's input cannot be read (message names the file)."""


def load_diff_doc(source: DiffResult | dict | str | Path) -> dict:
    """The `dynamics.diff/1` document of `source`: a `DiffResult`, an already loaded dict, or a
    path to the JSON file `dynamics diff --json` wrote. NaN/Inf floats become None, as in the file.

    >>> doc = load_diff_doc("demo-out/diff-base-vs-rl.json")
    >>> doc["summary"]["bitwise_sparsity"]
    """
    return load_document(source.to_json() if isinstance(source, DiffResult) else source, SCHEMA)


def load_document(source: dict | str | Path, schema: str) -> dict:
    """A report input of `schema` (`dynamics.series/1`, `dynamics.kl/1`, `dynamics.fisher/1`,
    `dynamics.behavior/1`, …): a loaded dict or the path of its JSON file, NaN/Inf as None."""
    if not isinstance(source, dict):
        return read_json_document(source, schema, ReportError)
    if source.get("schema") != schema:
        raise ReportError(f"document: expected a {schema} document, found {source.get('schema')!r}")
    return finite_json(source)


_TUPLE_FIELDS = ("ulp_histogram", "within_abs", "within_rel")


def stats_of(row: dict) -> ElementStats:
    """The `ElementStats` counters stored in a per-tensor (or aggregate) row of the document."""
    values = {}
    for f in fields(ElementStats):
        v = row[f.name]
        values[f.name] = tuple(v) if f.name in _TUPLE_FIELDS else v
    return ElementStats(**values)


def pooled_metrics(rows: list[dict]) -> dict[str, MetricValue]:
    """Registered element metrics of the summed counters of `rows` (element-weighted, like the
    document's own `by_layer` / `by_module_kind` aggregates)."""
    total = ElementStats.zero()
    for row in rows:
        total = total + stats_of(row)
    return derived_metrics(total)
