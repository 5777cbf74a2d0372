"""Error families raised at the boundary; the CLI turns each into one line and exit code 2."""


class DynamicsError(Exception):
    """Base of every error the CLI reports as a one-line message."""


class CheckpointError(DynamicsError):
    """A checkpoint cannot be opened or a tensor cannot be read (message names file and tensor)."""


class PairingError(DynamicsError):
    """Two checkpoints do not pair under `--strict` (missing tensor, shape or dtype mismatch)."""


class MaskError(DynamicsError):
    """A mask is missing, does not fit its tensor, or a selection / masked-training request is invalid."""


class OutputError(DynamicsError):
    """An output location cannot be written (message names the path); checked before the work starts."""
