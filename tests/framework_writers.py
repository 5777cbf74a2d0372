"""Checkpoints written by the real torch.distributed code paths, in a test's tmp folder.

`write_fsdp2_run` runs two gloo processes (forked, CPU) that shard a tiny Qwen2 actor and critic
with FSDP2 `fully_shard` and save them as verl's FSDPCheckpointManager does
(`global_step_N/{actor,critic}/model_world_size_2_rank_R.pt` from `model.state_dict()`; the actor also
takes an AdamW step on random DTensor gradients and saves `optim_world_size_2_rank_R.pt` from
`optimizer.state_dict()`, its moments by parameter name in `expected_moments_stepN_actor.safetensors`), plus the
same step as a two-rank DCP folder (`dcp.save` of the sharded state dict); each full tensor is also
exported to safetensors through `DTensor.full_tensor()` for the tests to compare against.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import save_file

WORLD_SIZE = 2
CONFIG = {"vocab_size": 37, "hidden_size": 9, "intermediate_size": 21, "num_hidden_layers": 1, "head_dim": 4,
          "num_attention_heads": 2, "num_key_value_heads": 1, "tie_word_embeddings": True}


def tiny_models() -> dict[str, torch.nn.Module]:
    """verl's two trained models: the actor (causal LM, tied embeddings) and the critic (one score)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2ForTokenClassification

    torch.manual_seed(0)
    actor = Qwen2ForCausalLM(Qwen2Config(**CONFIG))
    critic = Qwen2ForTokenClassification(Qwen2Config(**CONFIG, num_labels=1))
    return {"actor": actor, "critic": critic}


def _worker(rank: int, root: Path, port: int, steps: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    models = tiny_models()
    for model in models.values():
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(models["actor"].parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(1, steps + 1):
        for name, model in models.items():
            with torch.no_grad():
                g = torch.Generator().manual_seed(100 * step + rank)
                for p in model.parameters():
                    local = p.to_local()
                    local.add_(1e-3 * torch.randn(local.shape, generator=g))
                    if name == "actor":
                        p.grad = DTensor.from_local(torch.randn(local.shape, generator=g), p.device_mesh, p.placements,
                                                    shape=p.shape, stride=p.stride())
            folder = root / f"global_step_{step}" / name
            folder.mkdir(parents=True, exist_ok=True)
            if name == "actor":
                optimizer.step()
                torch.save(optimizer.state_dict(), folder / f"optim_world_size_{WORLD_SIZE}_rank_{rank}.pt")
                moments = {f"{n}.{key}": optimizer.state[p][key].full_tensor() for n, p in model.named_parameters()
                           for key in ("exp_avg", "exp_avg_sq")}
                if rank == 0:
                    save_file(moments, str(root / f"expected_moments_step{step}_actor.safetensors"))
            state = model.state_dict()
            torch.save(state, folder / f"model_world_size_{WORLD_SIZE}_rank_{rank}.pt")
            full = {k: v.full_tensor().contiguous() for k, v in state.items() if k != "lm_head.weight"}
            if step == steps and name == "actor":
                dcp.save(state, checkpoint_id=str(root / "dcp_sharded"))
            if rank == 0:
                (folder / "huggingface").mkdir(exist_ok=True)
                (folder / "huggingface" / "config.json").write_text(json.dumps(model.config.to_dict()))
                (folder / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": WORLD_SIZE}))
                save_file(full, str(root / f"expected_step{step}_{name}.safetensors"))
    dist.destroy_process_group()


def write_fsdp2_run(root: Path, steps: int = 2) -> Path:
    """`root/global_step_{1..steps}/{actor,critic}/` verl FSDP2 shards, `root/dcp_sharded/` (the last
    actor step as DCP) and `root/expected_step{N}_{actor,critic}.safetensors`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    tiny_models()  # import transformers' Qwen2 once here, not in each forked process
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_worker, args=(root, port, steps), nprocs=WORLD_SIZE, start_method="fork")
    return root
