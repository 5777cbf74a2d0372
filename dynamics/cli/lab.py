"""`dynamics lab run`: pretrain bases on the spot, then SFT and GRPO runs with true and spurious rewards."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dynamics.cli.common import Subparsers, add_output, device_and_quiet, wrote


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("lab", help="train small RLVR / SFT runs on arithmetic word problems, made on the spot")
    lab = p.add_subparsers(dest="lab", required=True)
    p = lab.add_parser("run", parents=[device_and_quiet()],
                       help="pretrain bases, then SFT and GRPO runs with true and spurious rewards (resumable)")
    p.add_argument("--size", default="tiny", choices=["tiny", "small"], help="lab preset: tiny (CPU, minutes) or small (GPU)")
    add_output(p, "--out", folder=True, default=Path("runs"),
               help="folder for the lab study (default runs); a folder of the same size resumes and extends")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="one run per reward and seed")
    p.add_argument("--bases", nargs="+", default=None,
                   help="subset of: code-helps code-hurts no-code template (default: code-helps)")
    p.add_argument("--rewards", nargs="+", default=None,
                   help="subset of: true format random random-<γ> incorrect noisy-<p> rpr sft "
                        "(default: true format random random-0.3 incorrect noisy-0.2 noisy-0.4 noisy-0.5 rpr sft)")
    p.add_argument("--ablation", nargs="+", default=[], choices=["clip-off", "on-policy"],
                   help="also train each GRPO reward with the clip off / with one update per rollout")
    p.add_argument("--save-fp32", action="store_true",
                   help="also save the fp32 master weights of every run under <run>/fp32/checkpoint-<N> (N from 0)")
    p.add_argument("--grpo-lr", type=float, help="GRPO learning rate instead of the preset's (the sparsity knob)")
    p.add_argument("--sft-lr", type=float, help="SFT learning rate instead of the preset's")
    p.add_argument("--parallel", type=int, help="runs trained at once on a GPU instead of the preset's")
    p.set_defaults(run=run)
    p = lab.add_parser("link", parents=[device_and_quiet()],
                       help="KL to the base at every saved step (from each run's sampled responses), for series "
                            "and report compare")
    p.add_argument("paths", nargs="+", type=Path, help="lab folders (manifest.json) or run folders (run.json)")
    p.set_defaults(run=run_link)


def run_link(args: argparse.Namespace) -> None:
    from probes.lab.link import link_kl

    written = link_kl(args.paths, device=args.device, progress=not args.quiet)
    print(f"lab link: {len(written)} KL files written")


def run(args: argparse.Namespace) -> None:
    from probes.lab.study import last_checkpoint, run_study, study_config

    config = study_config(args.size, args.device, args.save_fp32, args.grpo_lr, args.sft_lr, args.parallel)
    started = time.perf_counter()
    manifest_path = run_study(config, args.out, args.seeds, args.rewards, args.bases, args.ablation, args.device,
                              progress=not args.quiet)
    manifest = json.loads(manifest_path.read_text())
    print(f"lab {args.size}: {len(manifest['runs'])} runs in {time.perf_counter() - started:.0f} s")
    for entry in manifest["runs"]:
        print(f"  {entry['path']:<40} {last_checkpoint(args.out / entry['path'])}")
    wrote(manifest_path)
