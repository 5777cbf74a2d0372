"""Write generations for the behavior probe: greedy and seeded sampled responses of one local model.

Greedy responses are deterministic; sampled pass j (1..n) first seeds torch's generator from (seed, j), so
the same seed, batch size and device give the same file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probes.generations import Generation, write_generations
from probes.models import Prompt, format_for_model, load_model, load_tokenizer, read_prompts, resolve_device
from probes.sampling import decode_responses, generate


def _batches(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def generate_responses(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[Prompt], *,
                       greedy: bool = True, samples_per_prompt: int = 0, max_new_tokens: int = 256,
                       temperature: float = 1.0, batch_size: int = 16, seed: int = 0, run: str = "run",
                       step: int = 0, reward: str = "none", chat_template: bool = True,
                       progress: bool = False) -> list[Generation]:
    """Greedy response (sample 0) and `samples_per_prompt` sampled ones (samples 1..n) for every prompt."""
    texts = [format_for_model(tokenizer, p.prompt, chat_template) for p in prompts]
    passes = ([("greedy", 0)] if greedy else []) + [("sampled", j) for j in range(1, samples_per_prompt + 1)]
    out = []
    bar = tqdm(total=len(passes) * len(prompts), desc="generate", disable=not progress)
    for decoding, sample in passes:
        if decoding == "sampled":
            torch.manual_seed(seed * 1_000_003 + sample)
        for chunk in _batches(list(range(len(prompts))), batch_size):
            batch = generate(model, tokenizer, [texts[i] for i in chunk], max_new_tokens,
                             sample=decoding == "sampled", temperature=temperature)
            for i, response in zip(chunk, decode_responses(tokenizer, batch)):
                p = prompts[i]
                out.append(Generation(prompt=p.prompt, response=response, prompt_id=p.prompt_id, answer=p.answer,
                                      run=run, step=step, seed=seed, reward=reward, sample=sample,
                                      decoding=decoding))
            bar.update(len(chunk))
    bar.close()
    return out


def run_generate_command(args: argparse.Namespace) -> None:
    """`dynamics probe generate MODEL --prompts P --out gens.jsonl`."""
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, device)
    generations = generate_responses(
        model, tokenizer, read_prompts(args.prompts), greedy=not args.no_greedy,
        samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, batch_size=args.batch_size, seed=args.seed,
        run=args.run_label or Path(args.model).resolve().name, step=args.step, reward=args.reward,
        chat_template=not args.no_chat_template, progress=not args.quiet)
    write_generations(generations, args.out)
    print(f"wrote {len(generations)} responses to {args.out}")
