"""`dynamics demo`: the tiny lab study (one seed), every run's last checkpoint diffed against the base, reports.

Diffs are bf16 against the bf16 base with geometry at a small k (the tiny model's matrices are 64 wide),
plus the fp32 masters of the true-reward GRPO run and the SFT run against their fp32 starting point, to show
what bf16 storage hides. Same seed on the same machine → the same files and numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from dynamics.api import diff
from dynamics.outputs import write_json
from dynamics.result import DiffResult
from probes.lab.checkpoints import checkpoint_name
from probes.lab.study import LAB_PRESETS, last_checkpoint, run_study

DEMO_RANK_K = 8  # the tiny model's matrices are 64 wide: a top-8 block is "principal", as k = 64 is for 3584
FP32_RUNS = ("true", "sft")  # rewards whose fp32 masters are diffed too
REPORT_RUNS = ("true", "sft")


@dataclass(frozen=True)
class DemoResult:
    lab_dir: Path
    base_dir: Path
    diffs: dict[str, DiffResult]  # reward label ("true", …, "sft", "true (fp32)") → diff against its start
    diff_paths: dict[str, Path]
    reports: dict[str, Path]  # report label → its Markdown file


def run_demo(out: Path, seed: int, device: str, progress: bool) -> DemoResult:
    """Train the tiny lab into `out/lab`, diff each run against the base into `out/diffs`, render `out/reports`."""
    out = Path(out)
    config = replace(LAB_PRESETS["tiny"], save_fp32=True, parallel_runs=1)
    manifest_path = run_study(config, out / "lab", seeds=[seed], device=device, progress=progress)
    lab_dir = manifest_path.parent
    base_dir = lab_dir / "base"
    # Columns in the manifest's order, named by reward (the run label without its "grpo-" prefix).
    run_dirs = {entry["reward"]: lab_dir / entry["path"] for entry in json.loads(manifest_path.read_text())["runs"]}
    pairs = {reward: (base_dir, last_checkpoint(run_dir)) for reward, run_dir in run_dirs.items()}
    for reward in FP32_RUNS:
        fp32 = run_dirs[reward] / "fp32"
        pairs[f"{reward} (fp32)"] = (fp32 / checkpoint_name(0), fp32 / last_checkpoint(run_dirs[reward]).name)
    diffs, diff_paths = {}, {}
    for label, (a, b) in pairs.items():
        diffs[label] = diff(a, b, device=device, geometry=True, rank_k=DEMO_RANK_K)
        diff_paths[label] = out / "diffs" / f"{label.replace(' (fp32)', '-fp32')}.json"
        write_json(diffs[label], diff_paths[label])
    return DemoResult(lab_dir, base_dir, diffs, diff_paths, render_demo_reports(diffs, out / "reports"))


def render_demo_reports(diffs: dict[str, DiffResult], out: Path) -> dict[str, Path]:
    """The sparsity and three-gate reports of the true-reward GRPO run and of the SFT run (keys of `diffs`)."""
    from reports.sparsity import render_sparsity_report
    from reports.three_gate import render_three_gate_report

    reports = {}
    for run in REPORT_RUNS:
        reports[f"sparsity {run}"] = render_sparsity_report(diffs[run], out / f"sparsity-{run}")
        reports[f"three-gate {run}"] = render_three_gate_report(diffs[run], out / f"three-gate-{run}")
    return reports
