"""GRPO in the shape of the published recipes: one rollout, several mini-batch updates, PPO-clipped ratio.

Each rollout samples `group_size` responses for each of `rollout_prompts` training prompts from the current
policy π_old and scores them with the reward; the rollout is split, whole groups in rollout order, into
`updates_per_rollout` mini-batches, one optimizer step each (Rethink_RLVR: 64 prompts × 16 samples, train
batch 128, i.e. 8 updates per rollout; ε = 0.2, β = 0):

  A_i      = (r_i − mean_group r) / (std_group r + 1e-4)                 (0 for a group whose rewards agree)
  ratio_it = π_θ(o_it | q, o_<t) / π_old(o_it | q, o_<t)                 (π_old: the policy that sampled)
  L_it     = −min(ratio_it · A_i, clip(ratio_it, 1 − ε, 1 + ε) · A_i)    (`clip`; without it −ratio_it · A_i)
             + β · (π_ref/π_θ − log(π_ref/π_θ) − 1)                      (π_ref: the run's frozen start)
  loss     = mean over the mini-batch's responses of (mean over the response's tokens of L_it)

The first mini-batch is on-policy (ratio = 1); later ones see a policy moved by the earlier updates, so the
clip can bind. With random rewards the clip is what biases the update towards responses the policy already
favours (Shao et al., "Spurious Rewards", 2025). At `updates_per_rollout` = 1 every step is on-policy.
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
from probes.sampling import Batch, decode_responses, gather_tokens, generate, response_log_softmax, token_log_probs

CODE_OPENING = "```"


@dataclass(frozen=True)
class GRPOConfig:
    steps: int  # optimizer steps (checkpoint numbers count these)
    rollout_prompts: int
    group_size: int
    updates_per_rollout: int  # mini-batches per rollout; divides rollout_prompts
    lr: float
    max_new_tokens: int
    clip: bool = True
    clip_epsilon: float = 0.2
    kl_beta: float = 0.0
    temperature: float = 1.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.updates_per_rollout < 1 or self.rollout_prompts % self.updates_per_rollout:
            raise ValueError(f"updates_per_rollout={self.updates_per_rollout} must divide "
                             f"rollout_prompts={self.rollout_prompts}")


@dataclass(frozen=True)
class PolicyObjective:
    """Per-token loss and the shares of response tokens where the clip binds: `low` (ratio < 1 − ε with
    A < 0) and `high` (ratio > 1 + ε with A > 0); with the clip off they say where it would bind."""

    per_token: torch.Tensor
    clip_fraction_low: torch.Tensor
    clip_fraction_high: torch.Tensor


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r − group mean) / (group std + 1e-4), std with Bessel's correction; rewards are grouped consecutively."""
    grouped = rewards.view(-1, group_size)
    advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-4)
    return advantages.view(-1)


def policy_objective(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor, clip_epsilon: float, clip: bool) -> PolicyObjective:
    """−min(ratio·A, clip(ratio, 1 − ε, 1 + ε)·A) per token (−ratio·A with `clip` off), ratio = exp(log π − log π_old),
    and the clip fractions over the tokens where `mask` is 1."""
    ratio = torch.exp(log_probs - old_log_probs)
    a = advantages[:, None]
    unclipped = ratio * a
    per_token = -torch.minimum(unclipped, ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon) * a) if clip else -unclipped
    tokens = mask.sum().clamp(min=1)
    low = (((ratio < 1 - clip_epsilon) & (a < 0)).float() * mask).sum() / tokens
    high = (((ratio > 1 + clip_epsilon) & (a > 0)).float() * mask).sum() / tokens
    return PolicyObjective(per_token, low, high)


