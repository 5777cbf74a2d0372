"""`series`: every checkpoint of a run diffed against the base and against the previous step.

A run folder holds step folders named `checkpoint-N`, `global_step_N` or `step_N` (N = optimizer
steps), directly or nested in a trainer's layout; the base comes from `--base` or from the run's
`run.json` ("base", relative to the run folder). The diffs not in the cache are computed in one
pass (`dynamics.diff_many`) that reads the base once and each step once. Each diff is cached as a
`dynamics.diff/1` JSON file under `OUT/cache/`, named by the step pair and a key of both resolved
paths and the diff options, so a series run again (more steps, or after an interruption) computes
only what the cache lacks, and a cache made for another base or other options is never reused.
The pass writes its diffs when it ends: an interrupted pass leaves the cache as it found it. `OUT/series.json` holds model-level metrics per step
(`dynamics.series/1`), plus KL drift per step when `dynamics.kl/1` files are given, and the training
log's reward, KL, loss, entropy, clip fraction and learning rate per step where the run logged them
(`trainer_state.json` of its latest step folder, `dynamics.training_log`).

>>> result = series("runs/grpo-true-s1", geometry=GeometryOptions(k=8))   # doctest: +SKIP
>>> [s.vs_base["bitwise_sparsity"] for s in result.steps]           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from dynamics.api import diff_many
from dynamics.checkpoints.adam_state import AdamState
from dynamics.documents import (
    DIFF_SCHEMA,
    KL_SCHEMA,
    SERIES_SCHEMA,
    check_schema,
    read_json_document,
    write_json_document,
)
from dynamics.errors import DynamicsError
from dynamics.geometry_options import GeometryOptions
from dynamics.metrics import bitwise_sparsity, derived_metrics
from dynamics.optimizer_analysis import optimizer_analysis
from dynamics.outputs import write_json
from dynamics.result import DiffResult, geometry_means
from dynamics.runs import RunInfo, SeriesError, find_step_checkpoints, read_run_info, resolve_base
from dynamics.training_log import TrainingLog, find_training_log, read_training_log

KL_FIELDS = ("kl_mean_per_token", "kl_median_per_token", "kl_p95_per_token", "kl_reverse_mean_per_token",
             "kl_mean_per_sequence", "tokens", "sequences", "kl_by_position")


@dataclass(frozen=True)
class SeriesStep:
    """One step: model-level metrics against the base and against the previous step (None for the
    first step, whose previous step is the base), KL drift against the base when measured, the
    training log's canonical quantities at that step (None when the run has no log for it), and the
    model-level `dynamics.optimizer/1` summary of previous step → this step with this step's Adam state
    and the next step's flips (None unless asked for and the step has a state)."""

    step: int
    path: str
    vs_base: dict
    vs_previous: dict | None
    kl: dict | None
    log: dict | None = None
    optimizer: dict | None = None


@dataclass(frozen=True)
class Series:
    run_dir: str
    base: str
    run: dict | None  # {"run", "reward", "seed"} from the labels given or run.json
    options: dict     # {"geometry": {"k", "exact"} or None}: what every diff of the series was made with
    kl_source: str | None  # "--kl", the OUT/kl folder, or None
    steps: list[SeriesStep]
    out_dir: str  # where series.json, cache/ and the report go (not part of the document)
    diffs_computed: int  # this call; the others came from the cache
    diffs_cached: int

    def to_json(self) -> dict:
        """The `dynamics.series/1` document."""
        return {"schema": SERIES_SCHEMA, "run_dir": self.run_dir, "base": self.base, "run": self.run,
                "options": self.options, "kl_source": self.kl_source,
                "steps": [asdict(s) for s in self.steps]}

    @staticmethod
    def from_json(doc: dict, out_dir: str | Path = "") -> Series:
        """The series a `dynamics.series/1` document holds (`out_dir` and the counts are not part of it)."""
        check_schema(doc, SERIES_SCHEMA)
        return Series(run_dir=doc["run_dir"], base=doc["base"], run=doc["run"], options=doc["options"],
                      kl_source=doc["kl_source"], steps=[SeriesStep(**step) for step in doc["steps"]],
                      out_dir=str(out_dir), diffs_computed=0, diffs_cached=0)

    @staticmethod
    def read_json(path: str | Path) -> Series:
        """`from_json` of a `series.json`, its folder as `out_dir`; a bad file is one error naming it."""
        return Series.from_json(read_json_document(path, SERIES_SCHEMA, SeriesError), Path(path).parent)


