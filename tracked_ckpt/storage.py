"""How a checkpoint is kept: a full copy of its file, or incremental (a manifest of chunks).

`TrackedModelCheckpoint(storage=...)` takes "auto" (default), "incremental" or "full";
`storage_for_file` turns it into each record's `storage` when Keras has written the file,
and `storage_for_tracker` into what one tracker logs: a tracker that cannot store
incrementally (`Tracker.stores_incremental` False) logs the full file under a record that
says so, while the spool keeps one record for every tracker of a fan-out. Imports only
`record.py`, so that the publisher, the callback and the trackers may all use it.

"auto" stores a file incrementally when it is at least `AUTO_INCREMENTAL_BYTES` (32 MB) and at
least `AUTO_FROZEN_FRACTION` (half) of the model's variables' bytes cannot change in training
(non-trainable weights: a frozen backbone, a LoRA base), as measured against a local proxied
`mlflow server` (docs/how-to/large-checkpoints.md). Below 32 MB the incremental path's fixed cost
(listing the chunk store, the chunker's pass) is 40-90 % of an upload that takes a fifth of a
second and saves a few MB, while a plain file stays a normal MLflow model the UI browses and
downloads. A model that trains most of its bytes (its weights and their optimizer slots) rewrites
most of its file every epoch: chunks then save little and cost up to ~1.9x the upload of a full
copy, so it stays full. A mostly frozen model's later checkpoints upload in about the time of a
full copy even on localhost, and are stored for a few percent of it.
"""

from __future__ import annotations

import dataclasses
import importlib.util

from tracked_ckpt.record import STORAGE_FULL, STORAGE_INCREMENTAL, CheckpointRecord

STORAGE_AUTO = "auto"
#: What `storage=` accepts.
STORAGE_CHOICES = (STORAGE_AUTO, STORAGE_INCREMENTAL, STORAGE_FULL)
#: "auto" stores a file incrementally from this size up (bytes)...
AUTO_INCREMENTAL_BYTES = 32 * 1000 * 1000
#: ... when at least this fraction of the model's variables' bytes cannot change in training.
AUTO_FROZEN_FRACTION = 0.5


def can_chunk() -> bool:
    """Whether the chunker (`pyfastcdc`, the `incremental` extra) is installed."""
    return importlib.util.find_spec("pyfastcdc") is not None


def storage_arg(value: str) -> str:
    """Check `storage=`: one of `STORAGE_CHOICES`; "incremental" needs the chunker installed.

    Example:
        >>> storage_arg("auto")
        'auto'
        >>> storage_arg("delta")
        Traceback (most recent call last):
        ...
        ValueError: Invalid storage 'delta': use 'auto' (default), 'incremental' or 'full'.

    Raises:
        ValueError: not one of the choices.
        ImportError: "incremental" without `pyfastcdc`; the message names the extra.
    """
    if value not in STORAGE_CHOICES:
        raise ValueError(f"Invalid storage {value!r}: use 'auto' (default), 'incremental' or 'full'.")
    if value == STORAGE_INCREMENTAL and not can_chunk():
        raise ImportError(
            "storage='incremental' needs the 'pyfastcdc' package, which is not installed: "
            "pip install 'tracked-ckpt[incremental]'."
        )
    return value


def storage_for_file(choice: str, size_bytes: int, frozen_fraction: float | None = None) -> str:
    """The record's `storage` for a file of `size_bytes` under `storage=choice`.

    Args:
        choice: what `storage=` says.
        size_bytes: the file's size.
        frozen_fraction: the share of the model's variables' bytes (weights and optimizer slots)
            that training cannot change (non-trainable weights); None when unknown (then size
            alone decides).

    Example:
        >>> storage_for_file("auto", 2_000_000), storage_for_file("incremental", 2_000_000)
        ('full', 'incremental')
        >>> big = 1_600_000_000
        >>> storage_for_file("auto", big, frozen_fraction=0.99), storage_for_file("auto", big, frozen_fraction=0.0)
        ('incremental', 'full')
    """
    if choice != STORAGE_AUTO:
        return choice
    mostly_frozen = frozen_fraction is None or frozen_fraction >= AUTO_FROZEN_FRACTION
    return (
        STORAGE_INCREMENTAL if size_bytes >= AUTO_INCREMENTAL_BYTES and mostly_frozen and can_chunk() else STORAGE_FULL
    )


def storage_for_tracker(record: CheckpointRecord, stores_incremental: bool) -> CheckpointRecord:
    """The record a tracker logs: a full copy when it cannot store incrementally (`Tracker.stores_incremental`).

    Example:
        >>> record = CheckpointRecord(name="m-e0001", epoch=1, step=1, monitor="loss", mode="min",
        ...     is_best=False, sha256="0" * 64, size_bytes=1, format="keras", filepath="m.keras",
        ...     keras_version="3.15.0", backend="jax", storage="incremental")
        >>> storage_for_tracker(record, True).storage, storage_for_tracker(record, False).storage
        ('incremental', 'full')
    """
    if record.storage == STORAGE_INCREMENTAL and not stores_incremental:
        return dataclasses.replace(record, storage=STORAGE_FULL)
    return record
