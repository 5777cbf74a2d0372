"""`dynamics report sparsity|three-gate|compare`: one subparser per report, each with only its own flags."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.cli.common import Subparsers, add_output, add_rank_k, device_and_quiet, geometry_options, wrote
from dynamics.errors import DynamicsError


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="render a report (Markdown + self-contained HTML, figures, data)")
    reports = p.add_subparsers(dest="report", required=True)
    common = device_and_quiet()

    for name, help_text in (("sparsity", "bitwise sparsity, ULP distances, tolerances, bf16 visibility"),
                            ("three-gate", "Gate I KL anchor, Gate II geometry, Gate III precision")):
        r = reports.add_parser(name, parents=[common], help=help_text)
        r.add_argument("inputs", nargs="+", help="BASE TUNED checkpoints, or one diff.json from `dynamics diff --json`")
        add_output(r, "-o", "--out", folder=True, required=True, help="output folder")
        add_rank_k(r, "the geometry (three-gate)")
        r.set_defaults(run=run_sparsity if name == "sparsity" else run_three_gate)
    r = reports.choices["three-gate"]
    r.add_argument("--kl", type=Path, help="Gate I: dynamics.kl/1 JSON of the same pair (probe kl --json)")
    r.add_argument("--fisher", type=Path, help="Gate II: dynamics.fisher/1 JSON of the same pair (probe fisher --json)")
    r.add_argument("--optimizer", type=Path,
                   help="Gates II and III: dynamics.optimizer/1 JSON of the same pair (dynamics optimizer --json)")
    r.add_argument("--fp32-masters", type=Path, metavar="DIFF_JSON",
                   help="Gate II: diff.json (with --geometry) of the same run's fp32 master weights against their "
                        "fp32 start; its update mask's overlaps are shown beside the stored weights' ones")

    r = reports.add_parser("compare", parents=[common], help="runs by reward: parameter metrics against behavior shifts")
    r.add_argument("inputs", nargs="*", help="run folders (run.json) or lab folders (manifest.json)")
    add_output(r, "-o", "--out", folder=True, required=True, help="output folder")
    add_rank_k(r, "the geometry")
    r.add_argument("--manifest", type=Path, help="JSON/YAML manifest labelling run folders "
                                                 "(runs: [{path, run, reward, seed, base}])")
    r.set_defaults(run=run_compare)


def _diff_source(args: argparse.Namespace, geometry: bool):
    """The DiffResult a sparsity / three-gate report renders: read from diff.json, or diffed from A B."""
    from dynamics.api import diff
    from dynamics.result import DiffResult

    if len(args.inputs) == 1:
        return DiffResult.read_json(args.inputs[0])
    if len(args.inputs) == 2:
        return diff(*args.inputs, device=args.device, geometry=geometry_options(args, always=geometry),
                    progress=not args.quiet)
    raise DynamicsError(f"report {args.report}: give A B (checkpoints) or one diff.json, got {len(args.inputs)} paths")


def run_sparsity(args: argparse.Namespace) -> None:
    from reports.sparsity import render_sparsity_report

    wrote(render_sparsity_report(_diff_source(args, geometry=False), args.out))


def run_three_gate(args: argparse.Namespace) -> None:
    from dynamics.optimizer_analysis import OptimizerResult
    from dynamics.result import DiffResult
    from probes.fisher import FisherResult
    from probes.kl import KLResult
    from reports.three_gate import render_three_gate_report

    source = _diff_source(args, geometry=True)
    kl = KLResult.read_json(args.kl) if args.kl else None
    fisher = FisherResult.read_json(args.fisher) if args.fisher else None
    optimizer = OptimizerResult.read_json(args.optimizer) if args.optimizer else None
    wrote(render_three_gate_report(source, args.out, kl=kl, fisher=fisher, optimizer=optimizer))
    masters = DiffResult.read_json(args.fp32_masters) if args.fp32_masters else None
    wrote(render_three_gate_report(source, args.out, kl=kl, fisher=fisher, masters=masters))


def run_compare(args: argparse.Namespace) -> None:
    from probes.comparison import compare_runs
    from reports.compare import render_compare_report

    comparison = compare_runs(args.inputs, args.manifest, geometry=geometry_options(args, always=True),
                              device=args.device, progress=not args.quiet)
    print(f"{len(comparison.runs)} run folders: {sum(r.diffs_computed for r in comparison.series)} diffs computed, "
          f"{sum(r.diffs_cached for r in comparison.series)} reused from each run's series/cache")
    responses = sum(g.n_responses for g in comparison.behavior.groups) if comparison.behavior else 0
    print(f"behavior: {responses} generations from {len(comparison.runs) - len(comparison.without_generations)} runs"
          + (f"; no generations.jsonl in {', '.join(map(str, comparison.without_generations))}"
             if comparison.without_generations else ""))
    wrote(render_compare_report(comparison, args.out))
