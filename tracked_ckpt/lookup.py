"""Which one checkpoint a caller names: by id, by name, or by run and epoch (or step).

Below `tracked_ckpt.registry` and `tracked_ckpt.verbs`, which load, pull,
compare and delete the checkpoint found here. A checkpoint is named

* by its tracker id, as `tracked-ckpt ls` prints it (an MLflow LoggedModel id
  `m-…`, a W&B version `entity/project/collection:vN`);
* by its name, as `ls` prints it (`digits-e0003`, `digits-e0002-b000020`), or a base
  name (`digits`) narrowed by epoch or step;
* by epoch and/or step within a run or an experiment. An epoch alone means that
  epoch's end-of-epoch save when there is exactly one, not a batch-level save of it.

The scope is a run or an experiment, as for `list_checkpoints` (default: the
run the last `fit` in this process logged to). Naming nothing, or two
checkpoints, is an error that lists what exists.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tracked_ckpt.errors import AmbiguousCheckpointError, CheckpointNotFoundError
from tracked_ckpt.fits import last_destination, wait
from tracked_ckpt.record import split_checkpoint_name
from tracked_ckpt.selection import oldest_first, run_text, scope_text
from tracked_ckpt.tracker import LoggedCheckpoint, Tracker, registry_of, resolve_tracker, tracker_key

# A checkpoint name as `checkpoint_name` forms it (`digits-e0003`, `digits-e0003-b000020`); anything
# else given as a reference is taken for a tracker id.
_CHECKPOINT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*-e\d{4,}(-b\d{6,})?$")
_SHOWN = 10  # names listed in an error before "and N more"
#: The alias `promote_best` moves and registered reads resolve when none is named.
DEFAULT_ALIAS = "champion"


def is_checkpoint_name(reference: str) -> bool:
    """Whether a reference is a checkpoint name (else it is taken for a tracker id).

    Example:
        >>> is_checkpoint_name("digits-e0003"), is_checkpoint_name("m-0f3a9c"), is_checkpoint_name("a/b/c-1:v2")
        (True, False, False)
    """
    return bool(_CHECKPOINT_NAME_RE.match(reference))


def scope_of(tracker: Tracker, run_id: str | None, experiment: str | None) -> dict[str, Any]:
    """The tracker's scope; with neither given, it defaults to where this process's last fit logged."""
    wait()  # fits that returned with uploads still running (blocking=False): their checkpoints count
    return registry_of(tracker).scope(run_id, experiment, last=last_destination(tracker_key(tracker)))


def find_checkpoint(
    checkpoint: str | LoggedCheckpoint | None = None,
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    tracker: str | Tracker = "mlflow",
) -> LoggedCheckpoint:
    """The one logged checkpoint a caller names: by id or name, or by epoch and/or step in a run.

    Args:
        checkpoint: a listed checkpoint (returned as is), or a reference: a tracker id
            as `ls` prints it, a checkpoint name (`digits-e0003`), or with `epoch` or
            `step` a base name (`digits`).
        run_id, experiment: where to look, as for `list_checkpoints` (default: the run
            the last `fit` in this process logged to).
        name: a checkpoint name (`digits-e0003`) or a base name (`digits`, with `epoch` or `step`).
        epoch, step: the checkpoint's epoch (its end-of-epoch save, if it has one) and step.
        tracker: the tracker name or object.

    Raises:
        CheckpointNotFoundError: nothing matches (the message names what the scope holds).
        AmbiguousCheckpointError: several checkpoints match (the message lists them).

    Example:
        ```python
        ckpt = find_checkpoint(run_id=run_id, epoch=3)
        ckpt = find_checkpoint("digits-e0003", experiment="digits-demo")
        ```
    """
    if isinstance(checkpoint, LoggedCheckpoint):
        return checkpoint
    tracker = resolve_tracker(tracker)
    if checkpoint is not None:
        if not isinstance(checkpoint, str) or not checkpoint:
            raise TypeError(f"checkpoint must be a listed checkpoint, an id or a name; got {checkpoint!r}.")
        if not is_checkpoint_name(checkpoint) and epoch is None and step is None:
            return _by_id(tracker, checkpoint)
        if name is not None and name != checkpoint:
            raise ValueError(f"Name one checkpoint: {checkpoint!r} or name={name!r}, not both.")
        name = checkpoint
    if name is None and epoch is None and step is None:
        raise ValueError(
            "Say which checkpoint: its id or name (e.g. 'digits-e0003'), or epoch= and/or step= "
            "within run_id= or experiment=."
        )
    scope = scope_of(tracker, run_id, experiment)
    search = registry_of(tracker).search_checkpoints
    where: dict[str, Any] = {"epoch": epoch} if epoch is not None else {}
    full_name, name_epoch = None, None
    if name is not None:
        base, name_epoch, _batch = split_checkpoint_name(name)
        where["name"] = base
        if name_epoch is not None:
            full_name = name
            where.setdefault("epoch", name_epoch)
    if step is not None:
        where["step"] = step
    found = [] if full_name is not None and where["epoch"] != name_epoch else search(scope, where=where)
    if full_name is not None:
        found = [c for c in found if c.record.name == full_name]
    if len(found) > 1 and full_name is None and step is None and epoch is not None:
        found = [c for c in found if c.record.batch is None] or found  # an epoch means its end-of-epoch save
    asked = _asked(full_name or name, epoch, step)
    where_text = _scope_words(scope, run_id, experiment)
    if not found:
        exists = sorted(search(scope), key=oldest_first)
        raise CheckpointNotFoundError(f"No checkpoint matches {asked} in {where_text}: {_holds(exists)}.")
    if len(found) > 1:
        found = sorted(found, key=oldest_first)
        runs = {c.run_id for c in found}
        how = "pass run_id= to choose one, or its id" if len(runs) > 1 else "pass its name or id, or step=, instead"
        raise AmbiguousCheckpointError(
            f"{len(found)} checkpoints match {asked} in {where_text}: {_listed(found, with_runs=len(runs) > 1)}; {how}."
        )
    return found[0]


def checkpoint_meant(
    tracker: Tracker,
    registered_name: str | None,
    alias: str | None,
    version: str | None,
    checkpoint: LoggedCheckpoint | None,
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
) -> LoggedCheckpoint:
    """The checkpoint a caller means: given directly, by registered name and alias/version, or
    logged, by run and epoch or step, or by name (`find_checkpoint`)."""
    if checkpoint is not None:
        return checkpoint
    logged = {"run_id": run_id, "experiment": experiment, "name": name, "epoch": epoch, "step": step}
    if registered_name is not None and any(value is not None for value in logged.values()):
        raise ValueError(
            f"Name a registered model ({registered_name!r}) or a logged checkpoint "
            f"({', '.join(f'{k}={v!r}' for k, v in logged.items() if v is not None)}), not both."
        )
    if registered_name is None:
        if name is not None or epoch is not None or step is not None:
            return find_checkpoint(
                run_id=run_id, experiment=experiment, name=name, epoch=epoch, step=step, tracker=tracker
            )
        raise ValueError(
            "Name a registered model (with alias= or version=), or a logged checkpoint (run_id= and epoch=, or name=)."
        )
    if alias is None and version is None:
        alias = DEFAULT_ALIAS
    return registry_of(tracker, "download checkpoints").resolve_for_load(registered_name, alias=alias, version=version)


def _by_id(tracker: Tracker, checkpoint_id: str) -> LoggedCheckpoint:
    found = registry_of(tracker).checkpoint_by_id(checkpoint_id)
    if found is None:
        raise CheckpointNotFoundError(
            f"No finished checkpoint has the id {checkpoint_id!r} on {tracker.display_name}: "
            "copy an id or a name from `tracked-ckpt ls`."
        )
    return found


def _asked(name: str | None, epoch: int | None, step: int | None) -> str:
    """What a caller asked for, as messages say it.

    Example:
        >>> _asked("digits-e0003", None, None), _asked(None, 3, 20), _asked("digits", 3, None)
        ('digits-e0003', 'epoch 3 and step 20', 'digits at epoch 3')
    """
    parts = " and ".join(f"{key} {value}" for key, value in (("epoch", epoch), ("step", step)) if value is not None)
    if name is None:
        return parts
    return f"{name} at {parts}" if parts else name


def _scope_words(scope: dict[str, Any], run_id: str | None, experiment: str | None) -> str:
    """Where a look-up looked, as the caller named it."""
    if scope.get("run_id"):
        return f"run {scope['run_id']}"
    if experiment:
        return f"experiment {experiment}"
    return scope_text(scope)


def _holds(exists: Sequence[LoggedCheckpoint]) -> str:
    if not exists:
        return "it holds no checkpoints"
    return f"it has {_listed(exists, with_runs=len({c.run_id for c in exists}) > 1)}"


def _listed(found: Sequence[LoggedCheckpoint], *, with_runs: bool) -> str:
    """Checkpoints as an error lists them: names (and runs), the first few, then how many more."""
    shown = [
        f"{c.record.name} of {run_text(c)}"
        if with_runs
        else f"{c.record.name} (step {c.record.step})"
        if any(o.record.name == c.record.name for o in found if o is not c)
        else c.record.name
        for c in found[:_SHOWN]
    ]
    more = f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else ""
    return ", ".join(shown) + more


__all__ = ["DEFAULT_ALIAS", "checkpoint_meant", "find_checkpoint", "is_checkpoint_name", "scope_of"]
