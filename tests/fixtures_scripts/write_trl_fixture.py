"""Write a real TRL SFT run under tests/fixtures/trl_sft/ (run once, commit the output).

Needs `pip install trl` (1.16.0 wrote the committed files; transformers 5.24, torch 2.13 CPU). A tiny
Qwen2 (two layers, tied embeddings, the local tokenizer of tests/tiny_lm.py) is trained for three
AdamW steps by `trl.SFTTrainer` in float32 with weight decay (so HF Trainer's two parameter groups,
decay and no decay, both exist), saving `checkpoint-1`, `-2`, `-3` (model.safetensors, optimizer.pt,
scheduler.pt, trainer_state.json, ...) as any TRL run does. `base/` holds the initial weights.

The reference the tests compare with: a callback reads the live optimizer at every save and writes
`expected_moments_step{N}.safetensors` (`{name}.exp_avg`, `{name}.exp_avg_sq`), keyed by the
parameter *object* the optimizer holds (`optimizer.state[p]` for `p` of `model.named_parameters()`),
so the index -> name mapping under test is checked against identity, not against another guess.

    PYTHONPATH=. python tests/fixtures_scripts/write_trl_fixture.py
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, TrainerCallback
from trl import SFTConfig, SFTTrainer

from probes.lab.tokenizer import train_tokenizer
from tests.tiny_lm import TEXTS

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "trl_sft"
STEPS = 3


class SaveMoments(TrainerCallback):
    """At every checkpoint, the optimizer's moments by parameter name (the ground truth)."""

    def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
        moments = {}
        for name, p in model.named_parameters():
            if p in optimizer.state:
                moments[f"{name}.exp_avg"] = optimizer.state[p]["exp_avg"].detach().clone()
                moments[f"{name}.exp_avg_sq"] = optimizer.state[p]["exp_avg_sq"].detach().clone()
        save_file(moments, str(OUT / f"expected_moments_step{state.global_step}.safetensors"))


def main() -> None:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=64,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(OUT / "base")
    args = SFTConfig(output_dir=str(OUT / "run"), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=5e-4,
                     weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=0, logging_steps=1, save_steps=1,
                     save_strategy="steps", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
                     max_length=48, save_only_model=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": TEXTS}),
                         processing_class=tokenizer, callbacks=[SaveMoments()])
    trainer.train()
    for checkpoint in sorted((OUT / "run").glob("checkpoint-*")):
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
            (checkpoint / name).unlink(missing_ok=True)  # the tokenizer is not what the tests read


if __name__ == "__main__":
    main()
