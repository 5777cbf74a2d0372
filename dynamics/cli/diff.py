"""`dynamics diff A B`: compare checkpoint B (tuned) against A (base)."""

from __future__ import annotations

import argparse

from dynamics.cli.common import (
    Subparsers,
    add_geometry,
    add_output,
    add_weights_choice,
    device_and_quiet,
    geometry_options,
    wrote,
)
from dynamics.errors import DynamicsError


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("diff", parents=[device_and_quiet()], help="compare checkpoint B (tuned) against A (base)")
    p.add_argument("a", help="base checkpoint: HF folder, .safetensors, .bin/.pt, trainer folder, or a training "
                             "framework's folder (verl, DeepSpeed, torch DCP, Megatron)")
    p.add_argument("b", help="tuned checkpoint, or a PEFT adapter folder applied on A")
    add_output(p, "--json", help="write the dynamics.diff/1 JSON document here")
    add_output(p, "--h5", help="write per-tensor datasets and histograms here (HDF5)")
    p.add_argument("--save-masks", action="store_true", help="also store bit-packed update masks in --h5")
    p.add_argument("--strict", action="store_true", help="fail on missing tensors, shape/dtype mismatches and NaN/Inf values (default: report them)")
    add_geometry(p)
    add_weights_choice(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.api import diff
    from dynamics.outputs import write_h5, write_json
    from dynamics.summary import format_summary

    if args.save_masks and not args.h5:
        raise DynamicsError("--save-masks needs --h5 PATH")
    result = diff(args.a, args.b, device=args.device, strict=args.strict, save_masks=args.save_masks,
                  geometry=geometry_options(args), progress=not args.quiet, component=args.component,
                  masters=args.masters)
    print(format_summary(result))
    if args.json:
        write_json(result, args.json)
        print()
        wrote(args.json)
    if args.h5:
        write_h5(result, args.h5)
        wrote(args.h5)
