"""Delete and compare logged checkpoints, and list a registered model's versions.

Tracker-agnostic, as `tracked_ckpt.registry` is: a checkpoint is named as
`tracked_ckpt.lookup.find_checkpoint` takes it (an id, a name, or a run and an
epoch), and the trackers answer narrow questions (`TrackerRegistry`).

Deleting goes through `Tracker.delete_checkpoint`, the path `keep_top_k`
uses, which keeps a checkpoint that a registered model version or an alias
points at. `delete_checkpoint` refuses such a checkpoint up front, naming what
points at it; with `force=True` it first removes those registered versions
(MLflow: the model versions, with their aliases; W&B: the Registry links and the
aliases a person gave the version), so no alias is left pointing at a deleted
checkpoint, then deletes the checkpoint. A registered model itself is never
deleted, and the local file the checkpoint was saved from is left alone.

Example:

```python
import tracked_ckpt

tracked_ckpt.delete_checkpoint("digits-e0002", run_id=run_id)
diff = tracked_ckpt.compare_checkpoints("digits-e0003", "digits-e0007", experiment="digits-demo")
for field, a, b in diff.differences:
    print(field, a, b)
for ckpt in tracked_ckpt.registered_versions("digits-classifier"):
    print(ckpt.extra["version"], ckpt.aliases, ckpt.record.name, ckpt.run_id)
```
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from tracked_ckpt.errors import ProtectedCheckpointError, TrackerError
from tracked_ckpt.fits import wait
from tracked_ckpt.lookup import find_checkpoint
from tracked_ckpt.record import SCHEMA_KEYS
from tracked_ckpt.selection import run_name, run_text
from tracked_ckpt.tracker import LoggedCheckpoint, Registration, Tracker, registry_of, resolve_tracker

logger = logging.getLogger("tracked_ckpt")

# What identifies a checkpoint, compared before its recorded schema and its metrics.
_IDENTITY = ("name", "run", "run_id", "id")


@dataclasses.dataclass(frozen=True)
class Deletion:
    """What `delete_checkpoint` did.

    Attributes:
        checkpoint: the checkpoint deleted (as it was before).
        unregistered: the registered versions and aliases removed first (only with `force=True`).
    """

    checkpoint: LoggedCheckpoint
    unregistered: tuple[Registration, ...] = ()

    @property
    def reason(self) -> str:
        """One sentence for people."""
        also = "; ".join(r.text() for r in self.unregistered)
        return f"Deleted {self.checkpoint.record.name} of {run_text(self.checkpoint)}" + (
            f", after removing {also}." if also else "."
        )


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Two checkpoints side by side: `compare_checkpoints`'s answer.

    Attributes:
        a, b: the two checkpoints.
        rows: (field, value of a, value of b) for every field either has: identity (`name`,
            `run`, `run_id`, `id`), the recorded schema (epoch, step, git commit, size,
            sha256, ...), `metric.<name>` for each metric and `config.<key>` for each key of the
            runs' configuration (MLflow: params; W&B: config); None where one lacks it.
    """

    a: LoggedCheckpoint
    b: LoggedCheckpoint
    rows: tuple[tuple[str, Any, Any], ...]

    @property
    def differences(self) -> list[tuple[str, Any, Any]]:
        """The rows whose values differ."""
        return [row for row in self.rows if row[1] != row[2]]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: each side's fields, and the names of the fields that differ."""
        return {
            "a": {field: a for field, a, _ in self.rows if a is not None},
            "b": {field: b for field, _, b in self.rows if b is not None},
            "differences": [field for field, _, _ in self.differences],
        }


