"""Seconds per GRPO optimizer step of a lab preset, split into rollout sampling, the mini-batch update, and the
held-out evaluation of one saved step, on an untrained model of the preset's shape (it writes to the token
limit, the worst case), to size the GPU study.

    PYTHONPATH=. python bench/bench_lab_step.py --size small --device cuda            # one process
    PYTHONPATH=. python bench/bench_lab_step.py --size small --device cpu --rollout-prompts 8 --heldout 16

Prints one JSON line: seconds per rollout, per update, per evaluation, and the per-run total for the preset
(rollouts + updates + evaluations at every saved step and at step 0).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import Qwen2ForCausalLM

from dynamics.devices import resolve_device
from probes.lab.checkpoints import save_checkpoint
from probes.lab.grpo import _update, code_token_ids, group_advantages, mini_batches, rows_of
from probes.lab.models import MODEL_SHAPES, qwen2_config
from probes.lab.recorder import RunLabels, evaluate
from probes.lab.study import LAB_PRESETS
from probes.lab.tasks import make_problems
from probes.lab.tokenizer import format_prompt, train_tokenizer
from probes.sampling import generate, token_log_probs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="small", choices=sorted(LAB_PRESETS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rollout-prompts", type=int, help="fewer prompts per rollout than the preset (CPU)")
    parser.add_argument("--heldout", type=int, help="fewer held-out prompts than the preset (CPU)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(2)
    config = LAB_PRESETS[args.size]
    grpo = config.grpo
    if args.rollout_prompts:
        grpo = replace(grpo, rollout_prompts=args.rollout_prompts,
                       updates_per_rollout=min(grpo.updates_per_rollout, args.rollout_prompts))
    problems = make_problems(2000, "train", 0, config.max_operand)
    heldout = make_problems(args.heldout or config.heldout_problems, "heldout", 1, config.max_operand)
    texts = [format_prompt(p.text) + "First, 1 + 2 = 3. ```python\ntotal = 1\n```\\boxed{3}" for p in problems]
    tokenizer = train_tokenizer(texts, MODEL_SHAPES[config.size].vocab_size)
    torch.manual_seed(0)
    shape = MODEL_SHAPES[config.size]
    model = Qwen2ForCausalLM(qwen2_config(shape, tokenizer.eos_token_id, tokenizer.pad_token_id)).to(device)
    reference = Qwen2ForCausalLM(qwen2_config(shape, tokenizer.eos_token_id, tokenizer.pad_token_id)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=grpo.lr)
    chosen = random.Random(0).sample(problems, grpo.rollout_prompts)
    prompts = [format_prompt(p.text) for p in chosen for _ in range(grpo.group_size)]

    def timed(function):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        result = function()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, result

    generate(model, tokenizer, prompts[:8], 4, sample=True)  # warm-up
    rollout_s, batch = timed(lambda: generate(model, tokenizer, prompts, grpo.max_new_tokens, sample=True))
    advantages = group_advantages(torch.rand(len(prompts)), grpo.group_size).to(device)
    slices = mini_batches(batch, grpo.updates_per_rollout)
    old_s, olds = timed(lambda: [token_log_probs(model, rows_of(batch, rows)).detach() for rows in slices])
    ids = code_token_ids(tokenizer)
    update_s, _ = timed(lambda: [_update(model, reference, optimizer, rows_of(batch, rows), old, advantages[rows],
                                         ids, grpo) for rows, old in zip(slices, olds)])
    evaluation_s, _ = timed(lambda: evaluate(model, tokenizer, heldout, RunLabels("r", "random", 1), 1,
                                             config.evaluation))
    with tempfile.TemporaryDirectory() as folder:
        save_s, _ = timed(lambda: save_checkpoint(model, tokenizer, Path(folder) / "checkpoint-1", torch.bfloat16))
    rollouts = grpo.steps / grpo.updates_per_rollout
    saves = grpo.steps // config.rl_save_every_steps
    per_run = rollouts * (rollout_s + old_s) + grpo.steps * update_s / len(slices) + (saves + 1) * evaluation_s \
        + saves * save_s
    print(json.dumps({"size": config.size, "device": str(device), "rows_per_rollout": len(prompts),
                      "response_tokens": int(batch.response_mask.sum(dim=1).float().mean().item()),
                      "rollout_s": round(rollout_s, 3), "old_log_probs_s": round(old_s, 3),
                      "update_s": round(update_s / len(slices), 4), "evaluation_s": round(evaluation_s, 3),
                      "save_s": round(save_s, 3), "steps": grpo.steps,
                      "per_run_s_at_these_rollout_sizes": round(per_run, 1)}))


if __name__ == "__main__":
    main()
