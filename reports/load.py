"""Report input: a `DiffResult` or its `dynamics.diff/1` JSON document, as one plain dict.

Reports render; they never define a metric. Where a report needs a value for a group the
document does not aggregate (a layer × module-kind cell), it sums the rows' `ElementStats`
counters and calls the registered metrics of `dynamics.metrics`, exactly as `DiffResult` does.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from dynamics.element_stats import ElementStats
from dynamics.errors import DynamicsError
from dynamics.metrics import MetricValue, derived_metrics
from dynamics.outputs import finite_json
from dynamics.result import SCHEMA, DiffResult


class ReportError(DynamicsError):
    """A report's input cannot be read (message names the file)."""


def load_diff_doc(source: DiffResult | dict | str | Path) -> dict:
    """The `dynamics.diff/1` document of `source`: a `DiffResult`, an already loaded dict, or a
    path to the JSON file `dynamics diff --json` wrote. NaN/Inf floats become None, as in the file.

    >>> doc = load_diff_doc("demo-out/diff-base-vs-rl.json")
    >>> doc["summary"]["bitwise_sparsity"]
    """
    if isinstance(source, DiffResult):
        doc = source.to_json()
    elif isinstance(source, dict):
        doc = source
    else:
        path = Path(source)
        try:
            doc = json.loads(path.read_text())
        except OSError as e:
            raise ReportError(f"{path}: cannot read ({e.strerror or e})") from e
        except json.JSONDecodeError as e:
            raise ReportError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
        raise ReportError(f"{source if not isinstance(source, dict) else 'document'}: "
                          f"expected a {SCHEMA} document, found {found!r}")
    return finite_json(doc)


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
