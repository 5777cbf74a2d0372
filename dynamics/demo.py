"""`dynamics demo`: the tiny lab study (one seed), every run's last checkpoint diffed against the base, and the
reports: sparsity and three-gate of the true-reward and SFT runs, the comparison of all runs.

Diffs are bf16 against the bf16 base with geometry at a small k (the tiny model's matrices are 64 wide),
plus the fp32 masters of the true-reward GRPO run and the SFT run against their fp32 starting point, to show
what bf16 storage hides. Same seed on the same machine → the same files and numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from dynamics.api import diff
from dynamics.documents import write_json_document
from dynamics.geometry_options import GeometryOptions
from dynamics.outputs import write_json
from dynamics.result import DiffResult
from probes.behavior import BehaviorResult
from probes.comparison import Comparison, compare_runs
from probes.lab.checkpoints import checkpoint_name
from probes.lab.study import LAB_PRESETS, last_checkpoint, run_study
from reports.compare import render_compare_report
from reports.sparsity import render_sparsity_report
from reports.three_gate import render_three_gate_report

DEMO_GEOMETRY = GeometryOptions(k=8)  # the tiny model's matrices are 64 wide: a top-8 block is "principal", as k = 64 is for 3584
FP32_RUNS = ("true", "sft")  # rewards whose fp32 masters are diffed too
REPORT_RUNS = ("true", "sft")


@dataclass(frozen=True)
class DemoResult:
    lab_dir: Path
    base_dir: Path
    diffs: dict[str, DiffResult]  # reward label ("true", …, "sft", "true (fp32)") → diff against its start
    diff_paths: dict[str, Path]
    behavior: BehaviorResult  # every run's held-out generations, last step against step 0
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
        diffs[label] = diff(a, b, device=device, geometry=DEMO_GEOMETRY)
        diff_paths[label] = out / "diffs" / f"{label.replace(' (fp32)', '-fp32')}.json"
        write_json(diffs[label], diff_paths[label])
    comparison = compare_runs([lab_dir], geometry=DEMO_GEOMETRY, device=device, progress=progress)
    write_json_document(comparison.behavior.to_json(), out / "behavior.json")
    return DemoResult(lab_dir, base_dir, diffs, diff_paths, comparison.behavior,
                      render_demo_reports(diffs, comparison, out / "reports"))


def behavior_lines(behavior: BehaviorResult) -> list[str]:
    """One line per run: accuracy and code rate at step 0 and at the last step, the shift with its 95% CI."""
    lines = []
    for run in dict.fromkeys(g.run for g in behavior.groups):
        last = max(sh.to_step for sh in behavior.shifts if sh.run == run)
        cells = []
        for metric in ("accuracy", "code_rate"):
            found = [sh for sh in behavior.shifts if sh.run == run and sh.to_step == last and sh.metric == metric]
            if found:
                sh = found[0]
                cells.append(f"{metric} Δ {sh.delta:+.3f} [{sh.ci95[0]:+.3f}, {sh.ci95[1]:+.3f}]")
        lines.append(f"{run:<16} step 0 → {last:<4} " + ",  ".join(cells))
    return lines


def render_demo_reports(diffs: dict[str, DiffResult], comparison: Comparison, out: Path) -> dict[str, Path]:
    """The sparsity and three-gate reports of the true-reward GRPO run and of the SFT run (keys of `diffs`;
    the three-gate report shows the run's fp32 masters' mask overlaps beside, key "<run> (fp32)"), and the comparison of every run (series against step, behavior shifts against parameter metrics)."""
    reports = {}
    for run in REPORT_RUNS:
        reports[f"sparsity {run}"] = render_sparsity_report(diffs[run], out / f"sparsity-{run}")
        reports[f"three-gate {run}"] = render_three_gate_report(diffs[run], out / f"three-gate-{run}",
                                                                masters=diffs.get(f"{run} (fp32)"))
    reports["compare (all runs)"] = render_compare_report(comparison, out / "compare")
    return reports
