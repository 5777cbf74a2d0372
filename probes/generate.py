"""Write generations for the behavior probe: greedy and seeded sampled responses of one local model.

Greedy responses are deterministic; sampled pass j (1..n) first seeds torch's generator from (seed, j), so
the same seed, batch size and device give the same file.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from probes.generations import Generation
from probes.models import Prompt, format_for_model
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
