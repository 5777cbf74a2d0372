"""Run folders: who a run is (`run.json`, a lab's `manifest.json`, a hand-written manifest), its step
checkpoints (`checkpoint-N`, `global_step_N`, `global_stepN`, `iter_NNNNNNN`, `step_N`: named as
`dynamics.checkpoints.steps` parses them, nested in a trainer's layout), and its base."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dynamics.checkpoints.steps import STEP_FOLDER_NAMES, step_of_folder
from dynamics.documents import RUN_SCHEMA, read_json_document
from dynamics.errors import DynamicsError

SEARCH_DEPTH = 3  # levels below the run folder searched for step folders

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
