"""The registry helper: list checkpoints, promote the best one, load it back by alias or tag.

Tracker-agnostic: the selection rules (which checkpoint is best, whether a
challenger beats the current champion) live here; trackers only answer
narrow questions (`tracked_ckpt.tracker.TrackerRegistry`) with a constant number of calls each, so
promoting over a run of 1,000 checkpoints costs the same as over 10.

Example:

```python
import tracked_ckpt

result = tracked_ckpt.promote_best("digits-classifier")          # alias "champion"
model = tracked_ckpt.load_model("digits-classifier", alias="champion")
for ckpt in tracked_ckpt.list_checkpoints(where={"is_best": True}):
    print(ckpt.record.epoch, ckpt.record.value, ckpt.id)
```
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from tracked_ckpt.cache import fetch_verified
from tracked_ckpt.errors import UnknownKeyError
from tracked_ckpt.fits import last_destination, wait
from tracked_ckpt.record import SCHEMA_KEYS, is_better
from tracked_ckpt.requirements import MissingRequirementError, check_requirements
from tracked_ckpt.tracker import ChecksumError, LoggedCheckpoint, Tracker, registry_of, resolve_tracker, tracker_key

logger = logging.getLogger("tracked_ckpt")

DEFAULT_ALIAS = "champion"
#: `experiment=` for every experiment of the store (MLflow).
ALL_EXPERIMENTS = "*"
_BOOLEAN_KEYS = ("is_best", "git_dirty", "preempted")
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_COMMIT_PREFIX_RE = re.compile(r"^[0-9a-f]{7,39}$")
_TRIAL_RE = re.compile(r"\btrial[ _-]?#?([A-Za-z0-9]+)", re.IGNORECASE)
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS_RE = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PromotionResult:
    """What `promote_best` did.

    Attributes:
        promoted: the alias now points at `checkpoint` because of this call.
        reason: one sentence for people.
        registered_name, alias, version: where the alias points now.
        checkpoint: the best checkpoint of the scope (the challenger).
        previous: the checkpoint the alias pointed at before, if any.
        run_name: the name of the challenger's run ("" when unnamed or unknown).
        trial: the trial the run name says the challenger's run is (`trial-03` -> "03"), if any.

    Example:
        ```python
        result = promote_best("digits-classifier")
        print(result.reason)  # 'champion' now points at digits-e0007 (val_accuracy=0.9583).
        ```
    """

    promoted: bool
    reason: str
    registered_name: str
    alias: str
    version: str | None
    checkpoint: LoggedCheckpoint | None
    previous: LoggedCheckpoint | None = None
    run_name: str = ""
    trial: str | None = None


def validate_alias(alias: str) -> str:
    """Check an alias is usable on every tracker.

    Raises:
        ValueError: the alias is reserved (`latest`, `v<N>`) or has invalid characters.

    Example:
        >>> validate_alias("champion")
        'champion'
    """
    if not isinstance(alias, str) or not _ALIAS_RE.match(alias):
        raise ValueError(f"Invalid alias {alias!r}: use letters, digits, '-' and '_' (e.g. 'champion').")
    if _RESERVED_ALIAS_RE.match(alias):
        raise ValueError(
            f"Alias {alias!r} is reserved (MLflow keeps 'latest' and 'v<N>' for itself): "
            "choose another, e.g. 'champion' or 'best'."
        )
    return alias


def list_checkpoints(
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    tracker: str | Tracker = "mlflow",
    where: Mapping[str, Any] | None = None,
) -> list[LoggedCheckpoint]:
    """List logged checkpoints of a run (default: the last one `fit` logged to) or an experiment.

    Args:
        run_id: the run to list; default: the run of the last `fit` in this
            process, or with `experiment`, every run of that experiment.
        experiment: an experiment (MLflow) or project (W&B) name; `"*"`
            (`ALL_EXPERIMENTS`): every experiment of the MLflow store.
        tracker: the tracker name or object.
        where: schema keys to match, e.g. `{"epoch": 3}`; `git_commit` also
            matches a prefix of 7 or more hex digits (`{"git_commit": "82dd0ef"}`),
            booleans may be written as users do (`True`, "yes", "no", "1", "0").

    Returns:
        The matching checkpoints, oldest first (by when they were logged, across runs).

    Raises:
        UnknownKeyError: a `where` key is not a schema key (the message lists them).

    Example:
        ```python
        best_ones = list_checkpoints(where={"is_best": True})
        ```
    """
    tracker = resolve_tracker(tracker)
    exact, commit_prefix = _where(where)
    found = registry_of(tracker).search_checkpoints(_scope(tracker, run_id, experiment), where=exact)
    if commit_prefix is not None:
        found = [c for c in found if (c.record.git_commit or "").lower().startswith(commit_prefix)]
    return sorted(found, key=_oldest_first)


def best_checkpoint(
    *,
    run_id: str | None = None,
    experiment: str | None = None,
    tracker: str | Tracker = "mlflow",
    monitor: str | None = None,
    mode: str | None = None,
) -> LoggedCheckpoint | None:
    """The best checkpoint of a scope by its monitored metric, chosen on the tracker's side.

    The monitor and mode default to those recorded with the checkpoints.
    Checkpoints whose metric was missing are never chosen. None when the scope
    holds no checkpoint.

    Raises:
        UnknownKeyError: no checkpoint of the scope has a value for `monitor`
            (the message lists the metrics they have).

    Example:
        ```python
        best = best_checkpoint(experiment="digits-demo")
        best.record.epoch, best.record.value  # (7, 0.9583)
        ```
    """
    tracker = resolve_tracker(tracker)
    scope = _scope(tracker, run_id, experiment)
    ranked = _rank(tracker, scope, None, monitor, mode)
    if ranked is not None and ranked.best is None:
        raise _no_value(tracker, scope, None, ranked.monitor)
    return ranked.best if ranked is not None else None


def promote_best(
    registered_name: str,
    *,
    tracker: str | Tracker = "mlflow",
    run_id: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    monitor: str | None = None,
    mode: str | None = None,
    alias: str = DEFAULT_ALIAS,
    only_if_better: bool = True,
) -> PromotionResult:
    """Register the best checkpoint of a run or experiment and point `alias` at it.

    MLflow: a registered model version whose source is the checkpoint's
    LoggedModel, with the schema as version tags, and the alias moved onto it.
    W&B: the artifact version linked into the Registry collection with the alias.

    Args:
        registered_name: the registered model (MLflow) or Registry collection (W&B).
        tracker: the tracker name or object.
        run_id, experiment: the scope, as in `list_checkpoints`.
        name: only consider checkpoints whose base name is this (e.g. "digits").
        monitor, mode: override the metric and direction recorded with the checkpoints.
        alias: the alias to move (not `latest` or `v<N>`).
        only_if_better: keep the current holder of the alias unless the
            challenger is strictly better by the same monitor and mode.

    Returns:
        A `PromotionResult` saying what happened, naming the champion's run (and
        trial). Promoting the same checkpoint twice creates no second version.

    Raises:
        UnknownKeyError: no checkpoint of the scope has a value for `monitor`
            (a typo, say): the message lists the metrics they have.
        LookupError: the scope holds no checkpoint.

    Example:
        ```python
        result = promote_best("digits-classifier")
        result.promoted, result.version, result.checkpoint.record.epoch  # (True, '1', 7)
        ```
    """
    validate_alias(alias)
    tracker = resolve_tracker(tracker)
    scope = _scope(tracker, run_id, experiment)
    ranked = _rank(tracker, scope, {"name": name} if name else None, monitor, mode)
    if ranked is None:
        raise LookupError(
            f"No tracked checkpoints found in {_scope_text(scope)}: train with TrackedModelCheckpoint first."
        )
    challenger, monitor, mode = ranked.best, ranked.monitor, ranked.mode
    challenger_value = challenger.record.metric(monitor) if challenger else None
    if challenger is None or challenger_value is None:
        raise _no_value(tracker, scope, {"name": name} if name else None, monitor)
    run_name, trial = _run_name(challenger), _trial(challenger)
    previous = registry_of(tracker).alias_holder(registered_name, alias)
    if previous is not None and previous.id == challenger.id:
        return PromotionResult(
            False,
            f"{alias!r} already points at {challenger.record.name} of {_run_text(challenger)}.",
            registered_name,
            alias,
            previous.extra.get("version"),
            challenger,
            previous,
            run_name,
            trial,
        )
    if only_if_better and previous is not None:
        held = previous.record.metric(monitor)
        comparable = previous.record.monitor in ("", monitor)
        if held is not None and comparable and not is_better(challenger_value, held, mode):
            return PromotionResult(
                False,
                f"Kept {previous.record.name} of {_run_text(previous)} ({monitor}={held:.6g}) as {alias!r}: "
                f"{challenger.record.name} of {_run_text(challenger)} ({monitor}={challenger_value:.6g}) "
                "is not better.",
                registered_name,
                alias,
                previous.extra.get("version"),
                challenger,
                previous,
                run_name,
                trial,
            )
    version = registry_of(tracker, "register checkpoints").register(registered_name, challenger, alias)
    logger.info(
        "Promoted %s of %s (%s=%.6g) to %s@%s (version %s).",
        challenger.record.name,
        _run_text(challenger),
        monitor,
        challenger_value,
        registered_name,
        alias,
        version,
    )
    return PromotionResult(
        True,
        f"{alias!r} now points at {challenger.record.name} of {_run_text(challenger)} "
        f"({monitor}={challenger_value:.6g}).",
        registered_name,
        alias,
        version,
        challenger,
        previous,
        run_name,
        trial,
    )


def registered_checkpoint(
    registered_name: str,
    *,
    alias: str | None = None,
    version: str | None = None,
    tracker: str | Tracker = "mlflow",
) -> LoggedCheckpoint:
    """The checkpoint behind an alias (default `champion`) or a version of a registered model.

    Example:
        ```python
        ckpt = registered_checkpoint("digits-classifier")
        ckpt.record.epoch, ckpt.record.git_commit  # (7, '9c1e4a7b…')
        ```
    """
    if alias is None and version is None:
        alias = DEFAULT_ALIAS
    return registry_of(resolve_tracker(tracker), "resolve registered checkpoints").resolve(
        registered_name, alias=alias, version=version
    )


def download_checkpoint(
    registered_name: str | None = None,
    *,
    alias: str | None = None,
    version: str | None = None,
    checkpoint: LoggedCheckpoint | None = None,
    tracker: str | Tracker = "mlflow",
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> str:
    """Download a checkpoint file (by registered alias/version, or a listed checkpoint); return its path.

    With neither alias nor version, the `champion` alias is used.

    Files land in a cache keyed by content hash (default `~/.cache/tracked_ckpt`,
    or `TRACKED_CKPT_CACHE`) and are verified against the recorded sha256; a
    warm call transfers nothing.

    Raises:
        ChecksumError: the downloaded bytes do not match the recorded sha256.

    Example:
        ```python
        path = download_checkpoint("digits-classifier", alias="champion")
        keras.saving.load_model(path)
        ```
    """
    wait()  # a promotion may name a checkpoint whose upload runs in the background (blocking=False)
    tracker = resolve_tracker(tracker)
    checkpoint = _checkpoint_meant(tracker, registered_name, alias, version, checkpoint)
    return fetch_verified(tracker, checkpoint, cache_dir, verify)


def load_model(
    registered_name: str | None = None,
    *,
    alias: str | None = None,
    version: str | None = None,
    checkpoint: LoggedCheckpoint | None = None,
    tracker: str | Tracker = "mlflow",
    model: Any = None,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> Any:
    """Load a checkpoint back as a `keras.Model`.

    Args:
        registered_name, alias, version: which registered checkpoint (alias wins
            over version; neither means the `champion` alias).
        checkpoint: a checkpoint from `list_checkpoints`, instead of a registered name.
        tracker: the tracker name or object.
        model: for weights-only checkpoints, the model to load the weights into.
        custom_objects: classes and functions the checkpoint's config names that
            are not registered with Keras (`{"Scale": Scale}`), passed to
            `keras.saving.load_model`.
        compile, safe_mode: passed to `keras.saving.load_model`. `safe_mode`
            stays on unless you trust the checkpoint's source.
        cache_dir, verify: the download cache and its checks (see `download_checkpoint`).

    Raises:
        MissingRequirementError: a package the checkpoint's recorded requirements
            name is not installed (one line with the `pip install` command).

    Example:
        ```python
        model = load_model("digits-classifier", alias="champion")
        model = load_model("digits-classifier", custom_objects={"Scale": Scale})
        ```
    """
    import keras

    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError(
            f"custom_objects must map names to classes or functions, e.g. custom_objects={{'Scale': Scale}}; "
            f"got {type(custom_objects).__name__}."
        )
    wait()  # see download_checkpoint
    tracker = resolve_tracker(tracker)
    checkpoint = _checkpoint_meant(tracker, registered_name, alias, version, checkpoint)
    if checkpoint.record.format == "weights.h5" and model is None:
        raise ValueError(
            f"{checkpoint.record.name} is a weights-only checkpoint: build the model in code and "
            "pass it as load_model(..., model=my_model)."
        )
    if checkpoint.record.format != "weights.h5":
        check_requirements(checkpoint.record.requirements, checkpoint.record.name or "The checkpoint")
    path = download_checkpoint(checkpoint=checkpoint, tracker=tracker, cache_dir=cache_dir, verify=verify)
    if checkpoint.record.format == "weights.h5":
        model.load_weights(path)
        return model
    return keras.saving.load_model(
        path, custom_objects=dict(custom_objects) if custom_objects else None, compile=compile, safe_mode=safe_mode
    )


# -- helpers ----------------------------------------------------------------------------


def _checkpoint_meant(
    tracker: Tracker,
    registered_name: str | None,
    alias: str | None,
    version: str | None,
    checkpoint: LoggedCheckpoint | None,
) -> LoggedCheckpoint:
    """The checkpoint a caller means: given directly, or by registered name and alias/version."""
    if checkpoint is not None:
        return checkpoint
    if registered_name is None:
        raise ValueError("Name a registered model (with alias= or version=) or pass checkpoint=.")
    if alias is None and version is None:
        alias = DEFAULT_ALIAS
    return registry_of(tracker, "download checkpoints").resolve_for_load(registered_name, alias=alias, version=version)


@dataclasses.dataclass(frozen=True)
class _Ranked:
    best: LoggedCheckpoint | None  # None: no checkpoint of the scope has a value for `monitor`
    monitor: str
    mode: str


def _rank(
    tracker: Tracker, scope: Mapping[str, Any], where: Mapping[str, Any] | None, monitor: str | None, mode: str | None
) -> _Ranked | None:
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
    return _Ranked(best, monitor, mode)


def _scope(tracker: Tracker, run_id: str | None, experiment: str | None) -> dict[str, Any]:
    """The tracker's scope; with neither given, it defaults to where this process's last fit logged."""
    wait()  # fits that returned with uploads still running (blocking=False): their checkpoints count
    return registry_of(tracker).scope(run_id, experiment, last=last_destination(tracker_key(tracker)))


def _where(where: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """`where` as the tracker matches it exactly, and a git commit prefix to match here (or None).

    Booleans are read as users write them; a `git_commit` of 7 to 39 hex digits is a prefix
    (what `ls` prints is 8), which no tracker's exact match would find.
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


