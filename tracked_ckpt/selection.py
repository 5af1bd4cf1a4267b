"""Which checkpoints of a scope a read selects: `where` filters, ranking by the monitor, listing order.

Below `tracked_ckpt.registry`, which reads checkpoints back through a tracker:
this module turns a user's `where` into what a tracker matches exactly (keys
checked against the schema, booleans read as users write them, a git commit
prefix matched here), ranks a scope by its monitored metric on the tracker's
side, orders listings oldest first across fits and runs, says which keys or
metrics exist when a request names one that does not, and names the scope and
run of what it selected as messages print them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tracked_ckpt.errors import UnknownKeyError
from tracked_ckpt.record import SCHEMA_KEYS
from tracked_ckpt.tracker import LoggedCheckpoint, Tracker, registry_of

_BOOLEAN_KEYS = ("is_best", "git_dirty", "preempted")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_COMMIT_PREFIX_RE = re.compile(r"^[0-9a-f]{7,39}$")
_TRIAL_RE = re.compile(r"\btrial[ _-]?#?([A-Za-z0-9]+)", re.IGNORECASE)


# -- where ------------------------------------------------------------------------------------


def parse_where(where: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """`where` as the tracker matches it exactly, and a git commit prefix to match here (or None).

    Booleans are read as users write them; a `git_commit` of 7 to 39 hex digits is a prefix
    (what `ls` prints is 8), which no tracker's exact match would find.

    Raises:
        UnknownKeyError: a key is neither a schema key nor `name` (the message lists them).
        ValueError: a boolean key's value is not a boolean word.

    Example:
        >>> parse_where({"is_best": "yes", "git_commit": "82DD0EF1"})
        ({'is_best': True}, '82dd0ef1')
        >>> parse_where({"epoch": 3})
        ({'epoch': 3}, None)
    """
    if not where:
        return None, None
    unknown = [k for k in where if k not in SCHEMA_KEYS and k != "name"]
    if unknown:
        raise UnknownKeyError(f"Cannot filter on {unknown}: use schema keys {list(SCHEMA_KEYS)} or 'name'.")
    exact: dict[str, Any] = {}
    prefix = None
    for key, value in where.items():
        if key in _BOOLEAN_KEYS and not isinstance(value, bool):
            word = str(value).strip().lower()
            if word not in _BOOLEANS:
                raise ValueError(f"{key}={value!r} is not a boolean: use true/false, yes/no or 1/0.")
            value = _BOOLEANS[word]
        if key == "git_commit" and _COMMIT_PREFIX_RE.match(str(value).strip().lower()):
            prefix = str(value).strip().lower()
            continue
        exact[key] = value
    return exact or None, prefix


def with_commit_prefix(found: Sequence[LoggedCheckpoint], prefix: str | None) -> list[LoggedCheckpoint]:
    """The checkpoints whose git commit starts with `prefix` (all of them when it is None)."""
    if prefix is None:
        return list(found)
    return [c for c in found if (c.record.git_commit or "").lower().startswith(prefix)]


# -- order and rank ---------------------------------------------------------------------------


def oldest_first(checkpoint: LoggedCheckpoint) -> tuple[float, str, int, int]:
    """Sort key: by when it was logged (`extra["created"]`, where the tracker says), then step and epoch.

    Two fits that count steps from 0 (stages of a fine-tune, trials) do not interleave;
    without a creation time, each run's checkpoints stay together.
    """
    created = checkpoint.extra.get("created")
    if isinstance(created, (int, float)):
        return float(created), "", checkpoint.record.step, checkpoint.record.epoch
    return 0.0, checkpoint.run_id, checkpoint.record.step, checkpoint.record.epoch


@dataclasses.dataclass(frozen=True)
class Ranked:
    """The best checkpoint of a scope and the monitor and mode it was ranked by."""

    best: LoggedCheckpoint | None  # None: no checkpoint of the scope has a value for `monitor`
    monitor: str
    mode: str


def rank(
    tracker: Tracker, scope: Mapping[str, Any], where: Mapping[str, Any] | None, monitor: str | None, mode: str | None
) -> Ranked | None:
    """The best checkpoint of a scope, ranked on the tracker's side by `monitor` and `mode`.

    Both default to those recorded with the checkpoints (one sampled); None when
    they are needed and the scope holds no checkpoint at all.
    """
    if monitor is None or mode is None:
        sample = registry_of(tracker).search_checkpoints(scope, where=where, max_results=1)
        if not sample:
            return None
        monitor = monitor or sample[0].record.monitor
        mode = mode or sample[0].record.mode
    if mode not in ("min", "max"):
        raise ValueError(f"Invalid mode {mode!r}: use 'min' or 'max'.")
    ranked = registry_of(tracker).search_checkpoints(scope, where=where, order_by=(monitor, mode), max_results=1)
    best = ranked[0] if ranked and ranked[0].record.metric(monitor) is not None else None
    return Ranked(best, monitor, mode)


def no_value_error(
    tracker: Tracker, scope: Mapping[str, Any], where: Mapping[str, Any] | None, monitor: str
) -> UnknownKeyError:
    """The error for a monitor no checkpoint of the scope has a value for, listing the metrics they have."""
    sample = registry_of(tracker).search_checkpoints(scope, where=where, max_results=20)
    metrics = sorted({key for c in sample for key, value in c.record.metrics.items() if value is not None})
    have = ", ".join(metrics) if metrics else "no metrics"
    return UnknownKeyError(
        f"No checkpoint in {scope_text(scope)} has a value for {monitor!r}: they have {have}. "
        "Pass one of those as monitor=."
    )


# -- naming what was selected ----------------------------------------------------------------


def scope_text(scope: Mapping[str, Any]) -> str:
    """A scope as messages name it, without its tracking URI.

    Example:
        >>> scope_text({"experiment": "digits", "tracking_uri": "sqlite:///mlflow.db"})
        'experiment=digits'
    """
    return ", ".join(f"{k}={v}" for k, v in scope.items() if k not in ("tracking_uri",)) or "scope"


def run_name(checkpoint: LoggedCheckpoint) -> str:
    """The name of a checkpoint's run, where the tracker says (else "")."""
    return str(checkpoint.extra.get("run_name") or "")


def trial_of(checkpoint: LoggedCheckpoint) -> str | None:
    """The trial a run's name says it is: `tuner-trial-03` -> "03"."""
    found = _TRIAL_RE.search(run_name(checkpoint))
    return found.group(1) if found else None


def run_text(checkpoint: LoggedCheckpoint) -> str:
    """A run as people tell runs apart: its name (and trial) and its id.

    Example:
        >>> from tracked_ckpt.record import CheckpointRecord
        >>> record = CheckpointRecord.from_metadata({"epoch": 3, "step": 30, "sha256": "0" * 64}, name="net-e0003")
        >>> run_text(LoggedCheckpoint("m-1", "1a2b", record, "mlflow", extra={"run_name": "tune-trial-02"}))
        "run 'tune-trial-02' (1a2b, trial 02)"
        >>> run_text(LoggedCheckpoint("m-1", "1a2b", record, "mlflow"))
        'run 1a2b'
    """
    name, trial = run_name(checkpoint), trial_of(checkpoint)
    if not name:
        return f"run {checkpoint.run_id}"
    return f"run {name!r} ({checkpoint.run_id}{f', trial {trial}' if trial else ''})"


__all__ = [
    "Ranked",
    "no_value_error",
    "oldest_first",
    "parse_where",
    "rank",
    "run_name",
    "run_text",
    "scope_text",
    "trial_of",
    "with_commit_prefix",
]
