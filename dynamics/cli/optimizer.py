"""`dynamics optimizer BASE TUNED`: Adam's state and fp32 masters read for Gate II and Gate III, no model run."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.cli.common import Subparsers, wrote


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("optimizer", help="Adam's v as a curvature proxy, momentum alignment, bf16 flips explained "
                                         "per weight and predicted for the next step")
    p.add_argument("base", help="the earlier checkpoint (step t) or the base model")
    p.add_argument("tuned", help="the later checkpoint (step t+1), read as fp32 masters where it holds them")
    p.add_argument("--optimizer", type=Path,
                   help="TUNED's optimizer state (optimizer.pt or a DeepSpeed tag folder; default: found in TUNED)")
    p.add_argument("--next", type=Path, help="the checkpoint one step after TUNED: precision/recall of the flip prediction")
    p.add_argument("--log", type=Path,
                   help="training log (trainer_state.json or JSONL with step fields; default: TUNED/trainer_state.json)")
    p.add_argument("--component", help="verl component of a global_step_N folder (default actor)")
    p.add_argument("--json", type=Path, help="write the dynamics.optimizer/1 document here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.metrics import METRICS, format_value
    from dynamics.optimizer_analysis import optimizer_analysis
    from dynamics.training_log import find_training_log, read_training_log
    from probes.parameter_order import adam_state_beside

    adam = adam_state_beside(args.tuned, args.optimizer)
    if adam is None:
        print(f"no optimizer state in {args.optimizer or args.tuned}: Gate II needs optimizer.pt, verl optim shards "
              "or DeepSpeed optim states (--optimizer PATH)")
    log_path = args.log or find_training_log(args.tuned)
    log = read_training_log(log_path) if log_path is not None else None
    result = optimizer_analysis(args.base, args.tuned, adam=adam, next_checkpoint=args.next, log=log,
                                component=args.component)
    doc = result.to_json()
    headline = [n for n, m in METRICS.items() if m.needs == "optimizer" and m.headline]
    print(f"{'':<10}" + "".join(f"{METRICS[n].label:>32}" for n in headline))
    for group, row in {"model": doc["summary"], **doc["by_module_kind"]}.items():
        print(f"{group:<10}" + "".join(f"{format_value(n, row[n]):>32}" for n in headline))
    summary = doc["summary"]
    shares = ", ".join(f"top-{q}% {format_value('v_top_share_over_chance', x)}×"
                       for q, x in summary["v_top_share_over_chance"].items())
    print(f"share of ‖Δ‖² on top-q% v over chance: {shares}")
    print(f"bf16: {summary['moved_flipped']} moved and flipped, {summary['moved_hidden']} moved but hidden, "
          f"{summary['unmoved']} unmoved of {summary['classified']} master elements")
    if args.next is None:
        print("next-step flip prediction: pass --next CHECKPOINT (the one after TUNED) for its precision and recall")
    if result.log:
        print(f"log at step {result.log_step}: " + ", ".join(f"{k} {v:.4g}" for k, v in result.log.items()))
    if args.json:
        result.write_json(args.json)
        wrote(args.json)
