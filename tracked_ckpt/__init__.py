"""tracked-ckpt: every Keras checkpoint, logged as a versioned MLflow or W&B artifact.

Data flows one way: `TrackedModelCheckpoint` (callback) builds a
`CheckpointRecord` (record), freezes the file into a `Spool`, and the
`Publisher` hands it to a `Tracker` (integrations). The registry helper reads
the records back to promote, list and load checkpoints, `verbs` to delete and
compare them. Every error class of the library's own derives from
`TrackedCkptError`.

Names are imported lazily, so `import tracked_ckpt` (and the CLI) does not
pay for importing Keras and TensorFlow until the callback is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "TrackedModelCheckpoint": "tracked_ckpt.callback",
    "CheckpointRecord": "tracked_ckpt.record",
    "JobLockedError": "tracked_ckpt.errors",
    "SCHEMA_KEYS": "tracked_ckpt.record",
    "BlobNotFoundError": "tracked_ckpt.errors",
    "ChecksumError": "tracked_ckpt.errors",
    "ChunkStoreError": "tracked_ckpt.errors",
    "LoggedCheckpoint": "tracked_ckpt.tracker",
    "MissingCodeError": "tracked_ckpt.errors",
    "MissingRequirementError": "tracked_ckpt.errors",
    "TrackedCkptError": "tracked_ckpt.errors",
    "TrackerError": "tracked_ckpt.errors",
    "UnknownKeyError": "tracked_ckpt.errors",
    "UnsupportedVersionError": "tracked_ckpt.errors",
    "LoggedEntry": "tracked_ckpt.publisher",
    "PublishReport": "tracked_ckpt.publisher",
    "PromotionResult": "tracked_ckpt.registry",
    "best_checkpoint": "tracked_ckpt.registry",
    "collect_garbage": "tracked_ckpt.garbage",
    "download_checkpoint": "tracked_ckpt.registry",
    "list_checkpoints": "tracked_ckpt.registry",
    "load_model": "tracked_ckpt.registry",
    "promote_best": "tracked_ckpt.registry",
    "registered_checkpoint": "tracked_ckpt.registry",
    "sync_spool": "tracked_ckpt.sync",
    "AmbiguousCheckpointError": "tracked_ckpt.errors",
    "CheckpointNotFoundError": "tracked_ckpt.errors",
    "ProtectedCheckpointError": "tracked_ckpt.errors",
    "Registration": "tracked_ckpt.tracker",
    "find_checkpoint": "tracked_ckpt.lookup",
    "Comparison": "tracked_ckpt.verbs",
    "Deletion": "tracked_ckpt.verbs",
    "compare_checkpoints": "tracked_ckpt.verbs",
    "delete_checkpoint": "tracked_ckpt.verbs",
    "registered_versions": "tracked_ckpt.verbs",
    "wait": "tracked_ckpt.fits",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from tracked_ckpt.callback import TrackedModelCheckpoint
    from tracked_ckpt.errors import (
        AmbiguousCheckpointError,
        BlobNotFoundError,
        CheckpointNotFoundError,
        ChecksumError,
        ChunkStoreError,
        JobLockedError,
        MissingCodeError,
        MissingRequirementError,
        ProtectedCheckpointError,
        TrackedCkptError,
        TrackerError,
        UnknownKeyError,
        UnsupportedVersionError,
    )
    from tracked_ckpt.fits import wait
    from tracked_ckpt.garbage import collect_garbage
    from tracked_ckpt.lookup import find_checkpoint
    from tracked_ckpt.publisher import LoggedEntry, PublishReport
    from tracked_ckpt.record import SCHEMA_KEYS, CheckpointRecord
    from tracked_ckpt.registry import (
        PromotionResult,
        best_checkpoint,
        download_checkpoint,
        list_checkpoints,
        load_model,
        promote_best,
        registered_checkpoint,
    )
    from tracked_ckpt.sync import sync_spool
    from tracked_ckpt.tracker import LoggedCheckpoint, Registration
    from tracked_ckpt.verbs import Comparison, Deletion, compare_checkpoints, delete_checkpoint, registered_versions


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tracked_ckpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
