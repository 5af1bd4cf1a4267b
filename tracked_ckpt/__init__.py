"""tracked-ckpt: every Keras checkpoint, logged as a versioned MLflow or W&B artifact."""

from tracked_ckpt.callback import TrackedModelCheckpoint
from tracked_ckpt.record import SCHEMA_KEYS, CheckpointRecord

__all__ = ["CheckpointRecord", "SCHEMA_KEYS", "TrackedModelCheckpoint"]
__version__ = "0.1.0"
