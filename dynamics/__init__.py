"""dynamics: parameter-update dynamics inspector for LLM fine-tuning research.

>>> from dynamics import diff
>>> result = diff("runs/base", "runs/rl")          # DiffResult
>>> result.summary().changed, result.to_json()["summary"]["bitwise_sparsity"]

For PEFT studies (README "Using dynamics in a PEFT study"): `overlap` (cross-run consistency of update
masks), `select` and the mask combinators (which weights to train), `apply_mask` (train only those),
`adapter_capacity` / `extract_lora` (which LoRA rank an update needs; the adapter itself), and
`paper_metrics` (the Path Not Taken's and Small Subnetworks' own definitions).
"""

from dynamics.api import diff, diff_many, open_pair
from dynamics.checkpoints import Checkpoint, TensorInfo, open_checkpoint
from dynamics.element_stats import ElementStats
from dynamics.errors import CheckpointError, DynamicsError, MaskError, PairingError
from dynamics.lora_extract import adapter_capacity, extract_lora
from dynamics.masked_training import apply_mask
from dynamics.overlap import overlap
from dynamics.overlap_result import OverlapResult
from dynamics.paper_metrics import paper_metrics
from dynamics.result import DiffResult, TensorRecord
from dynamics.selection import complement, from_diff, intersection, random_like, select, union
from dynamics.subspace_overlap import update_subspace_overlap
from dynamics.update_masks import changed_masks

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
