"""`series`: every checkpoint of a run diffed against the base and against the previous step.

A run folder holds step folders (`checkpoint-N`, `global_step_N`, `global_stepN`, `iter_NNNNNNN`, `step_N`:
`dynamics.checkpoints.steps`), directly or nested in a trainer's layout; the base comes from `--base` or from the run's
`run.json` ("base", relative to the run folder). Each diff is cached as a `dynamics.diff/1` JSON
file under `OUT/cache/`, named by the step pair and a key of both resolved paths and the diff
options, so an interrupted series resumes where it stopped and a cache made for another base or
other options is never reused. `OUT/series.json` holds model-level metrics per step
(`dynamics.series/1`), plus KL drift per step when `dynamics.kl/1` files are given.

>>> result = series("runs/grpo-true-s1", geometry=True, rank_k=8)   # doctest: +SKIP
>>> [s.vs_base["bitwise_sparsity"] for s in result.steps]           # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dynamics.api import diff
from dynamics.checkpoints.steps import STEP_FOLDER_NAMES, step_of_folder
from dynamics.errors import DynamicsError
from dynamics.outputs import finite_json, write_json, write_json_document
from dynamics.result import SCHEMA as DIFF_SCHEMA

SCHEMA = "dynamics.series/1"
RUN_SCHEMA = "dynamics.run/1"
KL_SCHEMA = "dynamics.kl/1"
SEARCH_DEPTH = 3  # levels below the run folder searched for step folders
KL_FIELDS = ("kl_mean_per_token", "kl_median_per_token", "kl_p95_per_token", "kl_reverse_mean_per_token",
             "kl_mean_per_sequence", "tokens", "sequences")


class SeriesError(DynamicsError):
    """A run folder, its base, or a per-step input cannot be used (message names the path)."""


@dataclass(frozen=True)
class RunInfo:
    """Who a run folder is: label without the seed, reward label, seed, folder, base (None if unknown)."""

    run: str
    reward: str
    seed: int
    path: Path
    base: Path | None


@dataclass(frozen=True)
class StepCheckpoint:
    step: int
    path: Path


@dataclass(frozen=True)
class SeriesStep:
    """One step: model-level metrics against the base and against the previous step (None for the
    first step, whose previous step is the base), and KL drift against the base when measured."""

    step: int
    path: str
    vs_base: dict
    vs_previous: dict | None
    kl: dict | None


@dataclass(frozen=True)
class Series:
    run_dir: str
    base: str
    run: dict | None  # {"run", "reward", "seed"} from the labels given or run.json
    options: dict     # {"geometry", "rank_k"}: what every diff of the series was made with
    kl_source: str | None  # "--kl", the OUT/kl folder, or None
    steps: list[SeriesStep]
    out_dir: str  # where series.json, cache/ and the report go (not part of the document)
    diffs_computed: int  # this call; the others came from the cache
    diffs_cached: int

    def to_json(self) -> dict:
        """The `dynamics.series/1` document."""
        return {"schema": SCHEMA, "run_dir": self.run_dir, "base": self.base, "run": self.run,
                "options": self.options, "kl_source": self.kl_source,
                "steps": [asdict(s) for s in self.steps]}


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
    found = doc.get("schema") if isinstance(doc, dict) else type(doc).__name__
    if found != schema:
        raise error(f"{path}: expected a {schema} document, found {found!r}")
    return finite_json(doc)


def read_run_info(run_dir: str | Path) -> RunInfo | None:
    """`run_dir/run.json` (`dynamics.run/1`) as a RunInfo, base resolved against the run folder;
    None when the folder has no run.json."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    doc = read_json_document(path, RUN_SCHEMA, SeriesError)
    try:
        return RunInfo(run=str(doc["run"]), reward=str(doc["reward"]), seed=int(doc.get("seed", 0)),
                       path=run_dir, base=run_dir / doc["base"] if doc.get("base") else None)
    except (KeyError, TypeError, ValueError) as e:
        raise SeriesError(f"{path}: needs string fields 'run' and 'reward' and an integer 'seed' ({e})") from e


