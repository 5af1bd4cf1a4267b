"""The one narrow interface every tracker implements, and how names resolve to trackers.

The callback and the publisher only ever talk to a `Tracker`; they never know
which one. A tracker is found by name through the `tracked_ckpt.trackers` entry
point group, so a third-party package can add one with a single line in its
`pyproject.toml`:

    [project.entry-points."tracked_ckpt.trackers"]
    mytracker = "my_package.tracking:MyTracker"
"""

from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

from tracked_ckpt.record import CheckpointRecord

ENTRY_POINT_GROUP = "tracked_ckpt.trackers"

# Used when the distribution's entry points are not visible (e.g. running from a
# source tree that was never installed). Entry points win when both exist.
_BUILTIN = {
    "mlflow": ("tracked_ckpt.integrations.mlflow:MlflowTracker", "mlflow"),
    "wandb": ("tracked_ckpt.integrations.wandb:WandbTracker", "wandb"),
}


class TrackerError(RuntimeError):
    """A tracker could not do what was asked; the message says why and what to do."""


@runtime_checkable
class Tracker(Protocol):
    """What a tracker does for the callback.

    `start` and `finish` run on the training thread; `log_checkpoint` runs on the
    publisher's background thread (or inline with `upload="sync"`) and must not
    depend on thread-local state: everything it needs is in `destination`, the
    plain dict `start` returned, which is also written to the durable spool so
    `tracked-ckpt sync` can finish the job in another process.
    """

    #: Human-readable name used in messages, e.g. "MLflow".
    display_name: str

    def start(self, run_name: str | None = None, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach to (or start) a run and return a JSON-serialisable destination.

        With `resume`, a destination an earlier `start` returned, attach to that
        run again so a restarted job keeps logging where it left off.
        """
        ...

    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any]
    ) -> str:
        """Log the file at `path` described by `record`; return the tracker's id for it.

        Must be idempotent: logging a record whose (run, epoch, step, sha256) is
        already logged returns the existing id and creates nothing.
        """
        ...

    def finish(self, success: bool = True) -> None:
        """End the run if `start` started it."""
        ...

    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """A link to the run in the tracker's UI, if one can be formed."""
        ...


# Where the last `fit` in this process logged, per tracker name: the registry's default scope.
_LAST_DESTINATIONS: dict[str, dict[str, Any]] = {}


def remember_destination(name: str, destination: Mapping[str, Any]) -> None:
    """Record where a `fit` logged, so the registry helper can default to that run."""
    _LAST_DESTINATIONS[name] = dict(destination)


def last_destination(name: str) -> dict[str, Any] | None:
    """Where the last `fit` in this process logged for tracker `name`, if any."""
    found = _LAST_DESTINATIONS.get(name)
    return dict(found) if found else None


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
        raise ValueError(
            f"Unknown tracker {name!r}: choose one of {tracker_names()}, or pass a Tracker object."
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        sdk = _BUILTIN.get(name, (None, exc.name))[1]
        raise ImportError(
            f"Tracker {name!r} needs the {sdk!r} package, which is not installed: "
            f"pip install 'tracked-ckpt[{name}]'."
        ) from exc
    return getattr(module, attr)


def resolve_tracker(spec: "str | Tracker") -> Tracker:
    """Turn a tracker name or object into a `Tracker` object."""
    if isinstance(spec, str):
        return tracker_class(spec.strip().lower())()
    if isinstance(spec, Tracker):
        return spec
    raise TypeError(
        f"tracker must be a name such as 'mlflow' or 'wandb', a Tracker object, or a list of "
        f"them; got {type(spec).__name__}."
    )


def resolve_trackers(spec: "str | Tracker | Sequence[str | Tracker]") -> list[Tracker]:
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
    return getattr(tracker, "name", None) or type(tracker).__name__.lower()


@runtime_checkable
class JobTracker(Protocol):
    """Optional: what a tracker adds so `resume="<job key>"` can find a job's run again.

    A tracker without these methods still logs checkpoints (and `resume=True`,
    which keeps its state on local disk, works with it); only resuming by job
    key needs them. They run on the training thread, except `set_job_info`,
    which the lease heartbeat also calls from its own thread.
    """

    display_name: str

    def find_job(self, job_key: str) -> dict[str, Any] | None:
        """The destination (as `start` returns it) of the run holding `job_key`, or None.

        When several runs hold it (two first starts at once), the earliest one. A
        tracker whose run ids derive from the key returns that run's destination
        even before it exists (`start(resume=...)` then creates it).
        """
        ...

    def job_info(self, destination: Mapping[str, Any]) -> dict[str, str]:
        """The job values stored on the run (`key`, `lease`), as strings."""
        ...

    def set_job_info(self, destination: Mapping[str, Any], values: Mapping[str, str]) -> None:
        """Store job values (`key`, `lease`) on the run, replacing earlier ones."""
        ...

    def job_checkpoints(self, destination: Mapping[str, Any], name: str | None) -> list[Any]:
        """The run's completely logged checkpoints (`LoggedCheckpoint`s; base `name` only, if given).

        Each must be downloadable with `fetch` (the registry backend's), so it
        comes back through the verified download cache.
        """
        ...

    def finish(self, success: bool = True) -> None: ...

    def run_url(self, destination: Mapping[str, Any]) -> str | None: ...