def delete_checkpoint(
    checkpoint: str | LoggedCheckpoint | None = None,
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    tracker: str | Tracker = "mlflow",
    force: bool = False,
) -> Deletion:
    """Delete a logged checkpoint (its tracker entry and files), as `keep_top_k` does.

    Args:
        checkpoint: a listed checkpoint, or its id or name as `tracked-ckpt ls` prints them.
        run_id, experiment, epoch, step: where to look and which one (see `find_checkpoint`).
        tracker: the tracker name or object.
        force: also delete a checkpoint that a registered model version or an alias points
            at: those versions (and their aliases) are removed first, then the checkpoint.

    Returns:
        A `Deletion` naming the checkpoint and what was unregistered.

    Raises:
        ProtectedCheckpointError: a registered version or an alias points at it and `force` is False.
        CheckpointNotFoundError, AmbiguousCheckpointError: see `find_checkpoint`.
        TrackerError: the tracker cannot delete, or kept the checkpoint.

    Example:
        ```python
        tracked_ckpt.delete_checkpoint("digits-e0002", run_id=run_id)
        tracked_ckpt.delete_checkpoint(run_id=run_id, epoch=7, force=True)  # even the champion
        ```
    """
    wait()  # a checkpoint still uploading in this process is deleted once it is logged
    tracker = resolve_tracker(tracker)
    registry = registry_of(tracker, "delete checkpoints")
    found = find_checkpoint(checkpoint, run_id=run_id, experiment=experiment, epoch=epoch, step=step, tracker=tracker)
    held = registry.registrations(found)
    if held and not force:
        raise ProtectedCheckpointError(
            f"{found.record.name} of {run_text(found)} is held by {'; '.join(r.text() for r in held)}: "
            "pass force=True to delete those registered versions and the checkpoint."
        )
    unregistered = tuple(registry.unregister(found)) if held else ()
    if not tracker.delete_checkpoint(found.id, registry.destination_of(found)):
        raise TrackerError(
            f"{tracker.display_name} kept {found.record.name} of {run_text(found)}: something registered or "
            "aliased it meanwhile; list what points at it with `tracked-ckpt ls --registered-model`."
        )
    deletion = Deletion(found, unregistered)
    logger.info("%s", deletion.reason)
    return deletion


def compare_checkpoints(
    a: str | LoggedCheckpoint,
    b: str | LoggedCheckpoint,
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    tracker: str | Tracker = "mlflow",
) -> Comparison:
    """Compare two logged checkpoints: metrics, epoch and step, git commit, run config, size, sha256, run.

    Args:
        a, b: listed checkpoints, or ids or names as `tracked-ckpt ls` prints them.
        run_id, experiment: where to look names up (see `find_checkpoint`).
        tracker: the tracker name or object.

    Example:
        ```python
        diff = compare_checkpoints("digits-e0003", "digits-e0007", run_id=run_id)
        diff.differences  # [('name', 'digits-e0003', 'digits-e0007'), ('epoch', 3, 7), ...]
        ```
    """
    tracker = resolve_tracker(tracker)
    first, second = (find_checkpoint(c, run_id=run_id, experiment=experiment, tracker=tracker) for c in (a, b))
    registry = registry_of(tracker)
    configs = {c.run_id: registry.run_config(c) for c in {first.run_id: first, second.run_id: second}.values()}
    return Comparison(first, second, tuple(_rows(first, second, configs[first.run_id], configs[second.run_id])))


def registered_versions(registered_name: str, *, tracker: str | Tracker = "mlflow") -> list[LoggedCheckpoint]:
    """The checkpoints a registered model's versions point at, oldest version first.

    Each carries its registered version (`extra["version"]`) and its `aliases`;
    versions tracked-ckpt did not register are left out.

    Raises:
        LookupError: there is no such registered model (MLflow) or Registry collection (W&B).

    Example:
        ```python
        for ckpt in registered_versions("digits-classifier"):
            print(ckpt.extra["version"], ckpt.aliases, ckpt.record.name, ckpt.run_id)
        ```
    """
    wait()  # a promotion in this process may still be uploading the checkpoint it names
    return registry_of(resolve_tracker(tracker), "list registered versions").registered_versions(registered_name)


def _rows(
    a: LoggedCheckpoint, b: LoggedCheckpoint, config_a: dict[str, Any], config_b: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    identity = [(field, _identity(a, field), _identity(b, field)) for field in _IDENTITY]
    recorded_a, recorded_b = a.record.metadata(), b.record.metadata()
    schema = [
        (key, recorded_a.get(key), recorded_b.get(key)) for key in SCHEMA_KEYS if key in recorded_a or key in recorded_b
    ]
    metrics = sorted(set(a.record.metrics) | set(b.record.metrics))
    return [
        *identity,
        *schema,
        *((f"metric.{m}", a.record.metrics.get(m), b.record.metrics.get(m)) for m in metrics),
        *((f"config.{k}", config_a.get(k), config_b.get(k)) for k in sorted(set(config_a) | set(config_b))),
    ]


def _identity(checkpoint: LoggedCheckpoint, field: str) -> str:
    if field == "name":
        return checkpoint.record.name
    if field == "run":
        return run_name(checkpoint)
    return str(getattr(checkpoint, field))


__all__ = ["Comparison", "Deletion", "compare_checkpoints", "delete_checkpoint", "registered_versions"]
