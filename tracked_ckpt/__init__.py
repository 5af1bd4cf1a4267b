"""tracked-ckpt: every Keras checkpoint, logged as a versioned MLflow or W&B artifact."""

from tracked_ckpt.record import CheckpointRecord

__all__ = ["CheckpointRecord"]
__version__ = "0.1.0"
