"""`dynamics probe kl|fisher|behavior|generate`: argument parsing only; each handler imports its probe lazily
so `dynamics --help` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_kl(args: argparse.Namespace) -> None:
    from probes.kl import run_kl_command

    run_kl_command(args)


def _cmd_fisher(args: argparse.Namespace) -> None:
    from probes.fisher import run_fisher_command

    run_fisher_command(args)


def _cmd_behavior(args: argparse.Namespace) -> None:
    from probes.behavior import run_behavior_command

    run_behavior_command(args)


def _cmd_generate(args: argparse.Namespace) -> None:
    from probes.generate import run_generate_command

    run_generate_command(args)


def _add_kl(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kl", help="on-policy token-level KL(pi_tuned || pi_base) over the full vocabulary")
    p.add_argument("base", help="base model folder (HF, local)")
    p.add_argument("tuned", help="tuned model folder (HF, local)")
    p.add_argument("--prompts", type=Path, help="prompts jsonl (a 'prompt' field per line)")
    p.add_argument("--responses", type=Path, help="score these responses (jsonl: prompt, response) instead of sampling")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts as plain text")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", type=Path, help="write the dynamics.kl/1 document here")
    p.add_argument("--h5", type=Path, help="write the per-token KL distribution here (HDF5)")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_kl)


def _add_fisher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fisher", help="share of the update on the base model's high-Fisher coordinates")
    p.add_argument("base", help="base model folder (HF, local)")
    p.add_argument("tuned", help="tuned model folder (HF, local)")
    p.add_argument("--prompts", type=Path, required=True, help="prompts jsonl (a 'prompt' field per line)")
    p.add_argument("--samples-per-prompt", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--layers", help="only these layer indices, e.g. '0,1,10-12' (memory bound)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", type=Path, help="write the dynamics.fisher/1 document here")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_fisher)


def _add_behavior(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("behavior", help="correctness, code reasoning, keywords, format, length + shifts with CIs")
    p.add_argument("generations", nargs="+", type=Path, help="generations jsonl file(s)")
    p.add_argument("--tokenizer", help="tokenizer folder for lengths in tokens (default: words)")
    p.add_argument("--keywords", help="comma-separated reasoning phrases replacing the default list")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--permutations", type=int, default=10000, help="paired permutation test resamples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write the dynamics.behavior/1 document here")
    p.set_defaults(run=_cmd_behavior)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="write generations jsonl for the behavior probe")
    p.add_argument("model", help="model folder (HF, local)")
    p.add_argument("--prompts", type=Path, required=True, help="prompts jsonl: prompt, optional answer, prompt_id")
    p.add_argument("--out", type=Path, required=True, help="generations jsonl to write")
    p.add_argument("--samples-per-prompt", type=int, default=0, help="sampled responses per prompt (besides greedy)")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy response")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", dest="run_label", default=None, help="run label written into every line (default: folder name)")
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--reward", default="none")
    p.add_argument("--no-chat-template", action="store_true")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(run=_cmd_generate)


def add_probe_parser(sub: argparse._SubParsersAction) -> None:
    """Register `dynamics probe ...` on the top-level subparsers."""
    p = sub.add_parser("probe", help="run models or read generations: kl, fisher, behavior, generate")
    probe_sub = p.add_subparsers(dest="probe", required=True)
    _add_kl(probe_sub)
    _add_fisher(probe_sub)
    _add_behavior(probe_sub)
    _add_generate(probe_sub)
