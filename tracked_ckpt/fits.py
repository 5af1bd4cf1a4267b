"""This process's fits: which are live, the names they claimed in their runs, and how they end.

A fit's runtime is its session (`tracked_ckpt.session`); what no one session can
own lives here, once per process: the live sessions (so callbacks of one `fit`
share a run, a new fit finds leftovers its predecessors still upload, and
`wait()` finds the fits ending in the background), the checkpoint names claimed
in each run (two fits logging into one run never take the same name), where the
last fit logged (`last_destination`, the registry helper's default), and the
hooks that end fits Keras never ended.

Keras calls no hook when `fit` raises (an HPO pruner, Ctrl-C in a notebook, an
error in another callback). Such a fit's session stays open, its uploads going on
in the background, until the first of:

- the next fit that starts on the same thread (a retry loop, the next trial of a
  study, the next notebook cell that trains), which winds it down before it
  starts its own runs, so it never logs into the interrupted run by accident
  (`wind_down_stale`);
- the end of its training thread, when that is not the main thread (a Ray Tune
  trial stopped by its scheduler; `_watch`);
- interpreter exit (`_end_at_exit`).

A session wound down that way ends the run it started as FAILED (W&B: exit code
1), like MLflow's autolog and Lightning do; a run the user started is left open.
A fit stopped by its thread ending (Ray Tune's scheduler) ends FINISHED, as Tune
reports such a trial. The checkpoints are logged either way.

This module sees a session only through `LiveFit`, what it needs of one, and never
imports `tracked_ckpt.session`: the session registers itself here, not the reverse.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from tracked_ckpt.record import split_checkpoint_name
from tracked_ckpt.spool import Spool, SpoolEntry
from tracked_ckpt.tracker import Tracker

logger = logging.getLogger("tracked_ckpt")


class LiveFit(Protocol):
    """What this module needs of a fit's session (`tracked_ckpt.session.FitSession`)."""

    @property
    def id(self) -> int:
        """This process's number for the session (`new_id`)."""

    @property
    def fit(self) -> object | None:
        """The object shared by every callback of one `fit` (None: not shared)."""

    @property
    def thread(self) -> threading.Thread:
        """The thread the fit trains on."""

    @property
    def spool(self) -> Spool: ...

    @property
    def trackers(self) -> Mapping[str, Tracker]: ...

    @property
    def destinations(self) -> Mapping[str, Mapping[str, Any]]:
        """Where each tracker logs (`owned`: the session started that run)."""

    @property
    def joined(self) -> LiveFit | None:
        """The session of the same fit whose runs this one logs to."""

    @property
    def open(self) -> bool:
        """Whether the session still accepts checkpoints."""

    @property
    def ending(self) -> bool:
        """Whether its fit is over and its end runs in the background."""

    def queued(self) -> Sequence[SpoolEntry]: ...

    def end(
        self,
        completed: bool,
        *,
        cut_off: bool = False,
        deadline: float | None = None,
        preempted_exit: int | None = None,
    ) -> object:
        """End the session (idempotent, from any thread)."""

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the session has ended; False if `timeout` passed first."""


_lock = threading.RLock()
_live: list[LiveFit] = []
# Checkpoint names claimed per run in this process: (tracker, run) -> name -> the id of the session
# that logged it (ids, not sessions, so that a finished fit's callback and model are not kept alive).
_names: dict[tuple[str, str], dict[str, int]] = {}
_ids = itertools.count(1)
_LAST_DESTINATIONS: dict[str, dict[str, Any]] = {}
_watched_threads: set[int] = set()


def new_id() -> int:
    """A number no other session of this process has."""
    with _lock:
        return next(_ids)


# -- the registry helper's defaults -----------------------------------------------------------


def last_destination(name: str) -> dict[str, Any] | None:
    """Where the last `fit` in this process logged for tracker `name`, if any (the registry's default)."""
    with _lock:
        found = _LAST_DESTINATIONS.get(name)
    return dict(found) if found else None


def remember(destinations: Mapping[str, Mapping[str, Any]]) -> None:
    """Record where a fit logs, for `last_destination` (empty destinations are not remembered)."""
    with _lock:
        for key, destination in destinations.items():
            if destination:
                _LAST_DESTINATIONS[key] = dict(destination)


def wait(timeout: float | None = None) -> bool:
    """Wait for the uploads of fits that returned without waiting (`blocking=False`) to finish.

    Fits still training are not waited for. Returns False if `timeout` seconds
    passed first (the uploads go on; the spool keeps what is not logged).

    Example:
        >>> import tracked_ckpt
        >>> tracked_ckpt.wait()
        True
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    for session in live_sessions():
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if session.ending and not session.wait(remaining):
            return False
    return True


# -- live sessions ----------------------------------------------------------------------------


def live_sessions() -> list[LiveFit]:
    """The sessions of this process that have not ended yet."""
    with _lock:
        return list(_live)


def register(session: LiveFit) -> None:
    """Count `session` as live until `unregister`; end it at exit, or when its worker thread ends."""
    with _lock:
        _live.append(session)
    # Registered again after every tracker start: exit hooks run last-registered first, and the SDKs
    # (wandb's service teardown) register theirs when a run starts; ours must run before them.
    atexit.unregister(_end_at_exit)
    atexit.register(_end_at_exit)
    _watch(session.thread)


def unregister(session: LiveFit) -> None:
    """`session` has ended: drop it, and the names claimed in runs it started that no live session logs to."""
    with _lock:
        others = {_run_key(k, d) for s in _live if s is not session for k, d in s.destinations.items()}
        for key, destination in session.destinations.items():
            run = _run_key(key, destination)
            if destination.get("owned") and run not in others:
                _names.pop(run, None)
        if session in _live:
            _live.remove(session)


def same_fit(session: LiveFit) -> LiveFit | None:
    """The live session of another callback in the same `fit`, if one began already."""
    if not session.fit:
        return None
    with _lock:
        return next(
            (s for s in _live if s.fit is session.fit and s.joined is None and s.open and _same_trackers(s, session)),
            None,
        )


def _same_trackers(a: LiveFit, b: LiveFit) -> bool:
    """Whether two sessions' trackers are configured alike (callbacks logging elsewhere never share a run)."""
    if a.trackers.keys() != b.trackers.keys():
        return False
    try:
        return all(
            type(t) is type(b.trackers[k])
            # object.__getstate__ is Python 3.11+ (typeshed for 3.10 lacks it); a 3.10 tracker without one is not shared
            and t.__getstate__() == b.trackers[k].__getstate__()  # type: ignore[attr-defined]
            for k, t in a.trackers.items()
        )
    except Exception:  # a state that cannot be compared: do not share
        return False


def sessions_joined_to(session: LiveFit) -> list[LiveFit]:
    """The live sessions that log into `session`'s runs (other callbacks of its fit)."""
    with _lock:
        return [s for s in _live if s.joined is session]


def sessions_of_spool(spool: Spool) -> list[LiveFit]:
    """The live sessions whose checkpoints wait in `spool`."""
    with _lock:
        return [s for s in _live if s.spool.directory == spool.directory]


# -- checkpoint names in a run ----------------------------------------------------------------


def claim_name(session: LiveFit, name: str, rename: Callable[[set[str]], str]) -> str:
    """Claim the checkpoint name `name` in every run `session` logs to, and return the name claimed.

    When another session of this process already claimed `name` in one of those runs,
    `rename` is called with the base names the others use there, and its answer is
    claimed instead.
    """
    with _lock:
        runs = [_run_key(k, d) for k, d in session.destinations.items()]
        owners = [_names.setdefault(run, {}) for run in runs]
        if any(owner.get(name, session.id) != session.id for owner in owners):
            others = {split_checkpoint_name(n)[0] for owner in owners for n, s in owner.items() if s != session.id}
            name = rename(others)
        for owner in owners:
            owner[name] = session.id
    return name


def _run_key(tracker: str, destination: Mapping[str, Any]) -> tuple[str, str]:
    run = destination.get("run_id") or destination.get("deferred") or repr(sorted(destination.items()))
    return tracker, str(run)


# -- fits Keras never ended -------------------------------------------------------------------


def wind_down_stale(starting: LiveFit, *, resuming: bool) -> None:
    """End the sessions of fits that are over but were never ended (they raised), before a new fit starts.

    A session is over when its thread starts another fit (one thread runs one fit
    at a time) or its thread is gone. Sessions of the same fit (another callback's)
    and of fits running on other live threads are left alone. `resuming`: the
    starting fit may continue a run, so a fit still ending in the background is
    waited for too.
    """
    with _lock:
        stale = [
            s
            for s in _live
            if s.fit is not starting.fit or not starting.fit
            if s.thread is starting.thread or not s.thread.is_alive()
            # A fit ending in the background (blocking=False) is not waited for, unless this
            # one may continue its run (resume).
            if not s.ending or resuming
        ]
    for session in stale:
        if not session.thread.is_alive():
            session.end(completed=True, cut_off=True)  # as the thread watcher would (see `_watch`)
            continue
        if not session.ending:
            logger.info(
                "The previous fit on this thread ended without on_train_end (an exception or an "
                "interrupt): finishing its uploads and ending its run as failed."
            )
        session.end(completed=False)  # an end already under way is waited for, not repeated


def _watch(thread: threading.Thread) -> None:
    """Finish fits cut off in a worker thread as soon as that thread ends (one watcher per thread).

    Ray Tune stops a trial (a losing one, or one at `max_t`) by raising
    `SystemExit` from `tune.report` inside `on_epoch_end`: Keras skips
    `on_train_end` and the trial's thread ends. Its process may live on (reused
    for the next trial) or end soon after, so the uploads are finished and the
    run ended now, not at interpreter exit; anything a killed process still had
    pending stays in the spool for `tracked_ckpt.sync_spool(root)`. The run ends
    as FINISHED, as Tune reports such a trial (terminated, not errored). A fit on
    the main thread is left to the next fit or the exit hook.
    """
    if thread is threading.main_thread():
        return
    ident = id(thread)
    with _lock:
        if ident in _watched_threads:
            return
        _watched_threads.add(ident)
    watched = weakref.ref(thread)

    def watch() -> None:
        target = watched()
        if target is not None:
            threading.Thread.join(target)  # not a subclass's join, which may re-raise its error
        del target
        with _lock:
            _watched_threads.discard(ident)
            orphans = [s for s in _live if s.thread is not None and not s.thread.is_alive()]
        for session in orphans:
            logger.info(
                "fit ended without on_train_end (e.g. a sweep scheduler stopped the trial): finishing its uploads."
            )
            session.end(completed=True, cut_off=True)

    threading.Thread(target=watch, name="tracked-ckpt-watch", daemon=True).start()


@atexit.register
def _end_at_exit() -> None:
    """Flush every fit still open at interpreter exit (it was interrupted before on_train_end)."""
    for session in live_sessions():
        session.end(completed=False)
