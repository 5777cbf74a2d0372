"""A minimal GRPO: group-normalised advantages, PPO-clipped importance ratio over inner iterations, optional KL.

Each rollout samples `group_size` responses for each of `prompts_per_step` training prompts from the current
policy π_old, scores them with the reward function, and feeds `inner_iterations` optimizer steps:

  A_i      = (r_i − mean_group r) / (std_group r + 1e-4)                 (0 for a group whose rewards agree)
  ratio_it = π_θ(o_it | q, o_<t) / π_old(o_it | q, o_<t)
  L_it     = −min(ratio_it · A_i, clip(ratio_it, 1 − ε, 1 + ε) · A_i) + β · (π_ref/π_θ − log(π_ref/π_θ) − 1)
  loss     = mean over responses of (mean over the response's tokens of L_it)

The first inner iteration is on-policy (ratio = 1); later ones are off-policy and the clip bites. With
random rewards the clip is what biases the update towards responses the policy already favours (Shao et
al., "Spurious Rewards", 2025), so `inner_iterations` > 1 is the default. β = 0 skips the reference model.
fp32 master weights; on CUDA the forward passes run under bf16 autocast.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from probes.lab.recorder import RunRecorder
from probes.lab.rewards import Reward
from probes.lab.tasks import Problem
from probes.lab.tokenizer import format_prompt
from probes.sampling import Batch, decode_responses, generate, token_log_probs


@dataclass(frozen=True)
class GRPOConfig:
    steps: int  # optimizer steps (checkpoint numbers count these)
    prompts_per_step: int
    group_size: int
    lr: float
    max_new_tokens: int
    inner_iterations: int = 2
    clip_epsilon: float = 0.2
    kl_beta: float = 0.0
    temperature: float = 1.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r − group mean) / (group std + 1e-4), std with Bessel's correction; rewards are grouped consecutively."""
    grouped = rewards.view(-1, group_size)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.view(-1)


def clipped_objective(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                      mask: torch.Tensor, clip_epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token −min(ratio·A, clip(ratio)·A) (shape of `log_probs`) and the share of response tokens clipped."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = ratio * advantages[:, None]
    clipped = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * advantages[:, None]
    was_clipped = (clipped < unclipped).float()
    clip_fraction = (was_clipped * mask).sum() / mask.sum().clamp(min=1)
    return -torch.minimum(unclipped, clipped), clip_fraction


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over responses of each response's token mean (masked)."""
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def kl_k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate exp(ref − θ) − (ref − θ) − 1 (≥ 0, unbiased on samples of π_θ)."""
    difference = ref_log_probs - log_probs
    return torch.exp(difference) - difference - 1


def train_grpo(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
               reward: Reward, settings: GRPOConfig, rng: random.Random, recorder: RunRecorder,
               progress: bool, description: str) -> None:
    """Run `settings.steps` optimizer steps of GRPO on `problems`; the recorder saves checkpoints on the way.

    Sampling draws from torch's global generator and prompts from `rng`: seed both for a reproducible run.
    """
    reference = copy.deepcopy(model).eval() if settings.kl_beta > 0 else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    model.train()
    step = 0
    bar = tqdm(total=settings.steps, desc=description, disable=not progress)
    while step < settings.steps:
        chosen = rng.sample(problems, settings.prompts_per_step)
        prompts = [format_prompt(p.text) for p in chosen for _ in range(settings.group_size)]
        answers = [p.answer for p in chosen for _ in range(settings.group_size)]
        batch = generate(model, tokenizer, prompts, settings.max_new_tokens, sample=True,
                         temperature=settings.temperature)
        rewards = torch.tensor(reward(decode_responses(tokenizer, batch), answers), dtype=torch.float32)
        advantages = group_advantages(rewards, settings.group_size).to(batch.input_ids.device)
        mask = batch.response_mask.float()
        with torch.no_grad():
            old_log_probs = token_log_probs(model, batch)
            ref_log_probs = token_log_probs(reference, batch) if reference is not None else None
        for _ in range(settings.inner_iterations):
            if step >= settings.steps:
                break
            loss, clip_fraction = _loss(model, batch, old_log_probs, ref_log_probs, advantages, mask, settings)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            step += 1
            recorder.log({"step": step, "reward_mean": rewards.mean().item(), "loss": loss.item(),
                          "clip_fraction": clip_fraction.item(),
                          "response_tokens_mean": mask.sum(dim=1).mean().item()})
            bar.update(1)
            bar.set_postfix(reward=f"{rewards.mean().item():.2f}")
            recorder.after_step(model, step, settings.steps)
    bar.close()
    model.eval()


def _loss(model: PreTrainedModel, batch: Batch, old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor | None,
          advantages: torch.Tensor, mask: torch.Tensor, settings: GRPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    log_probs = token_log_probs(model, batch)
    per_token, clip_fraction = clipped_objective(log_probs, old_log_probs, advantages, mask, settings.clip_epsilon)
    if ref_log_probs is not None:
        per_token = per_token + settings.kl_beta * kl_k3(log_probs, ref_log_probs)
    return sequence_mean(per_token, mask), clip_fraction

