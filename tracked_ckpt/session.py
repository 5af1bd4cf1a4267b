"""A fit's runtime and its end: the runs, the publisher and its thread, the lease, the retention.

A `TrackedModelCheckpoint` is configuration: KerasTuner deep-copies it for every
trial, Ray pickles it, one callback may serve several fits. Everything one `fit`
needs while it runs belongs to a `FitSession`, made when the fit begins: its
trackers (fresh copies of the configured ones, so copies never share a run), the
destinations they log to, the publisher and its worker thread, the job lease, the
retention bookkeeping, the names claimed in the run. `FitSession.end` is the one
end-of-run sequence: wait for the uploads, release the lease, end the runs this
session started, used by `on_train_end`, by whatever winds down a fit that ended
by an exception, and by `sync_spool`.

Keras calls no hook when `fit` raises (an HPO pruner, Ctrl-C in a notebook, an
error in another callback). Such a fit's session stays open, its uploads going on
in the background, until the first of:

- the next fit that starts on the same thread (a retry loop, the next trial of a
  study, the next notebook cell that trains), which winds it down before it
  starts its own runs, so it never logs into the interrupted run by accident;
- the end of its training thread, when that is not the main thread (a Ray Tune
  trial stopped by its scheduler);
- interpreter exit.

A session wound down that way ends the run it started as FAILED (W&B: exit code
1), like MLflow's autolog and Lightning do; a run the user started is left open.
A fit stopped by its thread ending (Ray Tune's scheduler) ends FINISHED, as Tune
reports such a trial. The checkpoints are logged either way.

This module also keeps what the registry helper defaults to: where the last fit
in this process logged (`last_destination`).
"""

from __future__ import annotations

import atexit
import copy
import dataclasses
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tracked_ckpt.publisher import Publisher, PublishReport, stall_timeout_from
from tracked_ckpt.record import CheckpointRecord, checkpoint_name, split_checkpoint_name
from tracked_ckpt.resume import JobResume, LastCheckpoint, LocalState, ResumeState
from tracked_ckpt.retention import Retention
from tracked_ckpt.spool import Spool, SpoolEntry, SpoolHold, find_spools
from tracked_ckpt.tracker import Tracker, answers_after_wait, finish_run, tracker_class, tracker_key

logger = logging.getLogger("tracked_ckpt")

#: Seconds `sync_spool` without a timeout waits for a live fit using a spool before reporting it.
HOLD_WAIT = 600.0

#: Called on the logging thread when a tracker confirmed an entry: (entry, tracker name, id).
LoggedHook = Callable[[SpoolEntry, str, str], None]
#: Called once a session has ended, on whichever thread ended it: (session, report).
EndHook = Callable[["FitSession", PublishReport], None]


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """What a fit's session needs from the callback's configuration."""

    asynchronous: bool = True
    blocking: bool = True
    wait_timeout: float | None = 600.0
    stall_timeout: float | None = None
    keep_top_k: int | None = None
    resume: bool | str = False