def read_manifest(path: str | Path) -> list[RunInfo]:
    """Runs listed by a manifest: a lab's `manifest.json` (`dynamics.lab/1`) or a hand-written JSON
    or YAML file of the same shape, {"base": B?, "runs": [{"path", "run"?, "reward"?, "seed"?,
    "base"?}]}, paths relative to the manifest's folder. An entry's missing fields come from the
    run folder's run.json; the entry wins where both say something. (In YAML quote `"true"`.)"""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SeriesError(f"{path}: cannot read ({e.strerror or e})") from e
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SeriesError(f"{path}: not YAML ({str(e).splitlines()[0]})") from e
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise SeriesError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
        raise SeriesError(f"{path}: a manifest needs a list under 'runs'")
    root = path.parent
    default_base = root / str(doc["base"]) if doc.get("base") else None
    runs = []
    for number, entry in enumerate(doc["runs"], start=1):
        if not isinstance(entry, dict) or not entry.get("path"):
            raise SeriesError(f"{path}: run {number} needs a 'path'")
        runs.append(_labelled(root / str(entry["path"]), entry, root, default_base, f"{path} (run {number})"))
    return runs


def _labelled(run_dir: Path, entry: dict, root: Path, default_base: Path | None, where: str) -> RunInfo:
    """RunInfo of `run_dir` with `entry`'s labels over those of its run.json (entry paths relative to `root`)."""
    if not run_dir.is_dir():
        raise SeriesError(f"{where}: {run_dir} is not a folder")
    own = read_run_info(run_dir)

    def text(key: str) -> str | None:
        value = entry.get(key, getattr(own, key, None))
        if isinstance(value, bool):  # YAML reads an unquoted `true` as a boolean
            return str(value).lower()
        return None if value is None else str(value)

    run, reward = text("run"), text("reward")
    if run is None or reward is None:
        raise SeriesError(f"{where}: {run_dir} has no run.json; give its 'run' and 'reward' in a manifest")
    try:
        seed = int(entry.get("seed", own.seed if own else 0))
    except (TypeError, ValueError) as e:
        raise SeriesError(f"{where}: seed must be an integer ({e})") from e
    base = root / str(entry["base"]) if entry.get("base") else (own.base if own else None)
    return RunInfo(run=run, reward=reward, seed=seed, path=run_dir, base=base or default_base)


def find_runs(paths: list[str | Path], manifest: str | Path | None = None) -> list[RunInfo]:
    """Runs to compare: each path is a run folder (run.json) or a lab folder (manifest.json: all its
    runs); `manifest` adds its runs and labels folders without run.json (or relabels them). Order
    is kept; a folder named twice counts once, with the manifest's labels."""
    labelled = read_manifest(manifest) if manifest is not None else []
    by_folder = {run.path.resolve(): run for run in labelled}
    runs: dict[Path, RunInfo] = {}
    for raw in paths:
        path = Path(raw)
        if (path / "manifest.json").is_file():
            found = read_manifest(path / "manifest.json")
        elif path.resolve() in by_folder:
            found = [by_folder[path.resolve()]]
        elif (path / "run.json").is_file():
            found = [_labelled(path, {}, path, None, str(path))]
        else:
            raise SeriesError(f"{path}: neither a run folder (run.json) nor a lab folder (manifest.json); "
                              "label it in --manifest")
        for run in found:
            runs.setdefault(run.path.resolve(), by_folder.get(run.path.resolve(), run))
    for run in labelled:
        runs.setdefault(run.path.resolve(), run)
    if not runs:
        raise SeriesError("no runs to compare: give run or lab folders, or --manifest")
    return list(runs.values())


