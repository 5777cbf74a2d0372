"""`dynamics demo`: the CPU-sized Lab II study (one seed) on the code-helps base — GRPO with the true, random,
format and incorrect rewards and SFT — every run's last checkpoint diffed against the base, the p(code) and
code-rate trajectories, and the reports: sparsity and three-gate of the true-reward and SFT runs, the
comparison of all runs.

Diffs are bf16 against the bf16 base with geometry at a small k (the tiny model's matrices are 64 wide),
plus the fp32 masters of the true-reward GRPO run and the SFT run against their fp32 starting point, to show
what bf16 storage hides. A spurious reward "moved" the style when its p(code) shift (paired bootstrap over
prompts, last step − step 0) or its greedy or sampled code-rate shift is at least `MIN_STYLE_SHIFT` (two
points) with a 95% CI that excludes 0: p(code) is exact, so its interval is narrow and a shift of 0.001 would
otherwise count. Same seed on the same machine → the same files and numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dynamics.api import diff
from dynamics.documents import write_json_document
from dynamics.geometry_options import GeometryOptions
from dynamics.outputs import write_json
from dynamics.result import DiffResult
from probes.behavior import BehaviorResult
from probes.comparison import Comparison, compare_runs
from probes.lab.checkpoints import checkpoint_name
from probes.lab.study import LAB_PRESETS, last_checkpoint, run_study
from probes.statistics import paired_difference_ci
from probes.style import read_style_records
from reports.compare import render_compare_report
from reports.sparsity import render_sparsity_report
from reports.three_gate import render_three_gate_report

DEMO_GEOMETRY = GeometryOptions(k=8)  # the tiny model's matrices are 64 wide: a top-8 block is "principal", as k = 64 is for 3584
DEMO_BASE = "code-helps"
DEMO_REWARDS = ("true", "random", "format", "incorrect", "sft")
SPURIOUS = ("random", "format", "incorrect")
FP32_RUNS = ("true", "sft")  # rewards whose fp32 masters are diffed too
REPORT_RUNS = ("true", "sft")
TRAJECTORY_METRICS = ("accuracy", "sampled_accuracy", "code_rate", "sampled_code_rate")
GPU_RESULTS = "docs/lab-results.md"
MIN_STYLE_SHIFT = 0.02


@dataclass(frozen=True)
class StyleShift:
    """Mean p(code) over held-out prompts per saved step, and last step − step 0 with its paired 95% CI."""

    by_step: dict[int, float]
    delta: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class DemoResult:
    lab_dir: Path
    base_dir: Path
    diffs: dict[str, DiffResult]  # reward label ("true", …, "sft", "true (fp32)") → diff against its start
    diff_paths: dict[str, Path]
    behavior: BehaviorResult  # every run's held-out generations, last step against step 0
    style: dict[str, StyleShift]  # reward label → p(code) trajectory
    reports: dict[str, Path]  # report label → its Markdown file


def run_demo(out: Path, seed: int, device: str, progress: bool) -> DemoResult:
    """Train the tiny lab into `out/lab`, diff each run against the base into `out/diffs`, render `out/reports`."""
    out = Path(out)
    config = replace(LAB_PRESETS["tiny"], save_fp32=True, parallel_runs=1)
    manifest_path = run_study(config, out / "lab", seeds=[seed], rewards=list(DEMO_REWARDS), bases=[DEMO_BASE],
                              device=device, progress=progress)
    lab_dir = manifest_path.parent
    base_dir = lab_dir / f"base-{DEMO_BASE}"
    # Columns in the manifest's order, named by reward.
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
    style = {reward: style_shift(run_dir / "style.jsonl") for reward, run_dir in run_dirs.items()}
    return DemoResult(lab_dir, base_dir, diffs, diff_paths, comparison.behavior, style,
                      render_demo_reports(diffs, comparison, out / "reports"))


def style_shift(path: Path) -> StyleShift:
    """p(code) per step (mean over prompts) and the paired shift of the last step against step 0."""
    records = read_style_records(path)
    steps = sorted({r.step for r in records})
    per_step = {s: {r.prompt_id: r.p_style for r in records if r.step == s} for s in steps}
    first, last = per_step[steps[0]], per_step[steps[-1]]
    prompts = sorted(first.keys() & last.keys())
    before, after = np.array([first[p] for p in prompts]), np.array([last[p] for p in prompts])
    ci = paired_difference_ci(before, after)
    return StyleShift({s: float(np.mean(list(v.values()))) for s, v in per_step.items()},
                      float(np.mean(after - before)), (float(ci[0]), float(ci[1])))


def _run_label(reward: str) -> str:
    return ("sft" if reward == "sft" else f"grpo-{reward}") + f"@{DEMO_BASE}"


def trajectory_lines(behavior: BehaviorResult, style: dict[str, StyleShift]) -> list[str]:
    """Per run and saved step: p(code), accuracy and code rate (greedy, sampled)."""
    header = f"{'run':<24} {'step':>4}  {'p(code)':>7}  " + "  ".join(f"{m:>17}" for m in TRAJECTORY_METRICS)
    lines = [header]
    for reward, shift in style.items():
        groups = {g.step: g for g in behavior.groups if g.run == _run_label(reward)}
        for step, p_code in shift.by_step.items():
            values = groups[step].values if step in groups else {}
            cells = [f"{values[m].mean:>17.3f}" if values.get(m) else f"{'—':>17}" for m in TRAJECTORY_METRICS]
            lines.append(f"{_run_label(reward):<24} {step:>4}  {p_code:>7.3f}  " + "  ".join(cells))
    return lines


def behavior_lines(behavior: BehaviorResult, style: dict[str, StyleShift]) -> list[str]:
    """One line per run: p(code), accuracy and code-rate shifts (greedy and sampled), last step − step 0, with
    their 95% CIs."""
    lines = []
    for reward, shift in style.items():
        run = _run_label(reward)
        last = max(sh.to_step for sh in behavior.shifts if sh.run == run)
        cells = [f"p(code) Δ {shift.delta:+.3f} [{shift.ci95[0]:+.3f}, {shift.ci95[1]:+.3f}]"]
        for metric in TRAJECTORY_METRICS:
            found = [sh for sh in behavior.shifts if sh.run == run and sh.to_step == last and sh.metric == metric]
            if found:
                sh = found[0]
                cells.append(f"{metric} Δ {sh.delta:+.3f} [{sh.ci95[0]:+.3f}, {sh.ci95[1]:+.3f}]")
        lines.append(f"{run:<24} step 0 → {last:<4} " + ",  ".join(cells))
    return lines


def moved_style(behavior: BehaviorResult, style: dict[str, StyleShift]) -> list[str]:
    """The spurious rewards whose p(code) or code-rate shift (last step − step 0) is ≥ MIN_STYLE_SHIFT in size
    with a 95% CI without 0."""
    moved = []
    for reward in SPURIOUS:
        if reward not in style:
            continue
        run = _run_label(reward)
        last = max(sh.to_step for sh in behavior.shifts if sh.run == run)
        shifts = [(style[reward].delta, style[reward].ci95)] + [
            (sh.delta, sh.ci95) for sh in behavior.shifts
            if sh.run == run and sh.to_step == last and sh.metric in ("code_rate", "sampled_code_rate")]
        if any(abs(delta) >= MIN_STYLE_SHIFT and (low > 0 or high < 0) for delta, (low, high) in shifts):
            moved.append(reward)
    return moved


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