class FitSession:
    """One fit's runtime: started runs, the publisher, the lease, retention; and its end.

    Args:
        trackers: the configured trackers; the session works on its own copies of them.
        spool: where this fit's checkpoints wait to be logged.
        options: upload mode, waits, retention and resume settings.
        state: the local resume state file.
        fit: an object shared by every callback of one `fit` (Keras's `Callback.params`
            dict): sessions of the same fit log into the same runs.
        on_logged: called on the logging thread after a tracker confirmed an entry.
        on_end: called once the session has ended (the callback's summary).
    """

    def __init__(
        self,
        trackers: Sequence[Tracker],
        spool: Spool,
        options: FitOptions = FitOptions(),
        *,
        state: LocalState | None = None,
        fit: object | None = None,
        on_logged: LoggedHook | None = None,
        on_end: EndHook | None = None,
    ):
        self.trackers: dict[str, Tracker] = {tracker_key(t): _fork(t) for t in trackers}
        self.spool = spool
        self.options = options
        self.state = state
        self.fit = fit
        self.on_logged = on_logged
        self.on_end = on_end
        self.thread = threading.current_thread()
        self.destinations: dict[str, dict[str, Any]] = {}
        self.report: PublishReport | None = None
        self.job: JobResume | None = None
        self.file_lock = threading.RLock()  # a save and its staging vs. retention's local deletes
        self.retention = (
            Retention(options.keep_top_k, self._delete, self._paths_in_flight, self.file_lock)
            if options.keep_top_k is not None
            else None
        )
        self.joined: FitSession | None = None  # the session of the same fit whose runs this one logs to
        self._publisher: Publisher | None = None
        self._end_lock = threading.Lock()
        self._ended = False
        self._renamed: dict[str, str] = {}  # base name -> the base this fit logs under (a collision)
        self._hold: SpoolHold | None = None
        self._ending = threading.Event()  # the fit is over; its end runs in the background
        self._done = threading.Event()  # the end is complete
        with _lock:
            self.id = next(_ids)

    # -- the start of a fit ---------------------------------------------------------------

    def begin(self, base_name: str) -> ResumeState | None:
        """Wind down stale fits on this thread, start (or join, or resume) the runs, start publishing.

        Returns:
            The resume state to restore into the model, or None to start afresh.
        """
        _wind_down_stale(self)
        resume = self.options.resume
        local = self.state.read() if resume and self.state is not None else None
        state: ResumeState | None
        if isinstance(resume, str):
            self.job = JobResume(resume, self.trackers)
            state, self.destinations = self.job.begin(local, self._start, base_name)
        else:
            state = local
            joined = None if resume else _same_fit(self)
            if joined is not None:
                self.joined = joined
                self.destinations = self._start({k: {**d, "owned": False} for k, d in joined.destinations.items()})
            else:
                self.destinations = self._start(state.destinations if state is not None else {})
        _remember(self.destinations)
        self._hold = self.spool.hold()  # `sync_spool` elsewhere waits for this fit rather than pass it over
        self._publisher = Publisher(
            self.trackers,
            self.spool,
            asynchronous=self.options.asynchronous,
            on_logged=self._logged,
            stall_timeout=stall_timeout_from(self.options.stall_timeout),
        )
        _register(self)
        self._resubmit_leftovers()
        if state is not None and self.job is not None:
            self.job.seed_retention(self.retention)
        return state

    def _start(self, previous: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {key: tracker.start(resume=previous.get(key)) for key, tracker in self.trackers.items()}

    def _resubmit_leftovers(self) -> None:
        """Queue checkpoints an earlier, interrupted fit left in this spool."""
        assert self._publisher is not None
        queued = {entry.id for fit in _sessions_of_spool(self.spool) for entry in fit.queued()}
        for entry in self.spool.entries():
            if entry.id in queued:
                continue  # a live session of this process still has it
            known = {k for k in entry.destinations if k in self.trackers}
            if known and all(k in self.trackers for k in entry.pending_trackers):
                logger.info("Logging %s left in the spool by an earlier run.", entry.record.name)
                self._publisher.submit(entry)

    def end_when_gone(self, fit_object: object) -> None:
        """End this session in the background, as failed, once `fit_object` is garbage and the fit never ended.

        `fit_object` lives exactly as long as the fit's frame (Keras's `CallbackList`): a fit
        that raised is over once the exception has been handled, which is when Python frees
        it. Only for fits on the main thread: a worker thread's fit is ended when its thread
        ends (a Ray Tune trial stopped by its scheduler ends FINISHED, see `_watch`).
        """
        if self.thread is not threading.main_thread():
            return
        ref = weakref.ref(self)

        def gone() -> None:
            session = ref()
            if session is not None and session.open:
                session.end_in_background(completed=False)

        try:
            weakref.finalize(fit_object, gone)
        except TypeError:  # not weak-referenceable: the next fit or the exit hook ends it
            pass

    # -- while training -------------------------------------------------------------------

    @property
    def open(self) -> bool:
        """Whether the session still accepts checkpoints (its fit has not been ended)."""
        return self._publisher is not None and not self._ended and not self._ending.is_set()

    @property
    def asynchronous(self) -> bool:
        return self.options.asynchronous

    def name_for(self, base_name: str, epoch: int, batch: int | None) -> str:
        """The checkpoint's name in its run: `{base}-e0003`, or `{base}-2-e0003` when another fit or
        callback of this process already logged a different checkpoint under that name in the run."""
        base = self._renamed.get(base_name, base_name)
        name = checkpoint_name(base, epoch, batch)
        if isinstance(self.options.resume, str) or self.options.resume:
            return name  # a resumed job continues its own names (a re-run epoch is the same slot)
        with _lock:
            runs = [_run_key(k, d) for k, d in self.destinations.items()]
            owners = [_names.setdefault(run, {}) for run in runs]
            if any(owner.get(name, self.id) != self.id for owner in owners):
                others = {split_checkpoint_name(n)[0] for owner in owners for n, s in owner.items() if s != self.id}
                base = next(f"{base_name}-{n}" for n in itertools.count(2) if f"{base_name}-{n}" not in others)
                self._renamed[base_name] = base
                name = checkpoint_name(base, epoch, batch)
                logger.info(
                    "Checkpoints of this fit are named %s-e…: %s-e… is taken in the run by another fit or callback.",
                    base,
                    base_name,
                )
            for owner in owners:
                owner[name] = self.id
        return name

    def _release_hold(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()

    def submit(self, entry: SpoolEntry) -> None:
        """Queue a spooled checkpoint (with `upload="sync"`, log it now)."""
        if self._publisher is None or self._ended:
            raise RuntimeError("This fit's session has ended: nothing more can be logged through it.")
        self._publisher.submit(entry)

    def queued(self) -> list[SpoolEntry]:
        """Checkpoints submitted and not yet done with."""
        publisher = self._publisher
        return publisher.queued() if publisher is not None else []

    def current_destinations(self) -> dict[str, dict[str, Any]]:
        """Where each tracker logs now (a deferred start may have become a real run meanwhile)."""
        return {key: tracker.destination or self.destinations.get(key, {}) for key, tracker in self.trackers.items()}

    def write_state(
        self, record: CheckpointRecord, best_value: float | None, best_name: str | None, keras_best: float | None
    ) -> None:
        """Record `record` as the job's latest checkpoint in the local resume state."""
        if self.state is not None:
            resume = self.options.resume
            self.state.write(
                ResumeState(
                    last=LastCheckpoint(record.filepath, record.epoch, record.step, record.batch),
                    destinations=self.current_destinations(),
                    best_value=best_value,
                    best_name=best_name,
                    keras_best=keras_best,
                    job_key=resume if isinstance(resume, str) else None,
                )
            )

    def _logged(self, entry: SpoolEntry, tracker: str, ref: str) -> None:
        # Leftovers of an earlier job belong to another run's ranking: not this one's retention.
        if self.retention is not None and not entry.pending_trackers and entry.destinations == self.destinations:
            self.retention.add(entry.record, entry.done, entry.destinations)
        if self.job is not None and not entry.pending_trackers:
            self.job.note_logged(entry.record)
        if self.on_logged is not None:
            self.on_logged(entry, tracker, ref)

    def _delete(self, tracker: str, ref: str, destination: Mapping[str, Any]) -> bool:
        return self.trackers[tracker].delete_checkpoint(ref, destination)

    def _paths_in_flight(self) -> set[str]:
        return {entry.record.filepath for entry in self.queued()}

    # -- the end --------------------------------------------------------------------------

    def end_in_background(self, completed: bool) -> None:
        """Return now; finish the uploads and end the runs on a thread (`blocking=False`).

        Every checkpoint is already durable in the spool: a process killed now loses
        nothing (`sync_spool` logs it). `wait()`, the registry helper and interpreter
        exit wait for this end.
        """
        self._ending.set()
        threading.Thread(target=self.end, kwargs={"completed": completed}, name="tracked-ckpt-end", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until this session has ended; False if `timeout` passed first."""
        return self._done.wait(timeout)

    def end(self, completed: bool, *, cut_off: bool = False) -> PublishReport:
        """Finish the uploads (up to `wait_timeout`), release the lease and end the runs this fit started.

        Idempotent and safe from any thread: `on_train_end`, the next fit, the thread
        watcher and interpreter exit may race; the first one ends it.

        Args:
            completed: the fit reached `on_train_end` (or its scheduler stopped it, with
                `cut_off`): runs end FINISHED; otherwise FAILED.
            cut_off: the fit's thread ended without `on_train_end`; the resume state is kept.
        """
        with self._end_lock:
            if self._ended:
                return self.report or PublishReport()
            self._ended = True
            try:
                # Callbacks of the same fit that log into this session's runs finish their uploads first.
                for other in _sessions_joined_to(self):
                    other.end(completed, cut_off=cut_off)
                # The publisher stays reachable while it closes: `queued()` still names what it uploads.
                report = _close(self._publisher, self.trackers, self.destinations, self.options.wait_timeout)
                if self.job is not None:
                    self.job.release(write=report.answering)
                if completed and not cut_off and self.state is not None and self.options.resume:
                    self.state.clear()  # the job completed: the next fit starts afresh
                self._release_hold()
                if report.ok:
                    self.spool.remove_if_empty()
                _remember(self.current_destinations())
                for key, tracker in self.trackers.items():
                    finish_run(tracker, completed, report.answering_by_tracker.get(key, True))
                self.report = report
            finally:
                self._publisher = None
                self._release_hold()
                _forget_names(self)
                _unregister(self)
                self._done.set()
        if self.on_end is not None:
            self.on_end(self, report)
        return report


def _close(
    publisher: Publisher | None,
    trackers: Mapping[str, Tracker],
    destinations: Mapping[str, Mapping[str, Any]],
    timeout: float | None,
) -> _EndReport:
    """Wait for the publisher; then ask each tracker once whether it answers (after a stalled wait)."""
    report = _EndReport()
    if publisher is not None:
        report.merge(publisher.close(timeout))
    report.answering_by_tracker = {
        key: answers_after_wait(tracker, destinations.get(key, {}), report.stalled) for key, tracker in trackers.items()
    }
    return report


@dataclasses.dataclass
class _EndReport(PublishReport):
    """A publisher's report plus which trackers answered after the wait (so runs and leases are ended)."""

    answering_by_tracker: dict[str, bool] = dataclasses.field(default_factory=dict)

    @property
    def answering(self) -> bool:
        return all(self.answering_by_tracker.values())


# -- the sessions of this process ---------------------------------------------------------

_lock = threading.RLock()
_live: list[FitSession] = []
# Checkpoint names claimed per run in this process: (tracker, run) -> name -> the id of the session
# that logged it (ids, not sessions, so that a finished fit's callback and model are not kept alive).
_names: dict[tuple[str, str], dict[str, int]] = {}
_ids = itertools.count(1)
_LAST_DESTINATIONS: dict[str, dict[str, Any]] = {}
_watched_threads: set[int] = set()


def last_destination(name: str) -> dict[str, Any] | None:
    """Where the last `fit` in this process logged for tracker `name`, if any (the registry's default)."""
    with _lock:
        found = _LAST_DESTINATIONS.get(name)
    return dict(found) if found else None


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
        if session._ending.is_set() and not session.wait(_remaining(deadline)):
            return False
    return True


def live_sessions() -> list[FitSession]:
    """The sessions of this process that have not ended yet."""
    with _lock:
        return list(_live)


def _remember(destinations: Mapping[str, Mapping[str, Any]]) -> None:
    with _lock:
        for key, destination in destinations.items():
            if destination:
                _LAST_DESTINATIONS[key] = dict(destination)


def _register(session: FitSession) -> None:
    with _lock:
        _live.append(session)
    # Registered again after every tracker start: exit hooks run last-registered first, and the SDKs
    # (wandb's service teardown) register theirs when a run starts; ours must run before them.
    atexit.unregister(_end_at_exit)
    atexit.register(_end_at_exit)
    _watch(session.thread)


def _forget_names(session: FitSession) -> None:
    """Drop the names claimed in runs this session started and no live session logs to any more."""
    with _lock:
        others = {_run_key(k, d) for s in _live if s is not session for k, d in s.destinations.items()}
        for key, destination in session.destinations.items():
            run = _run_key(key, destination)
            if destination.get("owned") and run not in others:
                _names.pop(run, None)


def _unregister(session: FitSession) -> None:
    with _lock:
        if session in _live:
            _live.remove(session)


def _same_fit(session: FitSession) -> FitSession | None:
    """The live session of another callback in the same `fit`, if one began already."""
    if not session.fit:
        return None
    with _lock:
        return next(
            (s for s in _live if s.fit is session.fit and s.joined is None and s.open and _same_trackers(s, session)),
            None,
        )


def _same_trackers(a: FitSession, b: FitSession) -> bool:
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


def _sessions_joined_to(session: FitSession) -> list[FitSession]:
    with _lock:
        return [s for s in _live if s.joined is session]


def _sessions_of_spool(spool: Spool) -> list[FitSession]:
    with _lock:
        return [s for s in _live if s.spool.directory == spool.directory]


def _wind_down_stale(starting: FitSession) -> None:
    """End the sessions of fits that are over but were never ended (they raised), before a new fit starts.

    A session is over when its thread starts another fit (one thread runs one fit
    at a time) or its thread is gone. Sessions of the same fit (another callback's)
    and of fits running on other live threads are left alone.
    """
    with _lock:
        stale = [
            s
            for s in _live
            if s.fit is not starting.fit or not starting.fit
            if s.thread is starting.thread or not s.thread.is_alive()
            # A fit ending in the background (blocking=False) is not waited for, unless this
            # one may continue its run (resume).
            if not s._ending.is_set() or starting.options.resume
        ]
    for session in stale:
        if not session.thread.is_alive():
            session.end(completed=True, cut_off=True)  # as the thread watcher would (see `_watch`)
            continue
        if not session._ending.is_set():
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


# -- sync ---------------------------------------------------------------------------------


def sync_spool(
    directory: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = None,
    retry_failed: bool = False,
    on_spool: Callable[[str, PublishReport], None] | None = None,
) -> PublishReport:
    """Log every checkpoint waiting in a spool, or in every spool beneath a folder (`tracked-ckpt sync`).

    `directory` is a spool folder, or any folder above spools (or a list of them), such as a sweep's
    checkpoint root: a trial that its scheduler stopped (Ray Tune ends it from
    inside `on_epoch_end`, before `on_train_end`) may leave checkpoints in its
    spool, and one `sync_spool(root)` after `Tuner.fit()` logs them all.
    Each entry goes to the run it was saved for, whatever process saved it;
    already-logged ones are recognised by the tracker and not logged twice, and
    a LoggedModel a killed upload left half-written is completed. An entry that
    another live process is logging right now is waited for (within `timeout`);
    if it is still held then, it is reported pending, naming that process. So
    a report that is `ok` means every checkpoint beneath `directory` is logged.
    `timeout` bounds the whole call; the report covers every spool found.

    Args:
        directory: a spool, or a folder above spools, or several.
        timeout: seconds for the whole call (None: no limit).
        retry_failed: put parked entries (set aside after a permanent error) back in line.
        on_spool: called with each spool's folder and report as it is done (the CLI prints it).

    Example (a folder without spools has nothing to log):
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     report = sync_spool(folder)  # e.g. "sweep-checkpoints": every trial's spool beneath it
        >>> report.ok, report.logged
        (True, [])
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    folders = [directory] if isinstance(directory, (str, os.PathLike)) else list(directory)
    spools = dict.fromkeys(spool for folder in folders for spool in find_spools(folder))  # once each, in order
    report = PublishReport()
    for spool_dir in spools:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        one = _sync_one(Spool(spool_dir), remaining, retry_failed)
        if on_spool is not None:
            on_spool(spool_dir, one)
        report.merge(one)
    return report


def _sync_one(spool: Spool, timeout: float | None, retry_failed: bool) -> PublishReport:
    deadline = None if timeout is None else time.monotonic() + timeout
    # Fits of this process on this spool that are over (their thread is this one, or gone) but were never
    # ended still hold it: end them now, rather than wait for ourselves.
    for session in [
        s
        for s in live_sessions()
        if s.spool.directory == spool.directory
        if s.thread is threading.current_thread() or not s.thread.is_alive()
    ]:
        session.end(completed=False)
    # Another live fit is waited for at most this long, even without a timeout: then it is reported.
    hold_deadline = time.monotonic() + (HOLD_WAIT if timeout is None else timeout)
    if retry_failed:
        spool.unpark_all()
    trackers: dict[str, Tracker] = {}
    destinations: dict[str, Mapping[str, Any]] = {}
    report = _EndReport()
    while True:
        entries = list(spool.entries())
        for entry in entries:
            for name in entry.pending_trackers:
                if name not in trackers:
                    trackers[name] = tracker_class(name)()
                    destinations[name] = entry.destinations[name]
        # A single attempt per pass, then backoff until `timeout` or a stall: the same loop as during fit.
        publisher = Publisher(
            {n: trackers[n] for n in trackers}, spool, asynchronous=False, stall_timeout=stall_timeout_from(None)
        )
        publisher.enqueue(entries)
        one = _close(publisher, trackers, destinations, _remaining(deadline))
        report.merge(one)
        report.pending = one.pending  # what the last pass left, not every pass's
        report.answering_by_tracker = one.answering_by_tracker
        report.held = spool.holders()
        if not report.held or one.stalled or _remaining(hold_deadline) == 0.0:
            break
        # A live fit (in this or another process) may still add or be logging checkpoints: wait for it.
        _wait_for_holders(spool, report.held, hold_deadline)
    if report.held:
        logger.warning(
            "%s is still in use by a live fit (%s): its checkpoints may not all be logged yet.",
            spool.directory,
            ", ".join(report.held),
        )
    for name, tracker in trackers.items():
        finish_run(tracker, True, report.answering_by_tracker.get(name, True))  # ends only runs sync created
    if report.ok:
        spool.remove_if_empty()
    return report


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _wait_for_holders(spool: Spool, holders: list[str], deadline: float | None) -> None:
    """Poll until the spool's holders change (a fit ended) or the deadline passes."""
    logger.info("Waiting for the live fit(s) %s using %s.", ", ".join(holders), spool.directory)
    while spool.holders() == holders:
        remaining = _remaining(deadline)
        if remaining == 0.0:
            return
        time.sleep(0.2 if remaining is None else min(0.2, remaining))


def _fork(tracker: Tracker) -> Tracker:
    """A copy of a configured tracker for one fit: its own run state, the same settings.

    The built-in trackers copy their configuration only. A third-party tracker
    that cannot be copied is used as it is (it then serves its fits one at a time).
    """
    try:
        return copy.deepcopy(tracker)
    except Exception as exc:  # e.g. it holds a lock or an open connection
        logger.debug(
            "Tracker %s cannot be copied (%s): the configured object serves this fit.", tracker_key(tracker), exc
        )
        return tracker


def _run_key(tracker: str, destination: Mapping[str, Any]) -> tuple[str, str]:
    run = destination.get("run_id") or destination.get("deferred") or repr(sorted(destination.items()))
    return tracker, str(run)
