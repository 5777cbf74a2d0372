"""`dynamics` command line: parse, call the library, print. Errors → one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dynamics.api import diff
from dynamics.errors import DynamicsError
from dynamics.outputs import write_h5, write_json
from dynamics.summary import format_side_by_side, format_summary
from probes.cli import add_probe_parser
from probes.lab.cli import add_lab_parser


def _cmd_diff(args: argparse.Namespace) -> None:
    result = diff(args.a, args.b, device=args.device, strict=args.strict, save_masks=args.save_masks,
                  geometry=args.geometry, rank_k=args.rank_k, geometry_exact=args.geometry_exact,
                  progress=not args.quiet)
    print(format_summary(result))
    if args.json:
        write_json(result, args.json)
        print(f"\nwrote {args.json}")
    if args.h5:
        write_h5(result, args.h5)
        print(f"wrote {args.h5}")


def _cmd_demo(args: argparse.Namespace) -> None:
    from probes.behavior import SMALL_BENCHMARK_PROMPTS
    from probes.lab.demo import DEMO_RANK_K, behavior_lines, run_demo

    demo = run_demo(Path(args.out), seed=args.seed, device=args.device, progress=not args.quiet)
    print(f"\nEach run's last checkpoint against the base {demo.base_dir} "
          f"(bf16; fp32 masters against their fp32 start; geometry at k={DEMO_RANK_K}):\n")
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


def _cmd_report(args: argparse.Namespace) -> None:
    from reports.load import load_diff_doc
    from reports.sparsity import render_sparsity_report
    from reports.three_gate import render_three_gate_report

    if args.kind == "compare":
        _report_compare(args)
        return
    if args.manifest:
        raise DynamicsError(f"report {args.kind}: --manifest belongs to the compare report")
    if len(args.inputs) == 1:
        source = load_diff_doc(args.inputs[0])
    elif len(args.inputs) == 2:
        source = diff(*args.inputs, device=args.device, geometry=args.kind == "three-gate", rank_k=args.rank_k,
                      progress=not args.quiet)
    else:
        raise DynamicsError(f"report {args.kind}: give A B (checkpoints) or one diff.json, got {len(args.inputs)} paths")
    if args.kind == "sparsity":
        if args.kl or args.fisher:
            raise DynamicsError("report sparsity: --kl and --fisher belong to the three-gate report")
        print(f"wrote {render_sparsity_report(source, Path(args.out))}")
    else:
        print(f"wrote {render_three_gate_report(source, Path(args.out), kl=args.kl, fisher=args.fisher)}")


def _report_compare(args: argparse.Namespace) -> None:
    from probes.comparison import compare_runs
    from reports.compare import render_compare_report

    if args.kl or args.fisher:
        raise DynamicsError("report compare: --kl and --fisher belong to the three-gate report")
    comparison = compare_runs(args.inputs, args.manifest, rank_k=args.rank_k, device=args.device,
                              progress=not args.quiet)
    print(f"{len(comparison.runs)} run folders: {sum(r.diffs_computed for r in comparison.series)} diffs computed, "
          f"{sum(r.diffs_cached for r in comparison.series)} reused from each run's series/cache")
    responses = sum(g.n_responses for g in comparison.behavior.groups) if comparison.behavior else 0
    print(f"behavior: {responses} generations from {len(comparison.runs) - len(comparison.without_generations)} runs"
          + (f"; no generations.jsonl in {', '.join(map(str, comparison.without_generations))}"
             if comparison.without_generations else ""))
    behavior = comparison.behavior.to_json() if comparison.behavior else None
    print(f"wrote {render_compare_report([r.to_json() for r in comparison.series], behavior, Path(args.out))}")


def _cmd_series(args: argparse.Namespace) -> None:
    from dynamics.series import parse_step_file, series
    from reports.series import render_series_report

    kl = dict(parse_step_file(text) for text in args.kl)
    result = series(args.run_dir, base=args.base, out=args.out, geometry=args.geometry, rank_k=args.rank_k,
                    device=args.device, kl=kl, progress=not args.quiet)
    out = Path(result.out_dir)
    print(f"{len(result.steps)} checkpoints of {result.run_dir} against {result.base}: "
          f"{result.diffs_computed} diffs computed, {result.diffs_cached} reused from {out / 'cache'}")
    measured = sum(s.kl is not None for s in result.steps)
    if result.kl_source is None:
        print(f"KL per step: none (pass --kl STEP=kl.json, or put dynamics.kl/1 files at {out}/kl/step_N.json)")
    else:
        print(f"KL per step: {measured} files from {result.kl_source}")
    print(f"wrote {out / 'series.json'}")
    print(f"wrote {render_series_report(result, out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynamics", description="Parameter-update dynamics inspector.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("diff", help="compare checkpoint B (tuned) against A (base)")
    p.add_argument("a", help="base checkpoint: HF folder, .safetensors, .bin/.pt, trainer folder")
    p.add_argument("b", help="tuned checkpoint, or a PEFT adapter folder applied on A")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", type=Path, help="write the dynamics.diff/1 JSON document here")
    p.add_argument("--h5", type=Path, help="write per-tensor datasets and histograms here (HDF5)")
    p.add_argument("--save-masks", action="store_true", help="also store bit-packed update masks in --h5")
    p.add_argument("--strict", action="store_true", help="fail on missing tensors and shape/dtype mismatches")
    p.add_argument("--geometry", action="store_true",
                   help="also measure update geometry of 2-D weights (principal angles, energy, rank)")
    p.add_argument("--rank-k", type=int, default=64, help="top-k singular subspaces for --geometry (default 64)")
    p.add_argument("--geometry-exact", action="store_true", help="exact SVD instead of randomized (small models)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_diff)

    p = sub.add_parser("report", help="render a report (Markdown + self-contained HTML, figures, data)")
    p.add_argument("kind", choices=["sparsity", "three-gate", "compare"])
    p.add_argument("inputs", nargs="*", help="sparsity, three-gate: BASE TUNED checkpoints, or one diff.json from "
                                             "`dynamics diff --json`; compare: run folders (run.json) or lab folders "
                                             "(manifest.json)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--rank-k", type=int, default=64, help="top-k subspaces for the geometry (three-gate, compare)")
    p.add_argument("--kl", type=Path, help="three-gate, Gate I: dynamics.kl/1 JSON of the same pair (probe kl --json)")
    p.add_argument("--fisher", type=Path,
                   help="three-gate, Gate II: dynamics.fisher/1 JSON of the same pair (probe fisher --json)")
    p.add_argument("--manifest", type=Path, help="compare: JSON/YAML manifest labelling run folders "
                                                 "(runs: [{path, run, reward, seed, base}])")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_report)

    p = sub.add_parser("series", help="diff every checkpoint of a run against the base and the previous step; "
                                      "series.json and a report")
    p.add_argument("run_dir", help="run folder with checkpoint-N / global_step_N / step_N folders")
    p.add_argument("--base", help="base checkpoint (default: \"base\" in RUN_DIR/run.json)")
    p.add_argument("-o", "--out", help="output folder for series.json, cache/ and the report (default RUN_DIR/series)")
    p.add_argument("--geometry", action="store_true", help="also measure update geometry (rotation, principal energy)")
    p.add_argument("--rank-k", type=int, default=64, help="top-k singular subspaces for --geometry (default 64)")
    p.add_argument("--kl", action="append", default=[], metavar="STEP=FILE",
                   help="dynamics.kl/1 file of one step (repeat; default: OUT/kl/step_N.json where present)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_cmd_series)

    p = sub.add_parser("demo", help="tiny lab study on the CPU (GRPO with true and spurious rewards, SFT), "
                                    "each run diffed against the base, reports")
    p.add_argument("--out", default="demo-out", help="folder for the lab runs, diffs and reports (default demo-out)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_demo)

    add_probe_parser(sub)
    add_lab_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "save_masks", False) and not args.h5:
        print("dynamics: error: --save-masks needs --h5 PATH", file=sys.stderr)
        return 2
    if getattr(args, "rank_k", 1) < 1:
        print("dynamics: error: --rank-k must be at least 1", file=sys.stderr)
        return 2
    try:
        args.run(args)
    except DynamicsError as e:
        print(f"dynamics: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
