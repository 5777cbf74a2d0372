"""Model-running probes on a Qwen2.5-0.5B-shaped model with random weights (no hub): KL scoring, sampling and
empirical-Fisher throughput and peak GPU memory.

KL scoring is timed on two paths, on a large drift (every bf16 weight moved by N(0, 1e-3²)) and an RLVR-scale
one (N(0, 1e-6²): a few bf16 weights flip), each against a float64 reference (float64 models, float64
log-softmaxes) on the first --reference-sequences sequences:
  old  the path before issue 14: stored bf16 weights under bf16 autocast, full-sequence logits, two float32
       log-softmaxes subtracted (`old_token_kl`, kept here for the comparison only);
  new  `probes.kl.batch_token_kl`: float32 weights and forward, response logits only, KL from the logit
       difference in float64.

    PYTHONPATH=. python bench/bench_probes.py [--batch 16 --response-tokens 256 --fisher-layers 0,1]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, Qwen2Config, Qwen2ForCausalLM

from dynamics.naming import layer_index
from probes.fisher import empirical_fisher_diagonal, parse_layers, sequence_losses
from probes.kl import batch_token_kl
from probes.sampling import Batch, response_mask

QWEN25_05B = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 4096,
              "tie_word_embeddings": True}
EOS = 151643


def timed(fn) -> tuple[object, float]:
    torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def old_token_kl(tuned: PreTrainedModel, base: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Forward KL per response position as `probes.kl` computed it before issue 14 (see the module doc)."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    def logits(model: PreTrainedModel) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                         use_cache=False).logits[:, batch.prompt_length - 1:-1]

    z_t, z_b = logits(tuned), logits(base)
    flat_t, flat_b = z_t.reshape(-1, z_t.shape[-1]), z_b.reshape(-1, z_b.shape[-1])
    forward = torch.empty(flat_t.shape[0], device=flat_t.device)
    for start in range(0, len(forward), 1024):
        log_t, log_b = F.log_softmax(flat_t[start:start + 1024].float(), -1), F.log_softmax(flat_b[start:start + 1024].float(), -1)
        forward[start:start + 1024] = (log_t.exp() * (log_t - log_b)).sum(-1)
    return forward.view_as(batch.response_mask) * batch.response_mask


def reference_token_kl(tuned: PreTrainedModel, base: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """Forward KL per response position from float64 copies of both models and float64 log-softmaxes."""
    position_ids = (batch.attention_mask.cumsum(dim=1) - 1).clamp(min=0)

    def log_probs(model: PreTrainedModel) -> torch.Tensor:
        model64 = copy.deepcopy(model).double()
        with torch.no_grad():
            logits = model64(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             position_ids=position_ids, use_cache=False).logits[:, batch.prompt_length - 1:-1]
        del model64
        return F.log_softmax(logits, -1)

    log_t = log_probs(tuned)
    log_b = log_probs(base)
    return (log_t.exp() * (log_t - log_b)).sum(-1) * batch.response_mask


def perturbed(base: PreTrainedModel, scale: float) -> PreTrainedModel:
    """A bf16 copy of `base` with every weight moved by N(0, scale²) in float32, rounded back to bf16."""
    tuned = copy.deepcopy(base)
    device = next(base.parameters()).device
    generator = torch.Generator(device=device).manual_seed(1)
    with torch.no_grad():
        for p in tuned.parameters():
            p.copy_((p.float() + scale * torch.randn(p.shape, device=device, generator=generator)).to(p.dtype))
    return tuned


def report_path(name: str, scores, batch: Batch, rows: Batch, reference: torch.Tensor) -> None:
    """One KL path (`scores(batch)` → per-position forward KL): tokens/s, peak memory, error vs float64."""
    kept = batch.response_mask.bool()
    scores(batch)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    forward, seconds = timed(lambda: scores(batch))
    error = abs(float(scores(rows)[rows.response_mask.bool()].double().mean() / reference.mean()) - 1)
    print(f"  {name}: {int(kept.sum()) / seconds:,.0f} response tokens/s, peak "
          f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (weights included); mean KL "
          f"{float(forward[kept].double().mean()):.4g}, relative error of the mean vs float64 {error:.2e}, "
          f"{int((forward[kept] < 0).sum())} of {int(kept.sum())} per-token values negative")


def bench_kl(base: PreTrainedModel, batch: Batch, reference_sequences: int) -> None:
    """Old and new KL paths on a large and an RLVR-scale drift (module doc)."""
    rows = Batch(batch.input_ids[:reference_sequences], batch.attention_mask[:reference_sequences],
                 batch.prompt_length, batch.response_mask[:reference_sequences])
    base32 = copy.deepcopy(base).float()
    for label, scale in (("large drift", 1e-3), ("RLVR-scale drift", 1e-6)):
        tuned = perturbed(base, scale)
        tuned32 = copy.deepcopy(tuned).float()
        reference = reference_token_kl(tuned32, base32, rows)[rows.response_mask.bool()].double()
        print(f"KL scoring, {label} (weights + N(0, {scale:g}²), stored bf16), full {base.config.vocab_size}-token "
              f"vocabulary; float64 reference {float(reference.mean()):.4g} nats/token on {reference_sequences} "
              "sequences:")
        report_path("old (bf16 weights + autocast, float32 log-softmaxes)",
                    lambda b, t=tuned: old_token_kl(t, base, b), batch, rows, reference)
        report_path("new (float32 forward, float64 KL from the logit difference)",
                    lambda b, t=tuned32: batch_token_kl(t, base32, b)[0], batch, rows, reference)
        del tuned, tuned32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--fisher-sequences", type=int, default=16)
    parser.add_argument("--fisher-layers", default="0,1")
    parser.add_argument("--reference-sequences", type=int, default=4, help="sequences scored by the float64 reference")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(**QWEN25_05B, eos_token_id=EOS, pad_token_id=EOS)
    base = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).eval()
    n_params = sum(p.numel() for p in base.parameters())
    print(f"model: {n_params / 1e6:.0f}M parameters, bf16, {torch.cuda.get_device_name()}")

    prompts = torch.randint(0, EOS, (args.batch, args.prompt_tokens), device="cuda")
    attention = torch.ones_like(prompts)

    def sample():
        return base.generate(input_ids=prompts, attention_mask=attention, do_sample=True,
                             max_new_tokens=args.response_tokens, min_new_tokens=args.response_tokens,
                             top_k=0, top_p=1.0)

    sample()  # warm-up: CUDA context, cuBLAS handles, generation caches
    torch.cuda.reset_peak_memory_stats()
    output, seconds = timed(sample)
    generated = output[:, args.prompt_tokens:]
    print(f"sampling: {generated.numel() / seconds:,.0f} tokens/s (batch {args.batch}, {args.response_tokens} new "
          f"tokens), peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    base32 = copy.deepcopy(base).float()
    torch.cuda.reset_peak_memory_stats()
    _, seconds = timed(lambda: base32.generate(input_ids=prompts, attention_mask=attention, do_sample=True,
                                               max_new_tokens=args.response_tokens,
                                               min_new_tokens=args.response_tokens, top_k=0, top_p=1.0))
    print(f"sampling with float32 weights and forward (probe kl's default): {generated.numel() / seconds:,.0f} "
          f"tokens/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    mask = response_mask(generated, EOS)
    batch = Batch(output, torch.cat([attention, mask], dim=1), args.prompt_tokens, mask)
    bench_kl(base, batch, args.reference_sequences)

    layers = parse_layers(args.fisher_layers)
    model = Qwen2ForCausalLM(config).to("cuda", torch.float32)
    selected = {n: p for n, p in model.named_parameters() if p.ndim == 2 and layer_index(n) in layers}
    for n, p in model.named_parameters():
        p.requires_grad_(n in selected)
    rows = Batch(output[:args.fisher_sequences], batch.attention_mask[:args.fisher_sequences], args.prompt_tokens,
                 mask[:args.fisher_sequences])
    torch.cuda.reset_peak_memory_stats()
    (_, n), seconds = timed(lambda: empirical_fisher_diagonal(selected, sequence_losses(model, rows)))
    weights = sum(p.numel() for p in selected.values())
    print(f"Fisher (float32 model, layers {args.fisher_layers}: {weights / 1e6:.1f}M weights): {n / seconds:.1f} "
          f"sequences/s = {n * (args.prompt_tokens + args.response_tokens) / seconds:,.0f} tokens/s, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