def find_step_checkpoints(run_dir: str | Path) -> list[StepCheckpoint]:
    """Step folders of a run, sorted by step. The shallowest level (down to SEARCH_DEPTH) that has
    any is used, so `run/checkpoint-N` wins over `run/fp32/checkpoint-N`; hidden folders are skipped
    and step folders are not searched inside. Two folders for one step at that level is an error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SeriesError(f"{run_dir}: not a folder")
    level = [run_dir]
    for _ in range(SEARCH_DEPTH):
        found: dict[int, Path] = {}
        below = []
        for folder in level:
            for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
                step = step_of_folder(sub.name)
                if step is None:
                    below.append(sub)
                    continue
                if step in found:
                    raise SeriesError(f"{run_dir}: two folders for step {step} "
                                      f"({found[step].relative_to(run_dir)}, {sub.relative_to(run_dir)})")
                found[step] = sub
        if found:
            return [StepCheckpoint(step, found[step]) for step in sorted(found)]
        level = below
    raise SeriesError(f"{run_dir}: no {STEP_FOLDER_NAMES} folder "
                      f"(searched {SEARCH_DEPTH} levels down)")


def resolve_base(run_dir: str | Path, base: str | Path | None = None) -> Path:
    """`base` when given, else the "base" of `run_dir/run.json` (relative to the run folder)."""
    if base is not None:
        path = Path(base)
    else:
        info = read_run_info(run_dir)
        if info is None or info.base is None:
            raise SeriesError(f"{run_dir}: no base checkpoint: pass --base BASE or put \"base\" in run.json")
        path = Path(os.path.normpath(info.base))
    if not path.exists():
        raise SeriesError(f"{path}: base checkpoint does not exist")
    return path


def cache_key(a: Path, b: Path, geometry: bool, rank_k: int, *, component: str | None = None,
              masters: bool = False, adapter_base: Path | None = None) -> str:
    """12 hex digits of SHA-256 over both resolved paths and the diff options that change numbers
    (the weights read, and the base a PEFT adapter step merges onto, enter only when they matter)."""
    identity = {"schema": DIFF_SCHEMA, "a": str(Path(a).resolve()), "b": str(Path(b).resolve()),
                "geometry": geometry, "rank_k": rank_k if geometry else None}
    if component is not None or masters:
        identity.update(component=component, masters=masters)
    if adapter_base is not None and (Path(a) / "adapter_config.json").is_file():
        identity["adapter_base"] = str(Path(adapter_base).resolve())
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def principal_energy(means: dict | None) -> tuple[float | None, float | None]:
    """(ρ_k, random baseline k²/(m·n)) of geometry means: Δ-energy-weighted when present, else the
    mean over matrices; (None, None) without geometry."""
    if not means:
        return None, None
    if "principal_energy_weighted" in means:
        return means["principal_energy_weighted"], means["principal_energy_baseline_weighted"]
    return means.get("principal_energy"), means.get("principal_energy_baseline")


def model_metrics(doc: dict) -> dict:
    """Model-level numbers of a `dynamics.diff/1` document: bitwise sparsity (overall and per
    stored dtype), tolerance sparsity grids, ‖Δ‖_F, ‖Δ‖_F/‖W0‖_F, the one-ULP share, the share
    hidden by bf16 (float32 pairs), and `geometry` (means over matrices, with
    principal_energy_ratio = ρ_k / baseline) when the matrix pass ran, else None."""
    s = doc["summary"]
    metrics = {
        "bitwise_sparsity": s["bitwise_sparsity"],
        "bitwise_sparsity_by_dtype": {dtype: row["bitwise_sparsity"] for dtype, row in doc["by_dtype"].items()},
        "changed": s["changed"], "numel": s["numel"],
        "abs_tolerance_sparsity": s["abs_tolerance_sparsity"],
        "rel_tolerance_sparsity": s["rel_tolerance_sparsity"],
        "update_norm": s["update_norm"], "relative_update_norm": s["relative_update_norm"],
        "one_ulp_fraction": s["one_ulp_fraction"], "hidden_by_bf16_fraction": s["hidden_by_bf16_fraction"],
        "geometry": None,
    }
    means = (doc.get("geometry") or {}).get("summary")
    if means:
        energy, baseline = principal_energy(means)
        metrics["geometry"] = {
            "matrices": means["matrices"], "k": means["k"],
            "principal_angle_max_deg": means["principal_angle_max_deg"],
            "principal_angle_mean_sin2": means["principal_angle_mean_sin2"],
            "spectrum_drift_mean": means["spectrum_drift_mean"],
            "update_stable_rank": means["update_stable_rank"],
            "principal_energy": energy, "principal_energy_baseline": baseline,
            "principal_energy_ratio": energy / baseline if energy is not None and baseline else None,
        }
    return metrics


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
    geometry: bool = False,
    rank_k: int = 64,
    device: str = "auto",
    kl: dict[int, Path] | None = None,
    labels: RunInfo | None = None,
    progress: bool = False,
    component: str | None = None,
    masters: bool = False,
) -> Series:
    """Diff every step of the run in `run_dir` against the base and against the previous step;
    write the diffs to `out/cache/` and `out/series.json` (atomically); return the series.

    Args:
        run_dir: run folder with checkpoint-N / global_step_N / step_N folders (see
            `find_step_checkpoints`).
        base: base checkpoint; default: "base" of `run_dir/run.json`.
        out: output folder, default `run_dir/series`.
        geometry, rank_k: run the matrix pass at top-`rank_k` subspaces (part of the cache key).
        device: "auto", "cpu" or "cuda" for the diffs.
        kl: `dynamics.kl/1` files per step; default: `out/kl/step_N.json` where present.
        labels: run label, reward and seed to record; default: from run.json.
        progress: a tqdm bar over steps.
        component, masters: which weights of each step (`dynamics.diff`); part of the cache key.
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
    counts = {"computed": 0, "cached": 0}

    def cached_diff(a: Path, b: Path, name: str) -> dict:
        key = cache_key(a, b, geometry, rank_k, component=component, masters=masters, adapter_base=base_path)
        path = out / "cache" / f"{name}-{key}.json"
        doc = _read_cache(path)
        if doc is None:
            result = diff(a, b, device=device, geometry=geometry, rank_k=rank_k, component=component,
                          masters=masters, adapter_base=base_path)
            write_json(result, path)
            doc = finite_json(result.to_json())
            counts["computed"] += 1
        else:
            counts["cached"] += 1
        return {**model_metrics(doc), "diff": path.relative_to(out).as_posix()}

    steps, previous = [], None
    bar = tqdm(checkpoints, desc="series", unit="step", disable=not progress)
    for checkpoint in bar:
        bar.set_postfix_str(checkpoint.path.name)
        vs_base = cached_diff(base_path, checkpoint.path, f"step-{checkpoint.step}-vs-base")
        vs_previous = None if previous is None else cached_diff(
            previous.path, checkpoint.path, f"step-{checkpoint.step}-vs-step-{previous.step}")
        steps.append(SeriesStep(checkpoint.step, str(checkpoint.path), vs_base, vs_previous,
                                kl_by_step.get(checkpoint.step)))
        previous = checkpoint
    result = Series(
        run_dir=str(run_dir), base=str(base_path),
        run=None if info is None else {"run": info.run, "reward": info.reward, "seed": info.seed},
        options={"geometry": geometry, "rank_k": rank_k if geometry else None}, kl_source=kl_source,
        steps=steps, out_dir=str(out), diffs_computed=counts["computed"], diffs_cached=counts["cached"])
    write_json_document(result.to_json(), out / "series.json")
    return result


def _read_cache(path: Path) -> dict | None:
    """A cached diff document, or None when absent or unreadable (a cache is recomputed, not trusted)."""
    if not path.is_file():
        return None
    try:
        return read_json_document(path, DIFF_SCHEMA, SeriesError)
    except SeriesError:
        return None


def parse_step_file(text: str) -> tuple[int, Path]:
    """"STEP=FILE" → (STEP, Path(FILE)), as `--kl 100=kl-100.json` is written."""
    step, sep, file = text.partition("=")
    if not sep or not step.strip().isdigit() or not file:
        raise SeriesError(f"--kl {text}: expected STEP=FILE, e.g. 100=kl-100.json")
    return int(step), Path(file)

