"""`dynamics paper-metrics BASE TUNED`: the Path Not Taken's and Small Subnetworks' definitions, exactly."""

from __future__ import annotations

import argparse

from dynamics.cli.common import Subparsers, add_output, wrote
from dynamics.devices import DEVICE_CHOICES


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("paper-metrics", help="NSS, angle curves, η-rule, matrix_rank(Δ)/min(m,n), M_princ∩M_low^c overlap")
    p.add_argument("base", help="base checkpoint")
    p.add_argument("tuned", help="tuned checkpoint (or a PEFT adapter on BASE)")
    add_output(p, "--json", help="write the dynamics.paper-metrics/1 document here")
    p.add_argument("--angle-k", type=int, default=64, help="angle curves for k = 1 … K (default 64)")
    p.add_argument("--mask-k", type=int, default=64, help="rank of W0^(k) behind M_princ (default 64)")
    p.add_argument("--principal-fraction", type=float, default=0.5, help="α of M_princ (default 0.5)")
    p.add_argument("--low-fraction", type=float, default=0.5, help="β of M_low (default 0.5)")
    p.add_argument("--paper-compat", action="store_true",
                   help="also print layer sparsity as the unweighted mean of tensor fractions (Small Subnetworks)")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES, help="where the float64 SVDs run")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from dynamics.metrics import METRICS, format_value
    from dynamics.paper_metrics import PaperOptions, paper_metrics

    options = PaperOptions(angle_k=args.angle_k, mask_k=args.mask_k, principal_fraction=args.principal_fraction,
                           low_fraction=args.low_fraction)
    result = paper_metrics(args.base, args.tuned, options, device=args.device)
    doc = result.to_json()
    headline = [n for n, m in METRICS.items() if m.needs == "paper" and m.headline]
    print(f"{'':<8}" + "".join(f"{n:>32}" for n in headline))
    for group, row in {"model": doc["summary"], **doc["by_module_kind"]}.items():
        print(f"{group:<8}" + "".join(f"{format_value(n, row[n]):>32}" for n in headline))
    if args.paper_compat:
        for layer, share in result.subnetworks_layer_sparsity().items():
            print(f"layer {layer:>3}  Δ == 0 share, unweighted mean of tensors: {share:.4f}")
    if args.json:
        result.write_json(args.json)
        wrote(args.json)
