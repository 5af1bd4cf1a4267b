"""The checkpoint record: one metadata schema shared by every tracker.

A `CheckpointRecord` describes one file that Keras wrote. Trackers store its
`metadata()` as-is (MLflow: LoggedModel tags `tracked_ckpt.<key>`; W&B: the
artifact's metadata), and `CheckpointRecord.from_metadata` reads it back, so
every tracker, the registry helper and the CLI agree on keys and values.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

# The schema, in display order. Values are str, int, float or bool, except
# `requirements`, a list of `name==version` strings (one comma-separated string
# for string-only trackers); a key whose value is unknown (no git repo, monitored
# metric missing from the logs, no requirements beyond Keras, an epoch-level save's
# `batch`) is omitted rather than stored as an empty string; so is `preempted` unless
# true, so only the checkpoint a preemption signal saved carries that tag, and `storage`
# unless "incremental" (records from before it existed are full copies).
SCHEMA_KEYS: tuple[str, ...] = (
    "epoch",
    "step",
    "monitor",
    "value",
    "mode",
    "is_best",
    "sha256",
    "size_bytes",
    "format",
    "filepath",
    "keras_version",
    "backend",
    "requirements",
    "git_commit",
    "git_branch",
    "git_dirty",
    "git_remote",
    "batch",
    "preempted",
    "storage",
)

# Prefix used where a tracker keeps metadata in a flat, shared namespace (MLflow tags).
TAG_PREFIX = "tracked_ckpt."

FORMATS = ("keras", "h5", "weights.h5")

#: The record's `storage`: a full copy of the file, or a manifest of chunks (issue 25's chunk store).
STORAGE_FULL = "full"
STORAGE_INCREMENTAL = "incremental"
STORAGES = (STORAGE_FULL, STORAGE_INCREMENTAL)

# Safe for every tracker: MLflow rejects / : . % " ' in LoggedModel names and
# W&B artifact names allow only alphanumerics, dashes, underscores and dots.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,199}$")
# The suffix `checkpoint_name` adds: -eNNNN, and -bNNNNNN for batch saves.
_SUFFIX_RE = re.compile(r"-e(\d{4,})(?:-b(\d{6,}))?$")


#: The files Keras 3's `ModelCheckpoint` writes, by the schema's `format` (the longer suffix first).
FORMAT_SUFFIXES = {"weights.h5": ".weights.h5", "keras": ".keras", "h5": ".h5"}


def file_format(filepath: str) -> str:
    """Return the schema's `format` for a checkpoint path (keras, h5 or weights.h5).

    Example:
        >>> file_format("ckpt/digits-03.weights.h5")
        'weights.h5'

    Raises:
        ValueError: the extension is not one Keras 3 `ModelCheckpoint` writes.
    """
    for format_name, suffix in FORMAT_SUFFIXES.items():
        if filepath.endswith(suffix):
            return format_name
    raise ValueError(
        f"Checkpoint filepath {filepath!r} has an unsupported extension: use '.keras' "
        "(or '.h5') for full models, or '.weights.h5' with save_weights_only=True."
    )


def sanitize_name(name: str) -> str:
    """Turn any string (e.g. a Keras model name) into a checkpoint name every tracker accepts.

    Example:
        >>> sanitize_name("my.model/v1")
        'my-model-v1'
    """
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-_")
    cleaned = cleaned[:180] or "model"
    if not cleaned[0].isalnum():
        cleaned = "m" + cleaned
    return cleaned


def validate_name(name: str) -> str:
    """Check a user-given checkpoint name.

    Raises:
        ValueError: the name would be rejected by a tracker.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):  # '$' alone allows a trailing '\n'
        raise ValueError(
            f"Invalid checkpoint name {name!r}: use letters, digits, '-' and '_' only, starting "
            f"with a letter or digit (trackers reject '/', ':', '.', '%' and quotes), e.g. "
            f"name={sanitize_name(str(name))!r}."
        )
    return name


