"""Three tiny Qwen2 checkpoints (base, RL-tuned, SFT-tuned) for `dynamics demo`.

The demo needs a checkpoint pair whose update looks like RL (tiny learning rate, few steps:
most bf16-stored weights keep their bits) and one that looks like SFT (larger learning rate,
more steps: almost every weight moves). Both come from the same briefly pretrained base, so the
comparison is fair, and everything is built from a config and trained on CPU in seconds.

Task: reverse a sequence of symbols. A sequence reads
`<bos> x_1 … x_L <sep> y_1 … y_L <eos>`; the base rule is y = reverse(x). The SFT run trains a
shifted rule, y_i = (x_{L+1-i} + 1) mod n_symbols, so its update has to rewrite the output map.

Training keeps float32 master weights throughout (AdamW); only the saved files are bfloat16,
written from a bf16 copy, as mixed-precision trainers do.

Example:
    >>> from pathlib import Path
    >>> folders = make_demo_checkpoints(Path("demo-out"))  # doctest: +SKIP
    >>> sorted(folders)  # doctest: +SKIP
    ['base', 'rl', 'sft']
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.utils import logging as transformers_logging

# The sizes are fixed so that a given seed always gives the same files.
VOCAB_SIZE = 96
N_SYMBOLS = VOCAB_SIZE - 3
BOS, SEP, EOS = N_SYMBOLS, N_SYMBOLS + 1, N_SYMBOLS + 2
SEQUENCE_LENGTH = 5
PROMPT_LENGTH = SEQUENCE_LENGTH + 2  # <bos> x_1 … x_L <sep>
ANSWER_LENGTH = SEQUENCE_LENGTH + 1  # y_1 … y_L <eos>
# CPU matmul results can depend on how a reduction is split across threads; a fixed count
# keeps the saved bits independent of the caller's setting (2 is also the fastest here).
NUM_THREADS = 2


@dataclass(frozen=True)
class DemoTrainingConfig:
    """Step counts and learning rates of the three phases (see the module docstring)."""

    # Stops on purpose before the task is mastered: sampling, the base answers 25–75% of the
    # prompts right (seeds 0–3), so most RL groups mix rewards 0 and 1 and carry a gradient.
    pretrain_steps: int = 250
    pretrain_lr: float = 3e-3
    pretrain_batch_size: int = 64
    # Typical of GRPO runs on LLMs: lr 1e-6..3e-6, a few dozen steps.
    rl_steps: int = 40
    rl_lr: float = 2e-6
    rl_prompts_per_step: int = 8
    rl_group_size: int = 8
    # Enough to move the model onto the shifted rule (15–75% of sampled answers exact, seeds
    # 0–3) and off the base rule (0%).
    sft_steps: int = 300
    sft_lr: float = 3e-4
    sft_batch_size: int = 64
    weight_decay: float = 0.01


def make_demo_checkpoints(out_dir: Path, seed: int = 0, progress: bool = True) -> dict[str, Path]:
    """Train a tiny base model, tune it twice (RL-like, SFT-like) and save the three in bf16 and fp32.

    Takes about 7 s on two CPU cores, plus a few seconds to import torch and transformers.
    The caller's torch random state and thread count are left as they were.

    Args:
        out_dir: folder that receives `base/`, `rl/` and `sft/`, each a Hugging Face folder
            (`config.json` + `model.safetensors`, weights stored in bfloat16).
        seed: same seed, same machine → bit-identical files.
        progress: show one tqdm bar per training phase.

    Returns:
        {"base": out_dir / "base", "rl": ..., "sft": ...} stored in bfloat16, and the fp32 master
        weights of each under "base_fp32", "rl_fp32", "sft_fp32" (folders `base-fp32/`, ...).
    """
    settings = DemoTrainingConfig()
    out_dir = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(NUM_THREADS)
    try:
        # The model's initialisation draws from the global generator: fork it so the caller's
        # state survives. Each phase has its own data generator, so changing one phase's step
        # count leaves the data of the others as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(4 * seed)
            base = Qwen2ForCausalLM(demo_model_config())
            pretrain(base, settings, torch.Generator().manual_seed(4 * seed + 1), progress)

            rl_model = copy.deepcopy(base)
            train_rl(rl_model, settings, torch.Generator().manual_seed(4 * seed + 2), progress)

            sft_model = copy.deepcopy(base)
            train_sft(sft_model, settings, torch.Generator().manual_seed(4 * seed + 3), progress)
    finally:
        torch.set_num_threads(previous_threads)

    folders = {}
    for name, model in (("base", base), ("rl", rl_model), ("sft", sft_model)):
        folders[name] = out_dir / name
        save_checkpoint(model, folders[name], torch.bfloat16)
        folders[f"{name}_fp32"] = out_dir / f"{name}-fp32"
        save_checkpoint(model, folders[f"{name}_fp32"], torch.float32)
    return folders


def demo_model_config() -> Qwen2Config:
    """A 105k-parameter Qwen2: 2 layers, hidden 64, 4 query / 2 key-value heads, vocab 96."""
    # Untied embeddings so that embed_tokens and lm_head are separate tensors in the diff.
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
        attn_implementation="eager",
    )


def sample_prompts(batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Random prompts `<bos> x_1 … x_L <sep>`, shape (batch_size, PROMPT_LENGTH)."""
    symbols = torch.randint(0, N_SYMBOLS, (batch_size, SEQUENCE_LENGTH), generator=generator)
    bos = torch.full((batch_size, 1), BOS)
    sep = torch.full((batch_size, 1), SEP)
    return torch.cat([bos, symbols, sep], dim=1)