def sequence_mean(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over responses of each response's token mean (masked)."""
    return ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def kl_k3(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ ‖ π_ref) estimate exp(ref − θ) − (ref − θ) − 1 (≥ 0, unbiased on samples of π_θ)."""
    difference = ref_log_probs - log_probs
    return torch.exp(difference) - difference - 1


def exact_token_kl(log_softmax: torch.Tensor, ref_log_softmax: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over response tokens (where `mask` is 1) of the exact next-token KL(π_θ ‖ π_ref) at that position,
    Σ_v π_θ(v) (log π_θ(v) − log π_ref(v)), both distributions given the sampled prefix."""
    per_position = (log_softmax.exp() * (log_softmax - ref_log_softmax)).sum(dim=-1)
    return (per_position * mask).sum() / mask.sum().clamp(min=1)


def code_token_ids(tokenizer: PreTrainedTokenizerFast, opening: str = CODE_OPENING) -> list[int]:
    """Vocabulary ids whose decoded text starts with `opening` (for the lab tokenizer "```" and "```python")."""
    return [i for i in range(len(tokenizer)) if tokenizer.decode([i]).startswith(opening)]


def first_token_style(log_softmax: torch.Tensor, code_ids: list[int]) -> tuple[float, float]:
    """(entropy −Σ_v p log p, p(code) = Σ_{v ∈ code_ids} p(v)) of the first response token's distribution,
    each the mean over rows."""
    first = log_softmax[:, 0].detach()
    entropy = -(first.exp() * first).sum(dim=-1).mean().item()
    p_code = first[:, code_ids].exp().sum(dim=-1).mean().item() if code_ids else 0.0
    return entropy, p_code


def mini_batches(batch: Batch, updates: int) -> list[slice]:
    """`updates` consecutive row slices of equal size (whole groups when the rows per group divide it)."""
    rows = batch.input_ids.shape[0] // updates
    return [slice(i * rows, (i + 1) * rows) for i in range(updates)]


def rows_of(batch: Batch, rows: slice) -> Batch:
    return Batch(batch.input_ids[rows], batch.attention_mask[rows], batch.prompt_length, batch.response_mask[rows])


def train_grpo(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, problems: list[Problem],
               reward: Reward, settings: GRPOConfig, rng: random.Random, recorder: RunRecorder,
               progress: bool, description: str) -> None:
    """Run `settings.steps` optimizer steps of GRPO on `problems`; the recorder saves checkpoints on the way.

    Per optimizer step the training log gets: step; reward_mean and response_tokens_mean of the mini-batch;
    loss; clip_fraction_low, clip_fraction_high and clip_fraction (their sum); entropy_style and p_code_style
    (`first_token_style`: the first response token of the mini-batch's rollout prompts, from the loss's own
    forward pass; p_code_style sums the tokens that open with "```", a one-token proxy of the exact p(code) in
    style.jsonl); kl_to_base (`exact_token_kl` to the run's frozen start on the mini-batch, before the step).
    Sampling draws from torch's global generator and prompts from `rng`: seed both for a reproducible run.
    """
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    code_ids = code_token_ids(tokenizer)
    model.train()
    step = 0
    bar = tqdm(total=settings.steps, desc=description, disable=not progress)
    while step < settings.steps:
        chosen = rng.sample(problems, settings.rollout_prompts)
        prompts = [format_prompt(p.text) for p in chosen for _ in range(settings.group_size)]
        answers = [p.answer for p in chosen for _ in range(settings.group_size)]
        batch = generate(model, tokenizer, prompts, settings.max_new_tokens, sample=True,
                         temperature=settings.temperature)
        rewards = torch.tensor(reward(decode_responses(tokenizer, batch), answers), dtype=torch.float32)
        advantages = group_advantages(rewards, settings.group_size).to(batch.input_ids.device)
        slices = mini_batches(batch, settings.updates_per_rollout)
        with torch.no_grad():
            old_log_probs = [token_log_probs(model, rows_of(batch, rows)) for rows in slices]
        for rows, old in zip(slices, old_log_probs):
            if step >= settings.steps:
                break
            record = _update(model, reference, optimizer, rows_of(batch, rows), old, advantages[rows], code_ids,
                             settings)
            step += 1
            record = {"step": step, "reward_mean": rewards[rows].mean().item(), **record}
            recorder.log(record)
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward_mean']:.2f}", clip=f"{record['clip_fraction']:.3f}")
            recorder.after_step(model, step, settings.steps)
    bar.close()
    model.eval()


def _update(model: PreTrainedModel, reference: PreTrainedModel, optimizer: torch.optim.Optimizer, batch: Batch,
            old_log_probs: torch.Tensor, advantages: torch.Tensor, code_ids: list[int],
            settings: GRPOConfig) -> dict[str, float]:
    """One optimizer step on one mini-batch; the step's log record (without step and reward)."""
    mask = batch.response_mask.float()
    log_softmax = response_log_softmax(model, batch)
    log_probs = gather_tokens(log_softmax, batch)
    objective = policy_objective(log_probs, old_log_probs, advantages, mask, settings.clip_epsilon, settings.clip)
    per_token = objective.per_token
    with torch.no_grad():
        ref_log_softmax = response_log_softmax(reference, batch)
        kl = exact_token_kl(log_softmax.detach(), ref_log_softmax, mask).item()
    if settings.kl_beta > 0:
        per_token = per_token + settings.kl_beta * kl_k3(log_probs, gather_tokens(ref_log_softmax, batch))
    loss = sequence_mean(per_token, mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
    optimizer.step()
    entropy, p_code = first_token_style(log_softmax, code_ids)
    low, high = objective.clip_fraction_low.item(), objective.clip_fraction_high.item()
    return {"loss": loss.item(), "clip_fraction_low": low, "clip_fraction_high": high, "clip_fraction": low + high,
            "entropy_style": entropy, "p_code_style": p_code, "kl_to_base": kl,
            "response_tokens_mean": mask.sum(dim=1).mean().item()}
