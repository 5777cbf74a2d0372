"""`dynamics extract-lora BASE TUNED --rank r -o ADAPTER`: the truncated SVD of Δ as a PEFT LoRA adapter."""

from __future__ import annotations

import argparse

from dynamics.cli.common import Subparsers, add_output, wrote
from dynamics.devices import DEVICE_CHOICES


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("extract-lora", help="write Δ's truncated SVD per module as a PEFT LoRA adapter")
    p.add_argument("base", help="base checkpoint")
    p.add_argument("tuned", help="tuned checkpoint")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--rank", type=int, help="the same rank r for every module")
    size.add_argument("--energy", type=float, help="per module the least rank keeping this share of ‖Δ‖², e.g. 0.9")
    add_output(p, "-o", "--out", folder=True, required=True, help="adapter folder to write")
    add_output(p, "--json", help="write the dynamics.lora-extraction/1 report here")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES, help="where the float64 SVDs run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.documents import write_json_document
    from dynamics.lora_extract import extract_lora

    result = extract_lora(args.base, args.tuned, args.out, rank=args.rank, energy=args.energy, device=args.device)
    print(f"{'module':<48}{'rank':>6}{'energy kept':>13}{'rank 90%':>10}{'rank 99%':>10}")
    for m in result.modules:
        print(f"{m.module:<48}{m.rank:>6}{m.energy_kept:>13.4f}{m.rank_for_energy['0.9']:>10}{m.rank_for_energy['0.99']:>10}")
    print(f"energy kept over all {len(result.modules)} modules: {result.energy_kept:.4f}"
          + (f"; {len(result.unchanged)} unchanged modules left out" if result.unchanged else ""))
    wrote(args.out)
    if args.json:
        write_json_document(result.to_json(), args.json)
        wrote(args.json)
