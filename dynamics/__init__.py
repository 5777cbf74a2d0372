"""dynamics: parameter-update dynamics inspector for LLM fine-tuning research.

>>> from dynamics import diff
>>> result = diff("runs/base", "runs/rl")          # DiffResult
>>> result.summary().changed, result.to_json()["summary"]["bitwise_sparsity"]

For PEFT studies (README "Using dynamics in a PEFT study"): `overlap` (cross-run consistency of update
masks), `select` and the mask combinators (which weights to train), `apply_mask` (train only those),
`adapter_capacity` / `extract_lora` (which LoRA rank an update needs; the adapter itself), and
`paper_metrics` (the Path Not Taken's and Small Subnetworks' own definitions).

Names are imported on first use (PEP 562), so `dynamics diff` loads few of the PEFT-study modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

# Public name -> the module that defines it.
_EXPORTS = {
    "diff": "dynamics.api", "diff_many": "dynamics.api", "open_pair": "dynamics.api",
    "Checkpoint": "dynamics.checkpoints", "TensorInfo": "dynamics.checkpoints",
    "open_checkpoint": "dynamics.checkpoints",
    "ElementStats": "dynamics.element_stats",
    "CheckpointError": "dynamics.errors", "DynamicsError": "dynamics.errors", "MaskError": "dynamics.errors",
    "PairingError": "dynamics.errors",
    "adapter_capacity": "dynamics.lora_extract", "extract_lora": "dynamics.lora_extract",
    "apply_mask": "dynamics.masked_training",
    "overlap": "dynamics.overlap",
    "OverlapResult": "dynamics.overlap_result",
    "paper_metrics": "dynamics.paper_metrics",
    "DiffResult": "dynamics.result", "TensorRecord": "dynamics.result",
    "complement": "dynamics.selection", "from_diff": "dynamics.selection", "intersection": "dynamics.selection",
    "random_like": "dynamics.selection", "select": "dynamics.selection", "union": "dynamics.selection",
    "update_subspace_overlap": "dynamics.subspace_overlap",
    "changed_masks": "dynamics.update_masks",
}
__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DiffResult",
    "DynamicsError",
    "ElementStats",
    "MaskError",
    "OverlapResult",
    "PairingError",
    "TensorInfo",
    "TensorRecord",
    "adapter_capacity",
    "apply_mask",
    "changed_masks",
    "complement",
    "diff",
    "diff_many",
    "extract_lora",
    "from_diff",
    "intersection",
    "open_checkpoint",
    "open_pair",
    "overlap",
    "paper_metrics",
    "random_like",
    "select",
    "union",
    "update_subspace_overlap",
]


def __getattr__(name: str) -> object:
    # `overlap` and `paper_metrics` name both a submodule and its function: importing the submodule sets
    # the package attribute to the module, so those two are bound eagerly below, after this function.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dynamics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


from dynamics.overlap import overlap  # see __getattr__
from dynamics.paper_metrics import paper_metrics

if TYPE_CHECKING:
    from dynamics.api import diff, diff_many, open_pair
    from dynamics.checkpoints import Checkpoint, TensorInfo, open_checkpoint
    from dynamics.element_stats import ElementStats
    from dynamics.errors import CheckpointError, DynamicsError, MaskError, PairingError
    from dynamics.lora_extract import adapter_capacity, extract_lora
    from dynamics.masked_training import apply_mask
    from dynamics.overlap_result import OverlapResult
    from dynamics.result import DiffResult, TensorRecord
    from dynamics.selection import complement, from_diff, intersection, random_like, select, union
    from dynamics.subspace_overlap import update_subspace_overlap
    from dynamics.update_masks import changed_masks
