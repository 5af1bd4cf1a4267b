"""How a checkpoint record maps onto a W&B artifact version, and back.

Every checkpoint of a run is a version of one "model" collection,
`{base name}-{run id}` (e.g. `digits-1a2b3c4d`). The version's metadata is the
record schema as-is (`CheckpointRecord.metadata()`, typed values) plus the run
id, the batch of a batch-level save and every metric of the save's logs, so a
version reads back as the record that was written. Its aliases are `epoch-{N}`,
`step-{S}` for batch-level saves, and `best` while it is the best so far.

Pure functions of the record: no W&B calls, so `WandbTracker` (which makes
them), the tests and the W&B test double all name things the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from typing import Any

from tracked_ckpt.record import CheckpointRecord, checkpoint_name, split_checkpoint_name

ARTIFACT_TYPE = "model"
#: Prefix of the run-history keys a checkpoint's logs are written under.
HISTORY_PREFIX = "checkpoint/"
#: The history key used as x-axis for `HISTORY_PREFIX` keys.
HISTORY_STEP_KEY = HISTORY_PREFIX + "epoch"
BEST_ALIAS = "best"
#: Aliases tracked-ckpt (or W&B) sets on every version; any other alias protects a version from deletion.
ROUTINE_ALIAS_RE = re.compile(r"(latest|best|epoch-\d+|step-\d+|v\d+)")

_NAME_MAXLEN = 128  # W&B's limit on artifact names
_TRACKED_KEYS = ("epoch", "step", "sha256")  # metadata every tracked-ckpt version has
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def job_run_id(job_key: str) -> str:
    """The W&B run id of a job key: the key made safe, plus a short hash (distinct keys, distinct ids).

    Example: `job_run_id("digits job/1")` -> `"digits-job-1-<8 hex digits>"`.
    """
    safe = _UNSAFE_RE.sub("-", job_key).strip("-.")[:48] or "job"
    return f"{safe}-{hashlib.sha256(job_key.encode()).hexdigest()[:8]}"


def base_name(record: CheckpointRecord) -> str:
    """The checkpoint's base name: `record.name` without its `-eNNNN[-bNNNNNN]` suffix."""
    return split_checkpoint_name(record.name)[0]


def collection_name(record: CheckpointRecord, run_id: str) -> str:
    """The run's artifact collection for a record: `{base name}-{run id}`, within W&B's 128 characters.

    Example:

    ```python
    collection_name(record, "1a2b3c4d")  # record.name "digits-e0003" -> "digits-1a2b3c4d"
    ```
    """
    suffix = _run_suffix(run_id)
    return base_name(record)[: _NAME_MAXLEN - len(suffix)] + suffix


def base_of_collection(collection: str, run_id: str) -> str:
    """The base name a collection was made from (the inverse of `collection_name`)."""
    suffix = _run_suffix(run_id)
    return collection[: -len(suffix)] if collection.endswith(suffix) else collection


def artifact_metadata(record: CheckpointRecord, run_id: str | None = None) -> dict[str, Any]:
    """A version's metadata: the schema, plus the run id, the batch of a batch save and the save's logs.

    The extras let a version read back as the record that was written: its run
    (a run id may itself contain '-', so the collection name cannot tell), its
    full name (`-bNNNNNN` for batch saves) and every logged metric, so the
    registry can rank by any of them, as it does on MLflow.
    """
    metadata = record.metadata()
    if run_id:
        metadata["run_id"] = run_id
    if record.batch is not None:
        metadata["batch"] = record.batch
    if record.metrics:
        metadata["metrics"] = {str(k): float(v) for k, v in record.metrics.items()}
    return metadata


def is_tracked(metadata: Mapping[str, Any] | None) -> bool:
    """Whether a version's metadata is tracked-ckpt's (it has epoch, step and sha256)."""
    return metadata is not None and bool(metadata) and all(k in metadata for k in _TRACKED_KEYS)


def run_id_of(metadata: Mapping[str, Any], collection: str) -> str:
    """The run that logged a version: from its metadata, else (older versions) the collection's last part."""
    return str(metadata.get("run_id") or collection.rsplit("-", 1)[-1])


def record_from_metadata(metadata: Mapping[str, Any], base: str) -> CheckpointRecord:
    """Rebuild the record of a version from its metadata (`artifact_metadata`) and base name.

    Versions logged before the extras existed carry only the monitored value.
    """
    batch = metadata.get("batch")
    batch = None if batch in (None, "") else int(batch)
    metrics = metadata.get("metrics")
    if isinstance(metrics, Mapping):
        metrics = {str(k): float(v) for k, v in metrics.items() if _is_number(v)}
    else:
        monitor, value = metadata.get("monitor"), metadata.get("value")
        metrics = {str(monitor): float(value)} if monitor and value not in (None, "") else {}
    record = CheckpointRecord.from_metadata(
        metadata, name=checkpoint_name(base, int(metadata["epoch"]), batch), metrics=metrics
    )
    return dataclasses.replace(record, batch=batch)


def metadata_matches(stored: Any, wanted: Any) -> bool:
    """Whether a metadata value matches a wanted one: equal, or equal as strings (`"3"` finds 3)."""
    if stored is None:
        return False
    if _is_number(stored) and _is_number(wanted):
        return float(stored) == float(wanted)
    return str(stored).strip().lower() == str(wanted).strip().lower()


def checkpoint_aliases(record: CheckpointRecord) -> list[str]:
    """Aliases of a checkpoint's version: `epoch-N`, `step-S` (batch saves) and `best` (last).

    W&B adds `latest` itself. Example: a batch save at epoch 2, step 40, best so
    far -> `["epoch-2", "step-40", "best"]`.
    """
    aliases = [f"epoch-{record.epoch}"]
    if record.batch is not None:
        aliases.append(f"step-{record.step}")
    if record.is_best:
        aliases.append(BEST_ALIAS)
    return aliases


def identifying_alias(record: CheckpointRecord) -> str:
    """The alias that names this checkpoint alone: `step-S` for batch saves, else `epoch-N`."""
    return f"step-{record.step}" if record.batch is not None else f"epoch-{record.epoch}"


def history_row(record: CheckpointRecord) -> dict[str, Any]:
    """The run-history row for a save: its logs under `checkpoint/`, with epoch and global step."""
    row: dict[str, Any] = {HISTORY_PREFIX + key: value for key, value in record.metrics.items()}
    row[HISTORY_STEP_KEY] = record.epoch
    row[HISTORY_PREFIX + "step"] = record.step
    return row


def version_number(version: str) -> int:
    """The N of "vN" (-1 for anything else, e.g. an alias)."""
    return int(version[1:]) if re.fullmatch(r"v\d+", version) else -1


def version_ref(version: Any) -> str:
    """A Registry version as W&B names it: 3, "3" or "v3" -> "v3"."""
    text = str(version).strip()
    if re.fullmatch(r"[vV]?\d+", text):
        return "v" + text.lstrip("vV")
    raise ValueError(f"Invalid version {version!r}: use a number such as 3 or 'v3'.")


def _run_suffix(run_id: str) -> str:
    return "-" + _UNSAFE_RE.sub("-", run_id)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