def cache_key(a: Path, b: Path, geometry: GeometryOptions | None, *, component: str | None = None,
              masters: bool = False, adapter_base: Path | None = None) -> str:
    """12 hex digits of SHA-256 over both resolved paths and the diff options that change numbers
    (the weights read, and the base a PEFT adapter step merges onto, enter only when they matter)."""
    identity = {"schema": DIFF_SCHEMA, "a": str(Path(a).resolve()), "b": str(Path(b).resolve()),
                "geometry": None if geometry is None else asdict(geometry)}
    if component is not None or masters:
        identity.update(component=component, masters=masters)
    if adapter_base is not None and (Path(a) / "adapter_config.json").is_file():
        identity["adapter_base"] = str(Path(adapter_base).resolve())
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def model_metrics(result: DiffResult) -> dict:
    """Model-level numbers of a diff, by registered name (`dynamics.metrics`): every element metric of
    the summed counters, `changed` / `numel`, bitwise sparsity per stored dtype, and `geometry` (the
    means over matrices and every registered matrix metric, `result.geometry_means`) when the matrix
    pass ran, else None."""
    summary = result.summary()
    return {
        "changed": summary.changed, "numel": summary.numel, **derived_metrics(summary),
        "bitwise_sparsity_by_dtype": {dtype: bitwise_sparsity(stats) for dtype, stats in result.by_dtype().items()},
        "geometry": geometry_means(result.records),
    }


def kl_summary(path: str | Path) -> dict:
    """The per-token and per-sequence KL numbers of a `dynamics.kl/1` file, and its path."""
    doc = read_json_document(path, KL_SCHEMA, SeriesError)
    return {"source": str(path), **{name: doc.get(name) for name in KL_FIELDS}}


def kl_files(out: Path, given: dict[int, Path] | None, steps: list[int]) -> tuple[dict[int, Path], str | None]:
    """KL files per step and where they came from: `given` (from --kl) when not empty, else the
    `out/kl/step_N.json` files. A file for a step the run does not have is an error."""
    if given:
        files, source = dict(given), "--kl"
    else:
        folder = out / "kl"
        files = {}
        for path in sorted(folder.glob("step_*.json")) if folder.is_dir() else []:
            match = re.fullmatch(r"step_(\d+)\.json", path.name)
            if match:
                files[int(match.group(1))] = path
        source = str(folder) if files else None
    for step, path in files.items():
        if step not in steps:
            raise SeriesError(f"{path}: KL for step {step}, but the run has steps {', '.join(map(str, steps))}")
    return files, source


