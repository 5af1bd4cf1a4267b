"""How a checkpoint is kept: a full copy of its file, or incremental (a manifest of chunks).

`TrackedModelCheckpoint(storage=...)` takes "auto" (default), "incremental" or "full";
`storage_for_file` turns it into each record's `storage` when Keras has written the file,
and `storage_for_tracker` into what one tracker logs: a tracker that cannot store
incrementally (`Tracker.stores_incremental` False) logs the full file under a record that
says so, while the spool keeps one record for every tracker of a fan-out.

"auto" keeps a file incremental from `AUTO_INCREMENTAL_BYTES` (32 MB) up, measured against a local
`mlflow server` with proxied artifacts (see docs/how-to/large-checkpoints.md): below it the
incremental path's fixed cost (listing the chunk store, its index files, the CPU of one more
pass) is a large share of an upload that takes a fraction of a second anyway, whereas a plain
file stays a normal MLflow model, browsable and downloadable in the UI; above it the one pass
costs a few percent of a full upload and a frozen base saves almost all of it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging

from tracked_ckpt.record import STORAGE_FULL, STORAGE_INCREMENTAL, CheckpointRecord
from tracked_ckpt.tracker import Tracker

logger = logging.getLogger("tracked_ckpt")

STORAGE_AUTO = "auto"
#: What `storage=` accepts.
STORAGE_CHOICES = (STORAGE_AUTO, STORAGE_INCREMENTAL, STORAGE_FULL)
#: "auto" stores a file incrementally from this size up (bytes).
AUTO_INCREMENTAL_BYTES = 32 * 1000 * 1000


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


def storage_for_file(choice: str, size_bytes: int) -> str:
    """The record's `storage` for a file of `size_bytes` under `storage=choice`.

    Example:
        >>> storage_for_file("auto", 2_000_000), storage_for_file("incremental", 2_000_000)
        ('full', 'incremental')
    """
    if choice == STORAGE_AUTO:
        return STORAGE_INCREMENTAL if size_bytes >= AUTO_INCREMENTAL_BYTES and can_chunk() else STORAGE_FULL
    return choice


def storage_for_tracker(record: CheckpointRecord, tracker: Tracker) -> CheckpointRecord:
    """The record `tracker` logs: a full copy when it cannot store incrementally."""
    if record.storage == STORAGE_INCREMENTAL and not tracker.stores_incremental:
        logger.debug("%s: %s stores full files only", record.name, tracker.display_name)
        return dataclasses.replace(record, storage=STORAGE_FULL)
    return record
