"""The one narrow interface every tracker implements, and how names resolve to trackers.

The callback and the publisher only ever talk to a `Tracker`; they never know
which one. A tracker is found by name through the `tracked_ckpt.trackers` entry
point group, so a third-party package can add one with a single line in its
`pyproject.toml`:

    [project.entry-points."tracked_ckpt.trackers"]
    mytracker = "my_package.tracking:MyTracker"
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import importlib.metadata
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tracked_ckpt.errors import ChecksumError as ChecksumError  # raised by `fetch`; importable from here too
from tracked_ckpt.errors import TrackerError as TrackerError
from tracked_ckpt.record import CheckpointRecord

if TYPE_CHECKING:
    from tracked_ckpt.packgc import StoreCollected

logger = logging.getLogger("tracked_ckpt")

ENTRY_POINT_GROUP = "tracked_ckpt.trackers"

# Used when the distribution's entry points are not visible (e.g. running from a
# source tree that was never installed). Entry points win when both exist.
_BUILTIN = {
    "mlflow": ("tracked_ckpt.integrations.mlflow:MlflowTracker", "mlflow"),
    "wandb": ("tracked_ckpt.integrations.wandb:WandbTracker", "wandb"),
}


@dataclasses.dataclass(frozen=True)
class LoggedCheckpoint:
    """A checkpoint as the tracker holds it.

    Attributes:
        id: the tracker's id (MLflow LoggedModel id, W&B artifact version path).
        run_id: the run that logged it.
        record: the schema values recorded with it.
        tracker: the tracker's name ("mlflow", "wandb", ...).
        location: where its files are, in the tracker's terms.
        aliases: registry aliases pointing at it, where known.
        extra: tracker-specific details (e.g. the registered version).

    Example:
        ```python
        for ckpt in tracked_ckpt.list_checkpoints(where={"is_best": True}):
            print(ckpt.id, ckpt.record.epoch, ckpt.record.value)
        ```
    """

    id: str
    run_id: str
    record: CheckpointRecord
    tracker: str
    location: str = ""
    aliases: tuple[str, ...] = ()
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Registration:
    """What keeps a checkpoint from being deleted: a registered model version, or an alias, pointing at it.

    Attributes:
        registered_name: the registered model (MLflow) or Registry collection (W&B); for an
            alias a person gave the logged W&B version itself, its artifact collection.
        version: the registered version ("1" on MLflow, "v0" on W&B).
        aliases: the aliases on that version (e.g. `("champion",)`), routine ones left out.

    Example:
        >>> Registration("digits-classifier", "1", ("champion",)).text()
        "digits-classifier version 1 (alias 'champion')"
    """

    registered_name: str
    version: str
    aliases: tuple[str, ...] = ()

    def text(self) -> str:
        """The registration as messages name it."""
        held = ", ".join(repr(a) for a in self.aliases)
        aliases = f" (alias{'es' if len(self.aliases) > 1 else ''} {held})" if self.aliases else ""
        return f"{self.registered_name} version {self.version}{aliases}"


class Tracker(abc.ABC):
    """The contract between tracked-ckpt and a tracker: a run to log checkpoints into.

    A tracker must implement `start` and `log_checkpoint`; everything else has a
    default that is safe for a tracker which cannot do it. Two optional parts add
    capabilities, each a base class of its own: `TrackerRegistry` (list, promote,
    pull, load) and `TrackerJobKeys` (resume by job key). The callback, the
    publisher and the registry helper only ever talk to these interfaces.

    Threads: `start` and `finish` run on the training thread; `log_checkpoint`
    and `delete_checkpoint` run on the publisher's background thread (or inline
    with `upload="sync"`, or in `tracked-ckpt sync`, another process) and must not
    depend on thread-local state: everything they need is in `destination`, the
    JSON-serialisable dict `start` returned, which is also written to the
    durable spool.

    Example:
        A tracker that copies each checkpoint into a folder (register it under
        the `tracked_ckpt.trackers` entry point group to use it by name):

        ```python
        import os, shutil
        from tracked_ckpt.tracker import Tracker

        class FolderTracker(Tracker):
            name, display_name = "folder", "a folder"

            def start(self, resume=None):
                return dict(resume or {"root": os.path.abspath("logged")})

            def log_checkpoint(self, record, path, destination, first_attempt=False):
                target = os.path.join(destination["root"], f"{record.name}-{record.sha256[:12]}")
                os.makedirs(destination["root"], exist_ok=True)
                shutil.copyfile(path, target)  # same record, same target: idempotent
                return target

        TrackedModelCheckpoint("ckpt/{epoch}.keras", tracker=FolderTracker())
        ```
    """

    #: Key in the spool and in the `tracker=` list; the entry point name for built-in trackers.
    name: str = ""
    #: Human-readable name used in messages, e.g. "MLflow".
    display_name: str = "tracker"
    #: Whether `log_checkpoint` keeps a record whose `storage` is "incremental" as a manifest of
    #: chunks (`tracked_ckpt.packs`); a tracker without it is handed the record as "full".
    stores_incremental: bool = False

    # -- required -----------------------------------------------------------------------

    @abc.abstractmethod
    def start(self, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach to (or start) a run and return a JSON-serialisable destination.

        With `resume`, a destination an earlier `start` returned, attach to that
        run again so a restarted job keeps logging where it left off.
        """

    @abc.abstractmethod
    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any], *, first_attempt: bool = False
    ) -> str:
        """Log the file at `path` described by `record`; return the tracker's id for it.

        Must be idempotent: logging a record whose (run, epoch, step, sha256) is
        already logged returns the existing id and creates nothing. The publisher
        sets `first_attempt` when no call for this checkpoint ever started, in any
        process: nothing of it can exist yet, so the idempotency look-up may be
        skipped.
        """

    # -- optional, with defaults --------------------------------------------------------

    def finish(self, success: bool = True) -> None:  # noqa: B027  optional: a tracker may have no run to end
        """End the run if `start` started it. Default: nothing to end."""

    def finish_preempted(self, exit_code: int) -> None:
        """End the run as preempted: the job was told to stop and will be resumed (`preempt_on`).

        Called instead of `finish` once a preempted fit's uploads are drained, just
        before the process ends as the signal would have made it; `exit_code` is what
        the process will report (143 for SIGTERM). Unlike `finish`, it also marks a
        run the user started, since nothing else will end it. Default:
        `finish(success=False)`.
        """
        self.finish(success=False)

    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """A link to the run in the tracker's UI, if one can be formed. Default: None."""
        return None

    @property
    def destination(self) -> dict[str, Any] | None:
        """Where the tracker logs now, if that changed since `start` (e.g. a run created late).

        Default: None, meaning "what `start` returned".
        """
        return None

    def is_reachable(self, destination: Mapping[str, Any]) -> bool:
        """Whether the tracker answers now (a quick probe, no retries).

        Asked while a call seems stuck at the end of `fit`, and before ending the
        run of a tracker the wait gave up on. Default: True (a call in flight
        counts as progress).
        """
        return True

    def is_permanent(self, exc: Exception) -> bool:
        """True for a `log_checkpoint` error no retry can fix; the entry is then set aside.

        Default: False (every error is retried with backoff).
        """
        return False

    def delete_checkpoint(self, ref: str, destination: Mapping[str, Any]) -> bool:
        """Delete a logged checkpoint (for `keep_top_k`); False to keep it (e.g. it is registered).

        Default: False, a tracker that cannot delete keeps everything.
        """
        return False


