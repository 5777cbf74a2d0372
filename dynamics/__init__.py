"""dynamics: parameter-update dynamics inspector for LLM fine-tuning research.

>>> from dynamics import diff
>>> result = diff("runs/base", "runs/rl")          # DiffResult
>>> result.summary().changed, result.to_json()["summary"]["bitwise_sparsity"]
"""

from dynamics.api import diff
from dynamics.checkpoints import Checkpoint, TensorInfo, open_checkpoint
from dynamics.element_stats import ElementStats
from dynamics.errors import CheckpointError, DynamicsError, PairingError
from dynamics.result import DiffResult, TensorRecord

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "DiffResult",
    "DynamicsError",
    "ElementStats",
    "PairingError",
    "TensorInfo",
    "TensorRecord",
    "diff",
    "open_checkpoint",
]
