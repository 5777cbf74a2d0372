"""Model-running probes on a Qwen2.5-0.5B-shaped model with random weights (no hub): KL scoring, sampling and
empirical-Fisher throughput and peak GPU memory.

    PYTHONPATH=. python bench/bench_probes.py [--batch 16 --response-tokens 256 --fisher-layers 0,1]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--response-tokens", type=int, default=256)
    parser.add_argument("--fisher-sequences", type=int, default=16)
    parser.add_argument("--fisher-layers", default="0,1")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = Qwen2Config(**QWEN25_05B, eos_token_id=EOS, pad_token_id=EOS)
    base = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).eval()
    tuned = Qwen2ForCausalLM(config).to("cuda", torch.bfloat16).eval()
    tuned.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(1e-3 * torch.randn_like(p))
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

    mask = response_mask(generated, EOS)
    batch = Batch(output, torch.cat([attention, mask], dim=1), args.prompt_tokens, mask)
    batch_token_kl(tuned, base, batch)  # warm-up
    torch.cuda.reset_peak_memory_stats()
    (forward, _), seconds = timed(lambda: batch_token_kl(tuned, base, batch))
    tokens = int(mask.sum())
    print(f"KL scoring (both models, full {config.vocab_size}-token vocabulary, float32 log-softmax): "
          f"{tokens / seconds:,.0f} response tokens/s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB; "
          f"mean KL {float(forward.sum() / mask.sum()):.4g}")

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
