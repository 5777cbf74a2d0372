"""`dynamics probe kl|fisher|behavior|generate|style`: run models or read generations; print and write their results."""

from __future__ import annotations

import argparse
from pathlib import Path

from dynamics.cli.common import Subparsers, add_output, device_and_quiet, wrote


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("probe", help="run models or read generations: kl, fisher, behavior, generate, style")
    probes = p.add_subparsers(dest="probe", required=True)
    common = device_and_quiet()

    p = probes.add_parser("kl", parents=[common], help="on-policy token-level KL(pi_tuned || pi_base) over the full vocabulary")
    p.add_argument("base", help="base model folder (HF, local)")
    p.add_argument("tuned", help="tuned model folder (HF, local), or a PEFT adapter folder applied to BASE")
    p.add_argument("--prompts", type=Path, help="prompts jsonl (a 'prompt' field per line)")
    p.add_argument("--responses", type=Path, help="score these responses (jsonl: prompt, response) instead of sampling")
    p.add_argument("--samples-per-prompt", type=int, default=4)
    _add_sampling(p, max_new_tokens=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--bf16-forward", action="store_true",
                   help="sample and score under bf16 autocast (faster; its rounding swamps KLs below ~1e-4 nats; "
                        "recorded in the result). Default: float32 forward, KL from the logit difference in float64")
    add_output(p, "--json", help="write the dynamics.kl/1 document here")
    add_output(p, "--h5", help="write the per-token KL distribution here (HDF5)")
    p.set_defaults(run=run_kl)

    p = probes.add_parser("fisher", parents=[common], help="share of the update on the base model's high-Fisher coordinates")
    p.add_argument("base", help="base model folder (HF, local)")
    p.add_argument("tuned", help="tuned checkpoint (any format `dynamics diff` reads, or a PEFT adapter on BASE)")
    p.add_argument("--prompts", type=Path, required=True, help="prompts jsonl (a 'prompt' field per line)")
    p.add_argument("--samples-per-prompt", type=int, default=1)
    _add_sampling(p, max_new_tokens=128)
    p.add_argument("--layers", help="only these layer indices, e.g. '0,1,10-12' (memory bound)")
    add_output(p, "--json", help="write the dynamics.fisher/1 document here")
    p.set_defaults(run=run_fisher)

    p = probes.add_parser("behavior", help="correctness, code reasoning, keywords, format, length + shifts with CIs")
    p.add_argument("generations", nargs="+", type=Path, help="generations jsonl file(s)")
    p.add_argument("--tokenizer", help="tokenizer folder for lengths in tokens (default: words)")
    p.add_argument("--keywords", help="comma-separated reasoning phrases replacing the default list")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs")
    p.add_argument("--permutations", type=int, default=10000, help="paired permutation test resamples")
    p.add_argument("--seed", type=int, default=0)
    add_output(p, "--json", help="write the dynamics.behavior/1 document here")
    p.set_defaults(run=run_behavior)

    p = probes.add_parser("generate", parents=[common], help="write generations jsonl for the behavior probe")
    p.add_argument("model", help="model folder (HF, local), or a PEFT adapter folder (then --base)")
    p.add_argument("--base", help="base model folder MODEL applies to, when MODEL is a PEFT adapter")
    p.add_argument("--prompts", type=Path, required=True, help="prompts jsonl: prompt, optional answer, prompt_id")
    add_output(p, "--out", required=True, help="generations jsonl to write")
    p.add_argument("--samples-per-prompt", type=int, default=0, help="sampled responses per prompt (besides greedy)")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy response")
    _add_sampling(p, max_new_tokens=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--run", dest="run_label", default=None, help="run label written into every line (default: folder name)")
    p.add_argument("--step", type=int, default=0)
    p.add_argument("--reward", default="none")
    p.set_defaults(run=run_generate)

    p = probes.add_parser("style", parents=[common],
                          help="exact teacher-forced p(response opens with a style opening), shifts vs the first model")
    p.add_argument("models", nargs="+", help="model folders (HF, local), the first is the reference (e.g. BASE TUNED...)")
    p.add_argument("--base", help="base model folder the PEFT adapter folders among MODELS apply to")
    p.add_argument("--prompts", type=Path, required=True, help="prompts jsonl (a 'prompt' field per line)")
    p.add_argument("--openings", nargs="+", required=True,
                   help="style-opening strings, prefix-free after tokenisation, e.g. '```'")
    p.add_argument("--batch-size", type=int, default=64, help="prompts per forward pass (default 64)")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the 95%% CIs (default 2000)")
    p.add_argument("--permutations", type=int, default=10000,
                   help="paired permutation test resamples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts as plain text")
    add_output(p, "--json", help="write the dynamics.style/1 document here")
    p.set_defaults(run=run_style)


def _add_sampling(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts as plain text")


def run_kl(args: argparse.Namespace) -> None:
    from dynamics.outputs import write_json_document
    from probes.generations import read_generations
    from probes.kl import kl_drift, write_kl_h5
    from probes.models import ProbeError, read_prompts

    if (args.prompts is None) == (args.responses is None):
        raise ProbeError("probe kl: give --prompts (sample from TUNED) or --responses (score a file), not both")
    responses = [(g.prompt, g.response) for g in read_generations(args.responses)] if args.responses else None
    result = kl_drift(args.base, args.tuned, read_prompts(args.prompts) if args.prompts else None, responses,
                      samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
                      temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
                      chat_template=not args.no_chat_template, bf16_forward=args.bf16_forward, device=args.device,
                      progress=not args.quiet)
    print(format_kl(result))
    if args.json:
        write_json_document(result.to_json(), args.json)
        wrote(args.json)
    if args.h5:
        write_kl_h5(result, args.h5)
        wrote(args.h5)


def format_kl(result) -> str:
    """The KL result as terminal lines."""
    forward = result.sampling.get("forward", "float32")
    lines = [f"KL drift of {result.tuned} from {result.base}",
             f"  {result.sequences} sequences, {result.tokens} response tokens ({result.provenance()}; {forward} forward)",
             (f"  KL(tuned || base) per token: mean {result.kl_mean_per_token:.4g}, "
              f"median {result.kl_median_per_token:.4g}, p95 {result.kl_p95_per_token:.4g}"),
             f"  KL(base || tuned) per token: mean {result.kl_reverse_mean_per_token:.4g}",
             f"  KL per sequence (sum over its tokens): mean {result.kl_mean_per_sequence:.4g}",
             *_kl_position_lines(result.kl_by_position),
             "  largest contributions (token: sum over occurrences, count):"]
    lines += [f"    {t.token!r}: {t.kl_sum:.4g} ({t.count}×)" for t in result.top_tokens[:10]]
    return "\n".join(lines)


def _kl_position_lines(split: dict | None) -> list[str]:
    if not split:
        return []
    cells = [f"{name} {100 * c['share']:.1f}% ({c['tokens']} tokens)" if c["share"] is not None
             else f"{name} n/a ({c['tokens']} tokens)" for name, c in split.items()]
    return ["  share of the KL sum at the first response token / digit tokens / the rest: " + ", ".join(cells)]


def run_fisher(args: argparse.Namespace) -> None:
    from dynamics.outputs import write_json_document
    from probes.fisher import fisher_alignment, parse_layers
    from probes.models import read_prompts

    result = fisher_alignment(args.base, args.tuned, read_prompts(args.prompts),
                              samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
                              temperature=args.temperature, layers=parse_layers(args.layers), seed=args.seed,
                              chat_template=not args.no_chat_template, device=args.device, progress=not args.quiet)
    print(format_fisher(result))
    if args.json:
        write_json_document(result.to_json(), args.json)
        wrote(args.json)


def format_fisher(result) -> str:
    """The Fisher alignment as terminal lines, shares over chance from the registry."""
    from dynamics.metrics import probe_value

    lines = [f"Fisher alignment of {result.tuned} - {result.base} ({result.samples} base samples)",
             "  share of ||delta||^2 on the top-q% Fisher coordinates (chance = q%):"]
    for q in result.q_percent:
        share = result.model["share_top_q"][str(q)]
        over = probe_value("fisher_share_over_chance", result, q)
        lines.append(f"    q = {q:>2}%: " + ("n/a" if share is None else f"{100 * share:.2f}% ({over:.2f}× chance)"))
    rho = result.model["spearman_median"]
    lines.append(f"  Spearman rho(|delta|, F) over changed weights, median over tensors: "
                 f"{'n/a' if rho is None else f'{rho:.3f}'}")
    return "\n".join(lines)


def run_behavior(args: argparse.Namespace) -> None:
    from dynamics.outputs import write_json_document
    from probes.behavior import behavior_probe
    from probes.generations import read_generations
    from probes.models import load_tokenizer

    generations = [g for path in args.generations for g in read_generations(path)]
    tokenizer = load_tokenizer(args.tokenizer) if args.tokenizer else None
    keywords = tuple(k.strip() for k in args.keywords.split(",") if k.strip()) if args.keywords else None
    result = behavior_probe(generations, tokenizer, keywords, args.bootstrap, args.permutations, args.seed)
    print(format_behavior(result))
    if args.json:
        write_json_document(result.to_json(), args.json)
        print()
        wrote(args.json)


def _fmt(value: float, metric: str) -> str:
    return f"{value:.1f}" if metric == "length" else f"{value:.3f}"


def format_behavior(result) -> str:
    """Groups and shifts as text tables; every estimate is printed with its 95% CI, never bare."""
    from probes.behavior import OUR_METRICS, PAPER_METRICS, SAMPLED_METRICS, SMALL_BENCHMARK_PROMPTS

    lines = [f"Behavior ({result.verifier}; length in {result.length_unit}); mean [95% CI over prompts]"]
    tables = [("ours (greedy responses)", OUR_METRICS), ("the papers' definitions (REFERENCES.md)", PAPER_METRICS)]
    if any(g.values[m] is not None for g in result.groups for m in SAMPLED_METRICS):
        tables.append(("sampled responses: per-prompt mean over its samples", SAMPLED_METRICS))
    for title, metrics in tables:
        header = f"{'run':<18}{'step':>6}{'seed':>5}{'prompts':>8}  " + "  ".join(f"{m:<24}" for m in metrics)
        lines += ["", f"{title}:", header, "-" * len(header)]
        for g in result.groups:
            cells = [f"{_fmt(e.mean, m)} [{_fmt(e.ci95[0], m)}, {_fmt(e.ci95[1], m)}]" if e else "n/a"
                     for m, e in ((m, g.values[m]) for m in metrics)]
            lines.append(f"{g.run:<18}{g.step:>6}{g.seed:>5}{g.n_prompts:>8}  " + "  ".join(f"{c:<24}" for c in cells))
    a = result.code_flag_agreement
    if a.responses:
        lines += ["", (f"code reasoning, our rule vs Rethink_RLVR's 'python' flag: agree on {100 * a.rate:.1f}% of "
                       f"{a.responses} responses (both {a.both}, ours only {a.ours_only}, theirs only "
                       f"{a.theirs_only}, neither {a.neither})")]
    if result.shifts:
        lines += ["", "Shifts vs the run's first step: delta [95% CI], paired permutation p", ""]
        for sh in result.shifts:
            p = f"p={sh.p_value:.3g}" if sh.p_value is not None else "unpaired"
            lines.append(f"{sh.run:<18} seed {sh.seed:<3} step {sh.from_step}->{sh.to_step:<6} {sh.metric:<25}"
                         f"{_fmt(sh.delta, sh.metric):>8} [{_fmt(sh.ci95[0], sh.metric)}, "
                         f"{_fmt(sh.ci95[1], sh.metric)}]  {p}  (n={sh.n_prompts})")
    multi = [s for s in result.seed_shifts if s.n_seeds > 1]
    if multi:
        lines += ["", "Across seeds: mean ± std [95% t-interval]", ""]
        for s in multi:
            lines.append(f"{s.run:<18} step {s.from_step}->{s.to_step:<6} {s.metric:<25}{_fmt(s.mean, s.metric):>8}"
                         f" ± {_fmt(s.std, s.metric)} [{_fmt(s.ci95[0], s.metric)}, {_fmt(s.ci95[1], s.metric)}]"
                         f"  ({s.n_seeds} seeds)")
    smallest = min(g.n_prompts for g in result.groups)
    if smallest < SMALL_BENCHMARK_PROMPTS:
        lines += ["", (f"warning: small benchmark ({smallest} prompts in the smallest group, < "
                       f"{SMALL_BENCHMARK_PROMPTS}): differences of a few points are within seed-to-seed noise; "
                       "read the intervals, not the means.")]
    return "\n".join(lines)


def run_generate(args: argparse.Namespace) -> None:
    from dynamics.devices import resolve_device
    from probes.generate import generate_responses
    from probes.generations import write_generations
    from probes.models import load_model, probe_tokenizer, read_prompts

    prompts = read_prompts(args.prompts)
    tokenizer = probe_tokenizer(args.model, args.base, [p.prompt for p in prompts], not args.no_chat_template)
    model = load_model(args.model, resolve_device(args.device), base=args.base, progress=not args.quiet)
    generations = generate_responses(
        model, tokenizer, prompts, greedy=not args.no_greedy,
        samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
        run=args.run_label or Path(args.model).resolve().name, step=args.step, reward=args.reward,
        chat_template=not args.no_chat_template, progress=not args.quiet)
    write_generations(generations, args.out)
    print(f"wrote {len(generations)} responses to {args.out}")


def run_style(args: argparse.Namespace) -> None:
    from dynamics.outputs import write_json_document
    from probes.models import read_prompts
    from probes.style import style_probe

    result = style_probe(args.models, read_prompts(args.prompts), args.openings, base=args.base,
                         batch_size=args.batch_size, bootstrap=args.bootstrap, permutations=args.permutations,
                         seed=args.seed, chat_template=not args.no_chat_template, device=args.device,
                         progress=not args.quiet)
    print(format_style(result))
    if args.json:
        write_json_document(result.to_json(), args.json)
        wrote(args.json)


def format_style(result) -> str:
    """Per model p(style) with its CI over prompts and the paired shift vs the first model."""
    lines = [(f"p(style) = sum over openings {list(result.openings)} of their teacher-forced probability; "
              f"mean [95% CI over {len(result.prompt_ids)} prompts]")]
    for m in result.models:
        line = f"  {m.model}: {m.mean:.4f} [{m.ci95[0]:.4f}, {m.ci95[1]:.4f}]"
        if m.shift is not None:
            line += (f"   shift vs {result.models[0].model}: {m.shift:+.4f} [{m.shift_ci95[0]:+.4f}, "
                     f"{m.shift_ci95[1]:+.4f}] paired, p={m.shift_p_value:.3g}")
        lines.append(line)
    return "\n".join(lines)