def series(
    run_dir: str | Path,
    base: str | Path | None = None,
    out: str | Path | None = None,
    *,
    geometry: GeometryOptions | None = None,
    device: str = "auto",
    kl: dict[int, Path] | None = None,
    labels: RunInfo | None = None,
    progress: bool = False,
    component: str | None = None,
    masters: bool = False,
    optimizer: Callable[[Path], AdamState | None] | None = None,
) -> Series:
    """Diff every step of the run in `run_dir` against the base and against the previous step;
    write the diffs to `out/cache/` and `out/series.json` (atomically); return the series.

    Args:
        run_dir: run folder with checkpoint-N / global_step_N / step_N folders (see
            `find_step_checkpoints`).
        base: base checkpoint; default: "base" of `run_dir/run.json`.
        out: output folder, default `run_dir/series`.
        geometry: the matrix pass's options, None for none (part of the cache key).
        device: "auto", "cpu" or "cuda" for the diffs.
        kl: `dynamics.kl/1` files per step; default: `out/kl/step_N.json` where present.
        labels: run label, reward and seed to record; default: from run.json.
        progress: a tqdm bar over the bytes of the pass.
        component, masters: which weights of each step (`dynamics.diff`); part of the cache key.
        optimizer: step folder -> its Adam state (None: none there); when given, every step with a
            state gets `optimizer_analysis` against the previous step (not cached).
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "series"
    base_path = resolve_base(run_dir, base)
    checkpoints = [c for c in find_step_checkpoints(run_dir) if c.path.resolve() != base_path.resolve()]
    if not checkpoints:
        raise SeriesError(f"{run_dir}: the only step folder is the base itself")
    files, kl_source = kl_files(out, kl, [c.step for c in checkpoints])
    kl_by_step = {step: kl_summary(path) for step, path in files.items()}
    info = labels or read_run_info(run_dir)
    log = latest_training_log([c.path for c in checkpoints])

    # Every comparison of the series with its cache file: step k against the base, then against step k − 1.
    wanted = []
    for previous, checkpoint in zip([None, *checkpoints[:-1]], checkpoints):
        wanted.append((base_path, checkpoint.path, f"step-{checkpoint.step}-vs-base"))
        if previous is not None:
            wanted.append((previous.path, checkpoint.path, f"step-{checkpoint.step}-vs-step-{previous.step}"))
    cache_files: dict[str, Path] = {}
    results: dict[Path, DiffResult] = {}
    for a, b, name in wanted:
        key = cache_key(a, b, geometry, component=component, masters=masters, adapter_base=base_path)
        cache_files[name] = path = out / "cache" / f"{name}-{key}.json"
        cached = _read_cache(path)
        if cached is not None:
            results[path] = cached
    missing = [(a, b, cache_files[name]) for a, b, name in wanted if cache_files[name] not in results]
    if missing:
        computed = diff_many([(a, b) for a, b, _ in missing], device=device, geometry=geometry, progress=progress,
                             component=component, masters=masters, adapter_base=base_path)
        for (_, _, path), result in zip(missing, computed):
            write_json(result, path)
            results[path] = result

    def metrics(name: str) -> dict:
        return {**model_metrics(results[cache_files[name]]), "diff": cache_files[name].relative_to(out).as_posix()}

    steps = []
    following = {c.path: n.path for c, n in pairwise(checkpoints)}
    for previous, checkpoint in zip([None, *checkpoints[:-1]], checkpoints):
        vs_previous = None if previous is None else metrics(f"step-{checkpoint.step}-vs-step-{previous.step}")
        logged = log.canonical(checkpoint.step) if log is not None else {}
        adam = optimizer(checkpoint.path) if optimizer is not None else None
        analysis = None if adam is None else optimizer_analysis(
            base_path if previous is None else previous.path, checkpoint.path, adam=adam,
            next_checkpoint=following.get(checkpoint.path), component=component).to_json()["summary"]
        steps.append(SeriesStep(checkpoint.step, str(checkpoint.path), metrics(f"step-{checkpoint.step}-vs-base"),
                                vs_previous, kl_by_step.get(checkpoint.step), logged or None, analysis))
    counts = {"computed": len(missing), "cached": len(wanted) - len(missing)}
    result = Series(
        run_dir=str(run_dir), base=str(base_path),
        run=None if info is None else {"run": info.run, "reward": info.reward, "seed": info.seed},
        options={"geometry": None if geometry is None else asdict(geometry)}, kl_source=kl_source,
        steps=steps, out_dir=str(out), diffs_computed=counts["computed"], diffs_cached=counts["cached"])
    write_json_document(result.to_json(), out / "series.json")
    return result


def latest_training_log(step_folders: list[Path]) -> TrainingLog | None:
    """The `trainer_state.json` of the last step folder that has one (it holds every earlier step's log
    too), None when no step folder has one."""
    for folder in reversed(step_folders):
        found = find_training_log(folder)
        if found is not None:
            return read_training_log(found)
    return None


def _read_cache(path: Path) -> DiffResult | None:
    """A cached diff, or None when absent or unreadable (a cache is recomputed, not trusted)."""
    if not path.is_file():
        return None
    try:
        return DiffResult.from_json(read_json_document(path, DIFF_SCHEMA, SeriesError))
    except (DynamicsError, KeyError, TypeError):
        return None


def parse_step_file(text: str) -> tuple[int, Path]:
    """"STEP=FILE" → (STEP, Path(FILE)), as `--kl 100=kl-100.json` is written."""
    step, sep, file = text.partition("=")
    if not sep or not step.strip().isdigit() or not file:
        raise SeriesError(f"--kl {text}: expected STEP=FILE, e.g. 100=kl-100.json")
    return int(step), Path(file)

