"""The registry helper: list checkpoints, promote the best one, load it back by alias or tag.

Tracker-agnostic: the promotion rule (whether a challenger beats the current
champion) lives here, which checkpoints a read selects (`where`, ranking, order)
in `tracked_ckpt.selection`; trackers only answer narrow questions
(`tracked_ckpt.tracker.TrackerRegistry`) with a constant number of calls each,
so promoting over a run of 1,000 checkpoints costs the same as over 10.

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
from tracked_ckpt.fits import wait
from tracked_ckpt.logged_code import MissingCodeError, load_keras_file
from tracked_ckpt.lookup import DEFAULT_ALIAS, checkpoint_meant, scope_of
from tracked_ckpt.record import is_better
from tracked_ckpt.requirements import MissingRequirementError, check_requirements
from tracked_ckpt.selection import (
    no_value_error,
    oldest_first,
    parse_where,
    rank,
    run_name,
    run_text,
    scope_text,
    trial_of,
    with_commit_prefix,
)
from tracked_ckpt.tracker import ChecksumError, LoggedCheckpoint, Tracker, registry_of, resolve_tracker

logger = logging.getLogger("tracked_ckpt")

#: `experiment=` for every experiment of the store (MLflow).
ALL_EXPERIMENTS = "*"
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
    exact, commit_prefix = parse_where(where)
    found = registry_of(tracker).search_checkpoints(scope_of(tracker, run_id, experiment), where=exact)
    return sorted(with_commit_prefix(found, commit_prefix), key=oldest_first)


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
    scope = scope_of(tracker, run_id, experiment)
    ranked = rank(tracker, scope, None, monitor, mode)
    if ranked is not None and ranked.best is None:
        raise no_value_error(tracker, scope, None, ranked.monitor)
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
        TrackerError: the best cannot be registered, e.g. it is a W&B offline
            run's (the message names it and says to `wandb sync` the run).

    Example:
        ```python
        result = promote_best("digits-classifier")
        result.promoted, result.version, result.checkpoint.record.epoch  # (True, '1', 7)
        ```
    """
    validate_alias(alias)
    tracker = resolve_tracker(tracker)
    scope = scope_of(tracker, run_id, experiment)
    ranked = rank(tracker, scope, {"name": name} if name else None, monitor, mode)
    if ranked is None:
        raise LookupError(
            f"No tracked checkpoints found in {scope_text(scope)}: train with TrackedModelCheckpoint first."
        )
    challenger, monitor, mode = ranked.best, ranked.monitor, ranked.mode
    challenger_value = challenger.record.metric(monitor) if challenger else None
    if challenger is None or challenger_value is None:
        raise no_value_error(tracker, scope, {"name": name} if name else None, monitor)
    challenger_run, trial = run_name(challenger), trial_of(challenger)
    registry_of(tracker).check_registrable(challenger)  # before asking the registry anything
    previous = registry_of(tracker).alias_holder(registered_name, alias)
    if previous is not None and previous.id == challenger.id:
        return PromotionResult(
            False,
            f"{alias!r} already points at {challenger.record.name} of {run_text(challenger)}.",
            registered_name,
            alias,
            previous.extra.get("version"),
            challenger,
            previous,
            challenger_run,
            trial,
        )
    if only_if_better and previous is not None:
        held = previous.record.metric(monitor)
        comparable = previous.record.monitor in ("", monitor)
        if held is not None and comparable and not is_better(challenger_value, held, mode):
            return PromotionResult(
                False,
                f"Kept {previous.record.name} of {run_text(previous)} ({monitor}={held:.6g}) as {alias!r}: "
                f"{challenger.record.name} of {run_text(challenger)} ({monitor}={challenger_value:.6g}) "
                "is not better.",
                registered_name,
                alias,
                previous.extra.get("version"),
                challenger,
                previous,
                challenger_run,
                trial,
            )
    version = registry_of(tracker, "register checkpoints").register(registered_name, challenger, alias)
    logger.info(
        "Promoted %s of %s (%s=%.6g) to %s@%s (version %s).",
        challenger.record.name,
        run_text(challenger),
        monitor,
        challenger_value,
        registered_name,
        alias,
        version,
    )
    return PromotionResult(
        True,
        f"{alias!r} now points at {challenger.record.name} of {run_text(challenger)} "
        f"({monitor}={challenger_value:.6g}).",
        registered_name,
        alias,
        version,
        challenger,
        previous,
        challenger_run,
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
    run_id: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    tracker: str | Tracker = "mlflow",
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> str:
    """Download a checkpoint file (by registered alias/version, a listed checkpoint, or by run and
    epoch or name as `load_model` takes them); return its path.

    With a registered name and neither alias nor version, the `champion` alias is used.

    Files land in a cache keyed by content hash (default `~/.cache/tracked_ckpt`,
    or `TRACKED_CKPT_CACHE`) and are verified against the recorded sha256; a
    warm call transfers nothing.

    Raises:
        ChecksumError: the downloaded bytes do not match the recorded sha256.

    Example:
        ```python
        path = download_checkpoint("digits-classifier", alias="champion")
        path = download_checkpoint(run_id=run_id, epoch=3)
        keras.saving.load_model(path)
        ```
    """
    wait()  # a promotion may name a checkpoint whose upload runs in the background (blocking=False)
    tracker = resolve_tracker(tracker)
    checkpoint = checkpoint_meant(
        tracker,
        registered_name,
        alias,
        version,
        checkpoint,
        run_id=run_id,
        experiment=experiment,
        name=name,
        epoch=epoch,
        step=step,
    )
    return fetch_verified(tracker, checkpoint, cache_dir, verify)


def load_model(
    registered_name: str | None = None,
    *,
    alias: str | None = None,
    version: str | None = None,
    checkpoint: LoggedCheckpoint | None = None,
    run_id: str | None = None,
    experiment: str | None = None,
    name: str | None = None,
    epoch: int | None = None,
    step: int | None = None,
    tracker: str | Tracker = "mlflow",
    model: Any = None,
    custom_objects: Mapping[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
    logged_code: bool = True,
) -> Any:
    """Load a checkpoint back as a `keras.Model`, with the code logged with it (`code_paths`) if it needs it.

    Args:
        registered_name, alias, version: which registered checkpoint (alias wins
            over version; neither means the `champion` alias).
        checkpoint: a checkpoint from `list_checkpoints`, instead of a registered name.
        run_id, experiment, name, epoch, step: instead of a registered name, a logged
            checkpoint by run and epoch (or step), or by name (`digits-e0003`) in a run or
            experiment (see `find_checkpoint`).
        tracker: the tracker name or object.
        model: for weights-only checkpoints, the model to load the weights into.
        custom_objects: classes and functions the checkpoint's config names that
            are not registered with Keras (`{"Scale": Scale}`), passed to
            `keras.saving.load_model`.
        compile, safe_mode: passed to `keras.saving.load_model`. `safe_mode`
            stays on unless you trust the checkpoint's source.
        cache_dir, verify: the download cache and its checks (see `download_checkpoint`).
        logged_code: import the code logged with the checkpoint (`code_paths`; MLflow)
            for this call when Keras cannot find a class otherwise; False never runs it.

    Raises:
        MissingCodeError: the config names a class or function that neither Keras,
            `custom_objects` nor the logged code defines (one line with both fixes).
        MissingRequirementError: a package the checkpoint's recorded requirements
            name is not installed (one line with the `pip install` command).

    Example:
        ```python
        model = load_model("digits-classifier", alias="champion")
        model = load_model("digits-classifier", custom_objects={"Scale": Scale})
        model = load_model(run_id=run_id, epoch=3)
        model = load_model(name="digits-e0003", experiment="digits-demo")
        ```
    """
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise TypeError(
            f"custom_objects must map names to classes or functions, e.g. custom_objects={{'Scale': Scale}}; "
            f"got {type(custom_objects).__name__}."
        )
    wait()  # see download_checkpoint
    tracker = resolve_tracker(tracker)
    checkpoint = checkpoint_meant(
        tracker,
        registered_name,
        alias,
        version,
        checkpoint,
        run_id=run_id,
        experiment=experiment,
        name=name,
        epoch=epoch,
        step=step,
    )
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
    return load_keras_file(
        path,
        checkpoint,
        registry_of(tracker, "download checkpoints"),
        custom_objects=custom_objects,
        compile=compile,
        safe_mode=safe_mode,
        cache_dir=cache_dir,
        logged_code=logged_code,
    )


__all__ = [
    "ALL_EXPERIMENTS",
    "DEFAULT_ALIAS",
    "ChecksumError",
    "LoggedCheckpoint",
    "MissingCodeError",
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
