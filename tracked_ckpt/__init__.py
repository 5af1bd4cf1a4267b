"""tracked-ckpt: every Keras checkpoint, logged as a versioned MLflow or W&B artifact.

Data flows one way: `TrackedModelCheckpoint` (callback) builds a
`CheckpointRecord` (record), freezes the file into a `Spool`, and the
`Publisher` hands it to a `Tracker` (integrations). The registry helper reads
the records back to promote, list and load checkpoints.
"""

from tracked_ckpt.callback import TrackedModelCheckpoint
from tracked_ckpt.record import SCHEMA_KEYS, CheckpointRecord
from tracked_ckpt.registry import (
    ChecksumError,
    LoggedCheckpoint,
    PromotionResult,
    best_checkpoint,
    download_checkpoint,
    list_checkpoints,
    load_model,
    promote_best,
)

__all__ = [
    "SCHEMA_KEYS",
    "CheckpointRecord",
    "ChecksumError",
    "LoggedCheckpoint",
    "PromotionResult",
    "TrackedModelCheckpoint",
    "best_checkpoint",
    "download_checkpoint",
    "list_checkpoints",
    "load_model",
    "promote_best",
]
__version__ = "0.1.0"
