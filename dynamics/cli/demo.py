"""`dynamics demo`: the embedded default (`dynamics.demo`), printed."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.cli.common import Subparsers, add_output, device_and_quiet


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("demo", parents=[device_and_quiet()],
                       help="tiny lab study on the CPU (GRPO with true and spurious rewards, SFT), "
                            "each run diffed against the base, reports")
    add_output(p, "--out", folder=True, default=Path("demo-out"), help="folder for the lab runs, diffs and reports (default demo-out)")
    p.add_argument("--seed", type=int, default=1, help="seed of the lab runs")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.demo import DEMO_GEOMETRY, behavior_lines, run_demo
    from dynamics.summary import format_side_by_side
    from probes.behavior import SMALL_BENCHMARK_PROMPTS

    demo = run_demo(Path(args.out), seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"\nEach run's last checkpoint against the base {demo.base_dir} "
          f"(bf16; fp32 masters against their fp32 start; geometry at k={DEMO_GEOMETRY.k}):\n")
    print(format_side_by_side(demo.diffs))
    print(f"\nHeld-out behavior ({demo.behavior.groups[0].n_prompts} prompts, greedy), shift with 95% CI:\n")
    print("\n".join(behavior_lines(demo.behavior)))
    if demo.behavior.groups[0].n_prompts < SMALL_BENCHMARK_PROMPTS:
        print(f"(fewer than {SMALL_BENCHMARK_PROMPTS} prompts: read the intervals; shifts of a few points are "
              "within seed-to-seed noise)")
    print(f"\nlab runs: {demo.lab_dir} (manifest.json, checkpoints, generations.jsonl per run)")
    print(f"full diffs: {demo.diff_paths['true'].parent}/*.json")
    for label, path in demo.reports.items():
        print(f"report {label}: {path}")
