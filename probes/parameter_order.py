"""Which name each index of an HF Trainer / TRL `optimizer.pt` stands for.

`optimizer.pt` numbers parameters, it does not name them. HF Trainer's `create_optimizer` builds two
param groups from `model.named_parameters()` (trainable parameters only, tied weights once): those its
`get_decay_parameter_names` returns (weight decay), then the rest (no decay: biases and norms), each in
`named_parameters()` order, and `torch.optim` numbers them back to back. That order is the model
definition's, so it is rebuilt here from config.json: the architecture on the meta device (no weights,
nothing downloaded) and HF Trainer's own decay rule. TRL's trainers inherit `create_optimizer`.
"""

from __future__ import annotations

from pathlib import Path

from dynamics.checkpoints import open_checkpoint
from dynamics.checkpoints.adam_state import AdamState, find_adam_state, open_adam_state
from dynamics.errors import CheckpointError


def trainer_parameter_groups(config_folder: str | Path) -> list[list[str]]:
    """[decay names, no-decay names] of the model config.json in `config_folder` describes, in the order
    HF Trainer gives them to the optimizer. Assumes every parameter was trainable (a full fine-tune)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, Trainer

    folder = Path(config_folder)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder}: no config.json to rebuild the parameter order of optimizer.pt from")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    decay = set(Trainer.get_decay_parameter_names(None, model))
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    return [[n for n in names if n in decay], [n for n in names if n not in decay]]


def adam_state_beside(checkpoint: str | Path, optimizer: str | Path | None = None) -> AdamState | None:
    """The Adam state of `checkpoint` (or at `optimizer`), its `optimizer.pt` indices named by
    `trainer_parameter_groups` of the checkpoint's config.json, every moment's shape checked against the
    checkpoint's weights; None when there is no optimizer state."""
    found = find_adam_state(optimizer or checkpoint)
    if found is None:
        return None
    kind, where = found
    folder = Path(checkpoint) if Path(checkpoint).is_dir() else Path(checkpoint).parent
    groups = trainer_parameter_groups(folder) if kind == "hf" else None
    shapes = {name: info.shape for name, info in open_checkpoint(checkpoint, masters=True).tensors.items()}
    return open_adam_state(where, groups, shapes)