def _oldest_first(checkpoint: LoggedCheckpoint) -> tuple[float, str, int, int]:
    """By when it was logged (`extra["created"]`, where the tracker says), then step and epoch.

    Two fits that count steps from 0 (stages of a fine-tune, trials) do not interleave;
    without a creation time, each run's checkpoints stay together.
    """
    created = checkpoint.extra.get("created")
    if isinstance(created, (int, float)):
        return float(created), "", checkpoint.record.step, checkpoint.record.epoch
    return 0.0, checkpoint.run_id, checkpoint.record.step, checkpoint.record.epoch


def _no_value(
    tracker: Tracker, scope: Mapping[str, Any], where: Mapping[str, Any] | None, monitor: str
) -> UnknownKeyError:
    """The error for a monitor no checkpoint of the scope has a value for, listing the metrics they have."""
    sample = registry_of(tracker).search_checkpoints(scope, where=where, max_results=20)
    metrics = sorted({key for c in sample for key, value in c.record.metrics.items() if value is not None})
    have = ", ".join(metrics) if metrics else "no metrics"
    return UnknownKeyError(
        f"No checkpoint in {_scope_text(scope)} has a value for {monitor!r}: they have {have}. "
        "Pass one of those as monitor= (--monitor)."
    )


def _run_name(checkpoint: LoggedCheckpoint) -> str:
    return str(checkpoint.extra.get("run_name") or "")