def checkpoint_name(name: str, epoch: int, batch: int | None) -> str:
    """Name of one checkpoint: `{name}-e{epoch:04d}`, plus `-b{batch:06d}` for batch saves.

    Example:
        >>> checkpoint_name("digits", 3, None), checkpoint_name("digits", 3, 20)
        ('digits-e0003', 'digits-e0003-b000020')
    """
    suffix = f"-e{epoch:04d}"
    if batch is not None:
        suffix += f"-b{batch:06d}"
    return name + suffix


def split_checkpoint_name(name: str) -> tuple[str, int | None, int | None]:
    """The inverse of `checkpoint_name`: (base name, epoch, batch); (name, None, None) without the suffix.

    Example:
        >>> split_checkpoint_name("digits-e0003-b000020"), split_checkpoint_name("digits")
        (('digits', 3, 20), ('digits', None, None))
    """
    found = _SUFFIX_RE.search(name)
    if found is None or found.start() == 0:
        return name, None, None
    batch = found.group(2)
    return name[: found.start()], int(found.group(1)), None if batch is None else int(batch)


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """Everything recorded about one checkpoint file.

    Attributes:
        name: the checkpoint's name in the tracker, e.g. `digits-e0003`.
        epoch: 1-based epoch, as in Keras file names.
        step: global batch count (optimizer iterations) when the file was written.
        batch: 1-based batch within the epoch for batch-level saves, else None.
        monitor: the monitored metric name.
        value: the monitored metric's value, or None when it was missing from the logs.
        mode: "min" or "max".
        is_best: the value was the best seen so far at save time (False when missing).
        sha256, size_bytes: content hash and size of the file as written.
        format: "keras", "h5" or "weights.h5".
        filepath: the local path Keras wrote.
        keras_version, backend: the Keras version and backend that wrote it.
        requirements: the installed distributions (`name==version`) the saved Keras
            config references beyond Keras (KerasHub, a user's package), read off
            the training thread by the publisher (`tracked_ckpt.requirements`);
            None until then, and for files without a Keras config.
        git_commit, git_branch, git_dirty, git_remote: provenance of the training code.
        metrics: the logs Keras passed for this save (epoch or batch logs).
        io_specs: the model's input and output tensors for a full-model checkpoint,
            `{"inputs": [{"name", "dtype", "shape"}, ...], "outputs": [...]}` (None in a
            shape dimension: any size), or None when they cannot be described. Not part of
            the schema's tags: trackers turn it into their own description (an MLflow signature).
        code_paths: absolute paths of module files or package folders logged with a
            full-model checkpoint so that its custom classes load elsewhere (MLflow:
            the model's `code/` folder), or None. Not part of the schema's tags.
        preempted: saved because a preemption signal arrived (`preempt_on`), at a batch
            boundary, in the middle of an epoch; resuming from it runs that epoch again.
        storage: how the tracker keeps the file: "full" (a copy of the file) or "incremental"
            (a manifest of content-defined chunks in the destination's chunk store, see
            `tracked_ckpt.packs`). A tracker that cannot store incrementally stores "full".

    `tracked_ckpt.list_checkpoints()` gives the records of logged checkpoints;
    `from_metadata` rebuilds one from what a tracker stored.

    Example:
        >>> record = CheckpointRecord.from_metadata(
        ...     {"epoch": 7, "step": 126, "sha256": "ab" * 32, "monitor": "val_accuracy", "mode": "max",
        ...      "value": 0.95139, "git_commit": "9c1e4a7b" * 5, "git_dirty": False},
        ...     name="digits-e0007", metrics={"val_accuracy": 0.95139, "val_loss": 0.21},
        ... )
        >>> record.epoch, record.value, record.git_commit[:8]
        (7, 0.95139, '9c1e4a7b')
        >>> record.metadata()["sha256"][:8]
        'abababab'
    """

    name: str
    epoch: int
    step: int
    monitor: str
    mode: str
    is_best: bool
    sha256: str
    size_bytes: int
    format: str
    filepath: str
    keras_version: str
    backend: str
    value: float | None = None
    batch: int | None = None
    git_commit: str | None = None
    git_branch: str | None = None
    git_dirty: bool | None = None
    git_remote: str | None = None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    io_specs: Mapping[str, Any] | None = None
    requirements: tuple[str, ...] | None = None
    code_paths: tuple[str, ...] | None = None
    preempted: bool = False
    storage: str = "full"

    def __post_init__(self) -> None:
        # The spool's JSON gives lists back, MLflow tags one string: keep tuples.
        if self.requirements is not None:
            object.__setattr__(self, "requirements", tuple(_requirement_items(self.requirements)))
        if self.code_paths is not None:
            object.__setattr__(self, "code_paths", tuple(self.code_paths))

    def metric(self, name: str) -> float | None:
        """The value of metric `name` at this save (the monitored value or another logged one), or None.

        Example:
            >>> record = CheckpointRecord.from_metadata(
            ...     {"epoch": 7, "step": 126, "sha256": "ab" * 32, "monitor": "val_accuracy", "value": 0.9375},
            ...     name="digits-e0007", metrics={"val_accuracy": 0.9375, "val_loss": 0.21},
            ... )
            >>> record.metric("val_accuracy"), record.metric("val_loss"), record.metric("accuracy")
            (0.9375, 0.21, None)
        """
        if name == self.monitor:
            return self.value
        value = self.metrics.get(name)
        return None if value is None else float(value)

    @property
    def key(self) -> str:
        """Identity of the checkpoint within a run: logging the same key twice is a no-op."""
        return f"e{self.epoch}-s{self.step}-{self.sha256[:16]}"

    def metadata(self) -> dict[str, Any]:
        """The schema as a dict of plain values; unknown values are left out."""
        out: dict[str, Any] = {}
        for key in SCHEMA_KEYS:
            value = getattr(self, key)
            if (
                value is None
                or (key in ("requirements", "preempted") and not value)
                or (key == "storage" and value == STORAGE_FULL)
            ):
                continue
            out[key] = list(value) if key == "requirements" else value
        return out

    def summary(self) -> str:
        """One line a person reads at a glance: name, monitored value, epoch, short commit, dirty or clean.

        Example:
            >>> record = CheckpointRecord.from_metadata(
            ...     {"epoch": 7, "step": 126, "sha256": "ab" * 32, "monitor": "val_accuracy", "mode": "max",
            ...      "value": 0.95139, "git_commit": "9c1e4a7b" * 5, "git_dirty": False},
            ...     name="digits-e0007",
            ... )
            >>> record.summary()
            'digits-e0007: val_accuracy=0.95139 (max), epoch 7, step 126, commit 9c1e4a7b (clean)'
        """
        value = "missing" if self.value is None else f"{self.value:.5g}"
        line = f"{self.name}: {self.monitor}={value} ({self.mode}), epoch {self.epoch}"
        if self.batch is not None:
            line += f" batch {self.batch}"
        line += f", step {self.step}"
        if self.git_commit:
            states: dict[bool | None, str] = {True: "dirty", False: "clean"}
            state = states.get(self.git_dirty, "dirty state unknown")
            line += f", commit {self.git_commit[:8]} ({state})"
        else:
            line += ", no git commit"
        return line

    def string_metadata(self) -> dict[str, str]:
        """The schema with every value as a string, for trackers that only store strings."""
        return {key: format_value(value) for key, value in self.metadata().items()}

    @classmethod
    def from_metadata(
        cls,
        metadata: Mapping[str, Any],
        *,
        name: str = "",
        metrics: Mapping[str, float] | None = None,
    ) -> CheckpointRecord:
        """Rebuild a record from what a tracker stored (plain or string values)."""
        missing = [k for k in ("epoch", "step", "sha256") if k not in metadata]
        if missing:
            raise ValueError(f"Not a tracked-ckpt checkpoint: metadata lacks {missing}.")
        value = metadata.get("value")
        return cls(
            name=name,
            epoch=int(metadata["epoch"]),
            step=int(metadata["step"]),
            monitor=str(metadata.get("monitor", "")),
            mode=str(metadata.get("mode", "")),
            is_best=_to_bool(metadata.get("is_best", False)),
            sha256=str(metadata["sha256"]),
            size_bytes=int(metadata.get("size_bytes", 0)),
            format=str(metadata.get("format", "")),
            filepath=str(metadata.get("filepath", "")),
            keras_version=str(metadata.get("keras_version", "")),
            backend=str(metadata.get("backend", "")),
            value=None if value in (None, "") else float(value),
            git_commit=_opt_str(metadata.get("git_commit")),
            git_branch=_opt_str(metadata.get("git_branch")),
            git_dirty=None if metadata.get("git_dirty") in (None, "") else _to_bool(metadata["git_dirty"]),
            git_remote=_opt_str(metadata.get("git_remote")),
            metrics=dict(metrics or {}),
            requirements=tuple(_requirement_items(metadata.get("requirements"))) or None,
            batch=None if metadata.get("batch") in (None, "") else int(metadata["batch"]),
            preempted=_to_bool(metadata.get("preempted", False)),
            storage=str(metadata.get("storage") or STORAGE_FULL),
        )


