"""Every JSON document's schema id, and the one place JSON / JSONL files are read and written.

Writes are atomic (a temporary file beside the target, renamed over it only on success); NaN/Inf
floats become null so files are strict JSON; a read checks the schema and names the file on error.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from dynamics.errors import DynamicsError, OutputError

DIFF_SCHEMA = "dynamics.diff/1"
SERIES_SCHEMA = "dynamics.series/1"
RUN_SCHEMA = "dynamics.run/1"
LAB_SCHEMA = "dynamics.lab/1"
KL_SCHEMA = "dynamics.kl/1"
FISHER_SCHEMA = "dynamics.fisher/1"
BEHAVIOR_SCHEMA = "dynamics.behavior/1"
OVERLAP_SCHEMA = "dynamics.overlap/1"
LORA_EXTRACTION_SCHEMA = "dynamics.lora-extraction/1"
PAPER_METRICS_SCHEMA = "dynamics.paper-metrics/1"
OPTIMIZER_SCHEMA = "dynamics.optimizer/1"
STYLE_SCHEMA = "dynamics.style/1"


def check_output(path: str | Path, folder: bool = False) -> None:
    """Raise OutputError naming `path` unless a file (or, with `folder`, a folder) can be written there.

    Writable means: `path` is not an existing folder (a file) or is not an existing file (a folder), and
    its nearest existing ancestor folder grants write access (missing folders are created on writing).
    Callers check before any work, so a bad location costs one line, not a finished diff.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise OutputError(f"{path}: cannot write: {'not a folder' if folder else 'is a folder'}")
    ancestor = path if folder and path.exists() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{path}: cannot write: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write: no write permission in {ancestor}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.
    An OSError creating the folder, writing or renaming becomes one OutputError naming `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def finite_json(value):
    """`value` with NaN/Inf floats replaced by None, recursively (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def write_json_document(doc: dict, path: str | Path) -> None:
    """Any JSON document, atomically; NaN/Inf floats become null so the file is strict JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(finite_json(doc), indent=1, allow_nan=False))


def write_jsonl_records(rows: Iterable[dict], path: str | Path, append: bool = False) -> None:
    """One JSON object per line; appended to an existing file with `append`, else written atomically."""
    path = Path(path)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if append and path.exists():
        with path.open("a") as f:
            f.write(text)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_schema(doc: object, schema: str, where: str = "document",
                 error: type[DynamicsError] = DynamicsError) -> None:
    """Raise `error` unless `doc` is a dict whose "schema" is `schema`."""
    found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
    if found != schema:
        raise error(f"{where}: expected a {schema} document, found {found!r}")


def read_json_document(path: str | Path, schema: str, error: type[DynamicsError] = DynamicsError) -> dict:
    """The JSON object in `path`, checked to carry `"schema": schema`; NaN/Inf become None.
    Raises `error` naming the file when it is unreadable, not JSON, or of another schema."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    except json.JSONDecodeError as e:
        raise error(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    check_schema(doc, schema, str(path), error)
    return finite_json(doc)


def jsonl_records(path: str | Path, error: type[DynamicsError]) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) for every non-blank line; an unreadable file or a line that is not JSON
    raises `error` naming the file (and line)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from e
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{path}:{number}: not JSON ({e.msg})") from e
