"""`dynamics series RUN_DIR`: every checkpoint of a run against the base and the previous step."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.cli.common import (
    Subparsers,
    add_geometry,
    add_output,
    add_weights_choice,
    device_and_quiet,
    geometry_options,
    wrote,
)


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("series", parents=[device_and_quiet()],
                       help="diff every checkpoint of a run against the base and the previous step; "
                            "series.json and a report")
    p.add_argument("run_dir", help="run folder with checkpoint-N / global_step_N / global_stepN / iter_NNNNNNN / "
                                     "step_N folders, or a series.json written live (dynamics.live): its report")
    p.add_argument("--base", help="base checkpoint (default: \"base\" in RUN_DIR/run.json)")
    add_output(p, "-o", "--out", folder=True, help="output folder for series.json, cache/ and the report (default RUN_DIR/series)")
    add_geometry(p)
    add_weights_choice(p)
    p.add_argument("--kl", action="append", default=[], metavar="STEP=FILE",
                   help="dynamics.kl/1 file of one step (repeat; default: OUT/kl/step_N.json where present)")
    p.add_argument("--optimizer", action="store_true",
                   help="also read each step's optimizer state: Adam's v curvature, momentum, bf16 flips per step")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.series import Series, parse_step_file, series
    from probes.parameter_order import adam_state_beside
    from reports.series import render_series_report

    if Path(args.run_dir).is_file():
        live = Series.read_json(args.run_dir)
        out = Path(args.out) if args.out is not None else Path(live.out_dir)
        print(f"{len(live.steps)} steps measured live against {live.base}")
        wrote(render_series_report(live, out))
        return

    kl = dict(parse_step_file(text) for text in args.kl)
    result = series(args.run_dir, base=args.base, out=args.out, geometry=geometry_options(args),
                    device=args.device, kl=kl, progress=not args.quiet, component=args.component,
                    masters=args.masters, optimizer=adam_state_beside if args.optimizer else None)
    out = Path(result.out_dir)
    print(f"{len(result.steps)} checkpoints of {result.run_dir} against {result.base}: "
          f"{result.diffs_computed} diffs computed, {result.diffs_cached} reused from {out / 'cache'}")
    measured = sum(s.kl is not None for s in result.steps)
    if result.kl_source is None:
        print(f"KL per step: none (pass --kl STEP=kl.json, or put dynamics.kl/1 files at {out}/kl/step_N.json)")
    else:
        print(f"KL per step: {measured} files from {result.kl_source}")
    wrote(out / "series.json")
    wrote(render_series_report(result, out))