def is_better(value: float, reference: float, mode: str) -> bool:
    """Strictly better by the schema's `mode` ("max": higher, otherwise lower), as Keras compares.

    Example:
        >>> is_better(0.2, 0.3, "min"), is_better(0.3, 0.3, "max")
        (True, False)
    """
    return value > reference if mode == "max" else value < reference


def best_first(record: CheckpointRecord, metric: str | None = None, mode: str | None = None) -> tuple[bool, float, int]:
    """The one ranking of checkpoints: a sort key putting the best value of `metric` first, records without it last.

    `metric` and `mode` default to the record's own monitor and mode. Among equal
    values the earlier checkpoint (lower step) comes first, as `is_better` (strict)
    decides during training.

    Example:
        >>> first = CheckpointRecord(name="net-e0001", epoch=1, step=10, monitor="val_loss", mode="min",
        ...     is_best=True, sha256="0" * 64, size_bytes=1, format="keras", filepath="net-1.keras",
        ...     keras_version="3.15.0", backend="jax", value=0.4)
        >>> records = [dataclasses.replace(first, epoch=e, step=10 * e, value=v)
        ...            for e, v in ((1, 0.4), (2, 0.2), (3, None), (4, 0.2))]
        >>> [r.epoch for r in sorted(records, key=best_first)]
        [2, 4, 1, 3]
    """
    value = record.value if metric is None else record.metric(metric)
    if value is None:
        return (True, 0.0, record.step)
    return (False, -value if (mode or record.mode) == "max" else value, record.step)  # as `is_better`


def clean_metrics(logs: Mapping[str, Any] | None) -> dict[str, float]:
    """Keep the finite scalar entries of Keras logs, as floats."""
    out: dict[str, float] = {}
    for key, value in (logs or {}).items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            out[str(key)] = number
    return out


def format_value(value: Any) -> str:
    """A schema value as the string stored by string-only trackers (bools as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(float(value))  # np.float64 is a float whose repr is 'np.float64(...)'
    if isinstance(value, (list, tuple)):
        return ",".join(str(item) for item in value)  # requirements: `name==version` has no comma
    return str(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _opt_str(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def _requirement_items(value: Any) -> list[str]:
    """Requirements from a stored value: a list, or a comma-separated string (MLflow tags)."""
    items = value.split(",") if isinstance(value, str) else (value or ())
    return [str(item).strip() for item in items if str(item).strip()]


def scalar(value: Any) -> float | None:
    """A finite number from a log value (a Python or NumPy number, a 0-d tensor), else None.

    Example:
        >>> scalar(0.25), scalar(float("nan")), scalar([1.0, 2.0]), scalar(None)
        (0.25, None, None, None)
    """
    if value is None or tuple(getattr(value, "shape", ())) != ():
        return None  # e.g. a per-class metric: not one number
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