def _trial(checkpoint: LoggedCheckpoint) -> str | None:
    """The trial a run's name says it is: `tuner-trial-03` -> "03"."""
    found = _TRIAL_RE.search(_run_name(checkpoint))
    return found.group(1) if found else None


def _run_text(checkpoint: LoggedCheckpoint) -> str:
    """A run as people tell runs apart: its name (and trial) and its id.

    Example:
        >>> from tracked_ckpt.record import CheckpointRecord
        >>> record = CheckpointRecord.from_metadata({"epoch": 3, "step": 30, "sha256": "0" * 64}, name="net-e0003")
        >>> _run_text(LoggedCheckpoint("m-1", "1a2b", record, "mlflow", extra={"run_name": "tune-trial-02"}))
        "run 'tune-trial-02' (1a2b, trial 02)"
        >>> _run_text(LoggedCheckpoint("m-1", "1a2b", record, "mlflow"))
        'run 1a2b'
    """
    name, trial = _run_name(checkpoint), _trial(checkpoint)
    if not name:
        return f"run {checkpoint.run_id}"
    return f"run {name!r} ({checkpoint.run_id}{f', trial {trial}' if trial else ''})"


def _scope_text(scope: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in scope.items() if k not in ("tracking_uri",)) or "scope"


__all__ = [
    "ALL_EXPERIMENTS",
    "ChecksumError",
    "LoggedCheckpoint",
    "MissingRequirementError",
    "PromotionResult",
    "UnknownKeyError",
    "best_checkpoint",
    "download_checkpoint",
    "list_checkpoints",
    "load_model",
    "promote_best",
    "registered_checkpoint",
    "validate_alias",
]
