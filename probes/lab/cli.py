"""`dynamics lab run`: argument parsing only; the study is imported lazily."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_lab_run(args: argparse.Namespace) -> None:
    from probes.lab.study import run_study_command

    run_study_command(args)


def add_lab_parser(sub: argparse._SubParsersAction) -> None:
    """Register `dynamics lab run` on the top-level subparsers."""
    p = sub.add_parser("lab", help="train small RLVR / SFT runs on arithmetic word problems, made on the spot")
    lab_sub = p.add_subparsers(dest="lab", required=True)
    p = lab_sub.add_parser("run", help="pretrain a base, then SFT and GRPO runs with true and spurious rewards")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"])
    p.add_argument("--out", type=Path, default=Path("runs"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--rewards", nargs="+", default=None,
                   help="subset of: true format random incorrect noisy-<p> sft (default: all)")
    p.add_argument("--save-fp32", action="store_true",
                   help="also save the fp32 master weights of every run under <run>/fp32/checkpoint-<N> (N from 0)")
    p.add_argument("--grpo-lr", type=float, help="GRPO learning rate instead of the preset's (the sparsity knob)")
    p.add_argument("--sft-lr", type=float, help="SFT learning rate instead of the preset's")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_lab_run)