def correct_answers(prompts: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """Answers `y_1 … y_L <eos>` with y_i = (x_{L+1-i} + shift) mod N_SYMBOLS."""
    symbols = prompts[:, 1 : 1 + SEQUENCE_LENGTH]
    answers = (symbols.flip(1) + shift) % N_SYMBOLS
    eos = torch.full((prompts.shape[0], 1), EOS)
    return torch.cat([answers, eos], dim=1)


def answer_log_probs(model: Qwen2ForCausalLM, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """log π(answer token | prefix) for every answer position, shape (batch, ANSWER_LENGTH)."""
    sequences = torch.cat([prompts, answers], dim=1)
    logits = model(input_ids=sequences, use_cache=False).logits
    # The logit at position t predicts token t + 1.
    answer_logits = logits[:, PROMPT_LENGTH - 1 : -1].float()
    log_probs = F.log_softmax(answer_logits, dim=-1)
    return log_probs.gather(-1, answers.unsqueeze(-1)).squeeze(-1)


def answer_loss(model: Qwen2ForCausalLM, prompts: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy (nats per token) of the answer tokens; log(VOCAB_SIZE) at chance."""
    return -answer_log_probs(model, prompts, answers).mean()


def pretrain(model: Qwen2ForCausalLM, settings: DemoTrainingConfig, generator: torch.Generator, progress: bool) -> None:
    """Cross-entropy on the answers of the base rule (reverse), fresh random prompts each step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.pretrain_lr, weight_decay=settings.weight_decay)
    warmup_steps = max(1, settings.pretrain_steps // 10)

    def learning_rate_factor(step: int) -> float:
        # Linear warmup, cosine decay: a short run still ends at a settled model.
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        fraction = (step - warmup_steps) / max(1, settings.pretrain_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * fraction))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    _supervised_loop(
        model,
        optimizer,
        scheduler,
        steps=settings.pretrain_steps,
        batch_size=settings.pretrain_batch_size,
        shift=0,
        generator=generator,
        description="pretrain base",
        progress=progress,
    )


def train_sft(
    model: Qwen2ForCausalLM, settings: DemoTrainingConfig, generator: torch.Generator, progress: bool
) -> None:
    """SFT-like update: constant larger learning rate, cross-entropy on a shifted rule (+1)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.sft_lr, weight_decay=settings.weight_decay)
    _supervised_loop(
        model,
        optimizer,
        None,
        steps=settings.sft_steps,
        batch_size=settings.sft_batch_size,
        shift=1,
        generator=generator,
        description="fine-tune sft",
        progress=progress,
    )


def _supervised_loop(
    model: Qwen2ForCausalLM,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    steps: int,
    batch_size: int,
    shift: int,
    generator: torch.Generator,
    description: str,
    progress: bool,
) -> None:
    model.train()
    bar = tqdm(range(steps), desc=description, disable=not progress)
    for _ in bar:
        prompts = sample_prompts(batch_size, generator)
        loss = answer_loss(model, prompts, correct_answers(prompts, shift))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()


@torch.no_grad()
def sample_answers(model: Qwen2ForCausalLM, prompts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sample ANSWER_LENGTH tokens at temperature 1 (no cache: the sequences are 13 tokens)."""
    sequences = prompts
    for _ in range(ANSWER_LENGTH):
        logits = model(input_ids=sequences, use_cache=False).logits[:, -1].float()
        next_tokens = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
        sequences = torch.cat([sequences, next_tokens], dim=1)
    return sequences[:, PROMPT_LENGTH:]


def train_rl(model: Qwen2ForCausalLM, settings: DemoTrainingConfig, generator: torch.Generator, progress: bool) -> None:
    """RL-like update: GRPO-style policy gradient on the base rule, tiny learning rate.

    Each step samples `rl_group_size` answers for each of `rl_prompts_per_step` prompts;
    reward r = 1 if the whole answer is correct else 0; advantage A = (r − mean_group) /
    (std_group + 1e-6), zero for a group whose samples all agree; loss = −mean(A · log π) over
    sampled tokens. One gradient step per batch (on-policy: the ratio is 1, clipping is moot);
    no KL penalty.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.rl_lr, weight_decay=settings.weight_decay)
    bar = tqdm(range(settings.rl_steps), desc="fine-tune rl", disable=not progress)
    for _ in bar:
        prompts = sample_prompts(settings.rl_prompts_per_step, generator)
        prompts = prompts.repeat_interleave(settings.rl_group_size, dim=0)
        model.eval()
        answers = sample_answers(model, prompts, generator)
        rewards = (answers == correct_answers(prompts)).all(dim=1).float()
        grouped = rewards.view(settings.rl_prompts_per_step, settings.rl_group_size)
        advantages = (grouped - grouped.mean(dim=1, keepdim=True)) / (grouped.std(dim=1, keepdim=True) + 1e-6)
        model.train()
        log_probs = answer_log_probs(model, prompts, answers)
        loss = -(advantages.view(-1, 1) * log_probs).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(reward=f"{rewards.mean().item():.2f}")
    model.eval()


def save_checkpoint(model: Qwen2ForCausalLM, folder: Path, dtype: torch.dtype) -> None:
    """Save a copy in `dtype` as a Hugging Face folder; the float32 master model is left untouched."""
    copy_in_dtype = copy.deepcopy(model).to(dtype)
    # transformers draws a bar per shard; for a 200 kB file it is noise.
    bars_were_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        copy_in_dtype.save_pretrained(folder)
    finally:
        if bars_were_enabled:
            transformers_logging.enable_progress_bar()
