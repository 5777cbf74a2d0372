"""`dynamics overlap BASE RUN1 RUN2 [...]`: how consistently several runs update the same weights."""

from __future__ import annotations

import argparse

from dynamics.cli.common import Subparsers, add_output, device_and_quiet, wrote
from dynamics.errors import DynamicsError


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("overlap", parents=[device_and_quiet()],
                       help="cross-run consistency of update masks (Jaccard vs chance, consensus maps)")
    p.add_argument("base", help="the common base checkpoint")
    p.add_argument("runs", nargs="+", help="two or more tuned checkpoints (or PEFT adapters) of that base")
    p.add_argument("--rule", default="bitwise",
                   help="what counts as changed: bitwise (default), eta (Path Not Taken Def. 2.1) or a tolerance τ")
    add_output(p, "--json", help="write the dynamics.overlap/1 JSON document here")
    add_output(p, "--h5", help="write the document and consensus row/column profiles here (HDF5)")
    p.add_argument("--save-consensus", action="store_true", help="also store every consensus map in --h5")
    p.add_argument("--strict", action="store_true", help="fail on tensors that do not pair with every run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.masks import parse_change_rule
    from dynamics.metrics import METRICS, format_value
    from dynamics.overlap import overlap

    if args.save_consensus and not args.h5:
        raise DynamicsError("--save-consensus needs --h5 PATH")
    try:
        rule = parse_change_rule(args.rule)
    except ValueError as e:
        raise DynamicsError(f"--rule: {e}") from None
    result = overlap(args.base, args.runs, rule=rule, device=args.device,
                     save_consensus=args.save_consensus, strict=args.strict)
    doc = result.to_json()
    headline = [name for name, m in METRICS.items() if m.needs == "overlap" and m.headline]
    print(f"{'':<12}" + "".join(f"{METRICS[n].label:>28}" for n in headline))
    groups = {"model": doc["summary"], **doc["by_module_kind"]}
    for group, row in groups.items():
        print(f"{group:<12}" + "".join(f"{format_value(n, row[n]):>28}" for n in headline))
    if result.not_in_all_runs:
        print(f"{len(result.not_in_all_runs)} tensors do not pair with every run (left out)")
    if args.json:
        result.write_json(args.json)
        wrote(args.json)
    if args.h5:
        result.write_h5(args.h5)
        wrote(args.h5)