class TrackerRegistry(abc.ABC):
    """The registry side of a tracker, for the registry helper and the CLI (optional).

    A tracker that also subclasses this can be listed, promoted, pulled and loaded
    from; each method answers with a constant number of tracker calls. A tracker
    without it still logs every checkpoint; the registry helper then says it
    cannot, in one line.
    """

    @abc.abstractmethod
    def scope(
        self, run_id: str | None, experiment: str | None, *, last: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Resolve a run or an experiment to a scope; with neither, default to `last`, the destination
        the last `fit` in this process logged to (None: there was none)."""

    @abc.abstractmethod
    def search_checkpoints(
        self,
        scope: Mapping[str, Any],
        *,
        where: Mapping[str, Any] | None = None,
        order_by: tuple[str, str] | None = None,
        max_results: int | None = None,
    ) -> list[LoggedCheckpoint]:
        """Finished checkpoints of a scope matching `where` (schema keys -> values), oldest
        first, or best first by `order_by` = (metric, "min"|"max") on the tracker's side."""

    def check_registrable(self, checkpoint: LoggedCheckpoint) -> None:  # noqa: B027  optional: by default all can be
        """Raise `TrackerError` (one line, saying what to do) if `checkpoint`, about to be promoted, cannot be
        registered: e.g. a W&B offline run's, which is only on local disk. Default: every listed one can."""

    @abc.abstractmethod
    def alias_holder(self, registered_name: str, alias: str) -> LoggedCheckpoint | None:
        """The checkpoint an alias of a registered model points at, or None."""

    @abc.abstractmethod
    def register(self, registered_name: str, checkpoint: LoggedCheckpoint, alias: str) -> str:
        """Register `checkpoint` (reusing its existing version) and move `alias` onto it; return the version."""

    @abc.abstractmethod
    def resolve(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """The checkpoint behind an alias or a version of a registered model."""

    def resolve_for_load(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """`resolve` for a download: may answer with fewer calls (e.g. from the registered version's
        tags), since the bytes are verified against the recorded sha256 anyway. Default: `resolve`."""
        return self.resolve(registered_name, alias=alias, version=version)

    @abc.abstractmethod
    def fetch(self, checkpoint: LoggedCheckpoint, directory: str) -> str:
        """Download the checkpoint file into `directory`; return its path (the caller verifies it)."""

    def fetch_code(self, checkpoint: LoggedCheckpoint, directory: str) -> str | None:
        """Download the code logged with the checkpoint (`code_paths`) into `directory`, or None if none was.

        Returns the folder to make importable: the logged module files and package
        folders at its top, nothing else. Asked only when Keras cannot find a class
        the checkpoint's config names (`tracked_ckpt.logged_code`). Default: None, a
        tracker that logs no code with its checkpoints (W&B versions carry the file alone).
        """
        return None

    # -- optional: finding by id, registered versions, deleting (`tracked_ckpt.verbs`) ------------

    def checkpoint_by_id(self, checkpoint_id: str) -> LoggedCheckpoint | None:
        """The finished checkpoint with this id (as `search_checkpoints` gives it), or None.

        Default: looked for nowhere (None), so a checkpoint is named by run and epoch or by name.
        """
        return None

    def registered_versions(self, registered_name: str) -> list[LoggedCheckpoint]:
        """The checkpoints a registered model's versions point at, oldest version first, each with
        `extra["version"]` and its `aliases`; versions tracked-ckpt did not register are left out.

        Raises:
            LookupError: there is no such registered model.
        """
        raise TrackerError(f"{type(self).__name__} cannot list the versions of a registered model.")

    def registrations(self, checkpoint: LoggedCheckpoint) -> list[Registration]:
        """The registered versions and aliases pointing at a checkpoint: what makes
        `Tracker.delete_checkpoint` keep it. Default: none known."""
        return []

    def unregister(self, checkpoint: LoggedCheckpoint) -> list[Registration]:
        """Remove every registered version and alias pointing at a checkpoint (the versions, not the
        registered models); return what was removed. Default: the tracker cannot."""
        raise TrackerError(f"{type(self).__name__} cannot remove registered versions of a checkpoint.")

    def run_config(self, checkpoint: LoggedCheckpoint) -> dict[str, Any]:
        """The configuration of the run that logged a checkpoint (MLflow: its params; W&B: its config),
        for comparing checkpoints. Default: none known ({})."""
        return {}

    def destination_of(self, checkpoint: LoggedCheckpoint) -> dict[str, Any]:
        """The destination (as `start` returns it) of the run that logged a checkpoint, for
        `Tracker.delete_checkpoint`. Default: the tracker cannot say, so it cannot delete one by itself."""
        raise TrackerError(
            f"{type(self).__name__} cannot delete a checkpoint by itself: it does not say which run logged it."
        )


class TrackerJobKeys(abc.ABC):
    """Resume by job key (`resume="<job key>"`), optional.

    Without it a tracker still logs checkpoints and `resume=True` (local state)
    works. The methods run on the training thread, except `set_job_info`, which
    the lease heartbeat also calls from its own thread.
    """

    @abc.abstractmethod
    def find_job(self, job_key: str) -> dict[str, Any] | None:
        """The destination (as `start` returns it) of the run holding `job_key`, or None.

        When several runs hold it (two first starts at once), the earliest one. A
        tracker whose run ids derive from the key returns that run's destination
        even before it exists (`start(resume=...)` then creates it).
        """

    @abc.abstractmethod
    def job_info(self, destination: Mapping[str, Any]) -> dict[str, str]:
        """The job values stored on the run (`key`, `lease`), as strings."""

    @abc.abstractmethod
    def set_job_info(self, destination: Mapping[str, Any], values: Mapping[str, str]) -> None:
        """Store job values (`key`, `lease`) on the run, replacing earlier ones."""

    @abc.abstractmethod
    def job_checkpoints(self, destination: Mapping[str, Any], name: str | None) -> list[LoggedCheckpoint]:
        """The run's completely logged checkpoints (base `name` only, if given), each downloadable
        with `fetch`, so it comes back through the verified download cache."""


class TrackerChunkStores(abc.ABC):
    """Garbage collection of the chunk stores incremental checkpoints keep their bytes in (optional).

    A tracker whose checkpoints may be stored incrementally (`storage="incremental"`, see
    `tracked_ckpt.packs`) gives back the space of deleted ones through it; `tracked_ckpt.garbage`
    and `tracked-ckpt gc` call it.
    """

    @abc.abstractmethod
    def collect_chunk_garbage(self, scope: Mapping[str, Any], *, grace_seconds: float) -> list[StoreCollected]:
        """Run `tracked_ckpt.packgc.collect_garbage` once over the chunk store of each destination of
        `scope` (MLflow: each experiment), with every checkpoint that is not deleted as live (one
        whose upload is still in progress too); return what each run did."""


def registry_of(tracker: Tracker, what: str = "list or promote checkpoints") -> TrackerRegistry:
    """`tracker` as a registry, or a one-line `TrackerError` saying it has none."""
    if isinstance(tracker, TrackerRegistry):
        return tracker
    raise TrackerError(
        f"The {tracker.display_name} tracker ({type(tracker).__name__}) cannot {what}: "
        "use a tracker with a registry, such as 'mlflow' or 'wandb'."
    )


def job_keys_of(tracker: Tracker) -> TrackerJobKeys:
    """`tracker` as a job-key store, or a one-line `TypeError` naming the alternatives.

    A restarted job downloads its checkpoint through the registry side (`fetch`), so
    resume by job key needs both optional parts.
    """
    if isinstance(tracker, TrackerJobKeys) and isinstance(tracker, TrackerRegistry):
        return tracker
    raise TypeError(
        f"Tracker {tracker.display_name} cannot find a run by job key: use resume=True "
        "(state on local disk), or a tracker that supports job keys (mlflow, wandb)."
    )


def tracker_names() -> list[str]:
    """Names that `resolve_tracker` accepts."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def tracker_class(name: str) -> type:
    """Import and return the tracker class registered under `name`.

    Raises:
        ValueError: no tracker has that name.
        ImportError: the tracker's SDK is not installed (the message names the extra).
    """
    eps = {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    target = eps[name].value if name in eps else _BUILTIN.get(name, (None,))[0]
    if target is None:
        raise ValueError(f"Unknown tracker {name!r}: choose one of {tracker_names()}, or pass a Tracker object.")
    module_name, _, attr = target.partition(":")
    cls = _import_tracker(name, module_name, attr)
    if not (isinstance(cls, type) and issubclass(cls, Tracker)):
        raise TypeError(
            f"Tracker {name!r} ({target}) is not a subclass of tracked_ckpt.tracker.Tracker: "
            "subclass it to declare the whole contract (see its docstring)."
        )
    return cls


def _import_tracker(name: str, module_name: str, attr: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sdk = _BUILTIN.get(name, (None, exc.name))[1]
        raise ImportError(
            f"Tracker {name!r} needs the {sdk!r} package, which is not installed: pip install 'tracked-ckpt[{name}]'."
        ) from exc
    return getattr(module, attr)


def resolve_tracker(spec: str | Tracker) -> Tracker:
    """Turn a tracker name or object into a `Tracker` object."""
    if isinstance(spec, str):
        tracker: Tracker = tracker_class(spec.strip().lower())()
        return tracker
    if isinstance(spec, Tracker):
        return spec
    raise TypeError(
        f"tracker must be a name such as 'mlflow' or 'wandb', a Tracker object (a subclass of "
        f"tracked_ckpt.tracker.Tracker), or a list of them; got {type(spec).__name__}."
    )


def resolve_trackers(spec: str | Tracker | Sequence[str | Tracker]) -> list[Tracker]:
    """Resolve `tracker=` (one spec or a list) to distinct trackers, in order."""
    specs = [spec] if isinstance(spec, (str, Tracker)) else list(spec)
    if not specs:
        raise ValueError("tracker=[] logs nowhere: name at least one tracker, e.g. tracker='mlflow'.")
    trackers = [resolve_tracker(s) for s in specs]
    names = [tracker_key(t) for t in trackers]
    if len(set(names)) != len(names):
        raise ValueError(f"tracker={list(names)} names the same tracker twice; each is logged once.")
    return trackers


def tracker_key(tracker: Tracker) -> str:
    """A stable name for a tracker object, used as its key in the spool."""
    return tracker.name or type(tracker).__name__.lower()


def answers_after_wait(tracker: Tracker, destination: Mapping[str, Any], stalled: bool) -> bool:
    """Whether to talk to a tracker after an upload wait: yes, unless the wait stalled and it does not answer now.

    Asking an unreachable tracker anything (end the run, release a lease) would hang
    in its own retries (minutes, for MLflow) after the wait has just given up on it.
    One probe, asked once per tracker by the caller.
    """
    return not stalled or not destination or tracker.is_reachable(destination)


def finish_run(tracker: Tracker, success: bool, answering: bool, preempted_exit: int | None = None) -> None:
    """End the tracker's run (as preempted when `preempted_exit` is set), unless it does not answer."""
    if not answering:
        logger.warning("The %s run was not ended: the tracker does not answer.", tracker.display_name)
        return
    try:
        if preempted_exit is not None:
            tracker.finish_preempted(preempted_exit)
        else:
            tracker.finish(success=success)
    except Exception as exc:
        logger.warning("Could not finish the %s run: %s", tracker.display_name, exc)
