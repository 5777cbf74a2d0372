"""Write the real DeepSpeed ZeRO-1/2/3 checkpoints under tests/fixtures/deepspeed/ (run once, commit the output).

Needs `DS_BUILD_OPS=0 pip install deepspeed` (0.19.8 wrote the committed files); runs on a CPU machine:
two gloo processes train a tiny Qwen2 (tied embeddings, one frozen tensor, odd sizes so ZeRO pads) in
bf16 for three AdamW steps and call `engine.save_checkpoint`. Beside each run it writes the same
weights through DeepSpeed's own tools, the reference the tests compare with number for number:
`expected_fp32.safetensors` (`get_fp32_state_dict_from_zero_checkpoint`, DeepSpeed's zero_to_fp32)
and, for ZeRO-1/2, `expected_16bit.safetensors` (the engine's bf16 module state dict); `base/` holds
the initial weights as a bf16 HF folder.

    PYTHONPATH=. python tests/fixtures_scripts/write_deepspeed_fixtures.py
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch
import torch.multiprocessing as mp
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "deepspeed"
WORLD_SIZE = 2
STEPS = 3
TAG = f"global_step{STEPS}"
FROZEN = "model.norm.weight"


def tiny_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=37, hidden_size=9, intermediate_size=21, num_hidden_layers=1, head_dim=4,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def train(rank: int, stage: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29650 + stage), RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE), LOCAL_RANK=str(rank), LOCAL_SIZE=str(WORLD_SIZE))
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")
    model = tiny_model()
    model.get_parameter(FROZEN).requires_grad_(False)
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "bf16": {"enabled": True},
              "zero_optimization": {"stage": stage},
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                      config=config)
    generator = torch.Generator().manual_seed(rank)
    for _ in range(STEPS):
        ids = torch.randint(0, 37, (1, 6), generator=generator)
        engine.backward(engine(input_ids=ids, labels=ids).loss)
        engine.step()
    engine.save_checkpoint(str(out), tag=TAG)
    if stage < 3 and rank == 0:
        state = {k: v.contiguous() for k, v in engine.module.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(out / "expected_16bit.safetensors"))


def main() -> None:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    shutil.rmtree(OUT, ignore_errors=True)
    base = tiny_model()
    base.to(torch.bfloat16).save_pretrained(OUT / "base")
    for stage in (1, 2, 3):
        out = OUT / f"zero{stage}"
        mp.start_processes(train, args=(stage, out), nprocs=WORLD_SIZE, start_method="fork")
        for script in out.glob("zero_to_*.py"):
            script.unlink()  # DeepSpeed's copies of its converters; not needed to read the checkpoint
        fp32 = get_fp32_state_dict_from_zero_checkpoint(str(out), tag=TAG)
        fp32 = {k: v.contiguous() for k, v in fp32.items() if k != "lm_head.weight"}
        save_file(fp32, str(out / "expected_fp32.safetensors"))
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
