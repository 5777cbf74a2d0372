"""`dynamics demo`: the embedded default (`dynamics.demo`), printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.cli.common import Subparsers, add_output, device_and_quiet


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("demo", parents=[device_and_quiet()],
                       help="tiny lab study on the CPU (code-helps base; GRPO with true and spurious rewards, "
                            "SFT), p(code) and code-rate trajectories, each run diffed against the base, reports")
    add_output(p, "--out", folder=True, default=Path("demo-out"), help="folder for the lab runs, diffs and reports (default demo-out)")
    p.add_argument("--seed", type=int, default=1, help="seed of the lab runs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.demo import (
        DEMO_GEOMETRY,
        GPU_RESULTS,
        MIN_STYLE_SHIFT,
        behavior_lines,
        moved_style,
        run_demo,
        trajectory_lines,
    )
    from dynamics.summary import format_side_by_side
    from probes.behavior import SMALL_BENCHMARK_PROMPTS

    demo = run_demo(Path(args.out), seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"\nEach run's last checkpoint against the base {demo.base_dir} "
          f"(bf16; fp32 masters against their fp32 start; geometry at k={DEMO_GEOMETRY.k}):\n")
    print(format_side_by_side(demo.diffs))
    n_prompts = demo.behavior.groups[0].n_prompts
    print(f"\nHeld-out trajectories ({n_prompts} prompts; p(code) exact, teacher-forced; greedy and sampled T = 1):\n")
    print("\n".join(trajectory_lines(demo.behavior, demo.style)))
    print("\nHeld-out behavior, last step − step 0 with 95% CI:\n")
    print("\n".join(behavior_lines(demo.behavior, demo.style)))
    if n_prompts < SMALL_BENCHMARK_PROMPTS:
        print(f"(fewer than {SMALL_BENCHMARK_PROMPTS} prompts: read the intervals; shifts of a few points are "
              "within seed-to-seed noise)")
    moved = moved_style(demo.behavior, demo.style)
    if moved:
        print(f"\nSpurious rewards that moved the style at CPU size: {', '.join(moved)} (a shift above of at least "
              f"{MIN_STYLE_SHIFT:.2f} whose CI excludes 0). The GPU study is in {GPU_RESULTS}.")
    else:
        print(f"\nAt CPU size no spurious reward moved the style: no p(code) or code-rate shift of the random, "
              f"format and incorrect runs reaches {MIN_STYLE_SHIFT:.2f} with a CI that excludes 0. "
              f"The GPU study (Lab II, not run yet: see {GPU_RESULTS}) is where they could.")
    print(f"\nlab runs: {demo.lab_dir} (manifest.json, checkpoints, generations.jsonl per run)")
    print(f"full diffs: {demo.diff_paths['true'].parent}/*.json")
    for label, path in demo.reports.items():
        print(f"report {label}: {path}")
