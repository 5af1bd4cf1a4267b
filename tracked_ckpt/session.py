"""A fit's runtime and its end: the runs, the publisher and its thread, the lease, the retention.

A `TrackedModelCheckpoint` is configuration: KerasTuner deep-copies it for every
trial, Ray pickles it, one callback may serve several fits. Everything one `fit`
needs while it runs belongs to a `FitSession`, made when the fit begins: its
trackers (fresh copies of the configured ones, so copies never share a run), the
destinations they log to, the publisher and its worker thread, the job lease, the
retention bookkeeping, the names it claims in the run. `FitSession.end` is the one
end-of-run sequence: wait for the uploads, release the lease, end the runs this
session started; `on_train_end` calls it, and so does whatever ends a fit Keras
never ended (see `tracked_ckpt.fits`, which keeps this process's live sessions).
`close_publisher` is the part of that sequence `tracked_ckpt.sync` reuses.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import signal
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tracked_ckpt import fits, settings
from tracked_ckpt.fits import LiveFit
from tracked_ckpt.preemption import StopSignals
from tracked_ckpt.publisher import LoggedHook, Publisher, PublishReport, stall_timeout_from
from tracked_ckpt.record import CheckpointRecord, checkpoint_name
from tracked_ckpt.resume import JobResume, LastCheckpoint, LocalState, ResumeState, seed_retention_from_run
from tracked_ckpt.retention import Retained, Retention
from tracked_ckpt.spool import Spool, SpoolEntry, SpoolHold
from tracked_ckpt.tracker import Tracker, answers_after_wait, finish_run, tracker_key

logger = logging.getLogger("tracked_ckpt")

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
        retained: the checkpoints `keep_top_k` ranks, kept by the callback across its fits.
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
        retained: Retained | None = None,
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
            Retention(options.keep_top_k, self._delete, self._paths_in_flight, self.file_lock, retained)
            if options.keep_top_k is not None
            else None
        )
        self.joined: LiveFit | None = None  # the session of the same fit whose runs this one logs to
        self._publisher: Publisher | None = None
        self._end_lock = threading.Lock()
        self._ended = False
        self._renamed: dict[str, str] = {}  # base name -> the base this fit logs under (a collision)
        self._hold: SpoolHold | None = None
        self._ending = threading.Event()  # the fit is over; its end runs in the background
        self._done = threading.Event()  # the end is complete
        self.stop: StopSignals | None = None  # the preemption signals caught while this fit trains
        self.id = fits.new_id()

    # -- the start of a fit ---------------------------------------------------------------

    def begin(self, base_name: str) -> ResumeState | None:
        """Wind down stale fits on this thread, start (or join, or resume) the runs, start publishing.

        Returns:
            The resume state to restore into the model, or None to start afresh.
        """
        fits.wind_down_stale(self, resuming=bool(self.options.resume))
        resume = self.options.resume
        local = self.state.read() if resume and self.state is not None else None
        state: ResumeState | None
        if isinstance(resume, str):
            self.job = JobResume(resume, self.trackers)
            state, self.destinations = self.job.begin(local, self._start, base_name)
        else:
            state = local
            joined = None if resume else fits.same_fit(self)
            if joined is not None:
                self.joined = joined
                self.destinations = self._start({k: {**d, "owned": False} for k, d in joined.destinations.items()})
            else:
                self.destinations = self._start(state.destinations if state is not None else {})
        fits.remember(self.destinations)
        self._hold = self.spool.hold()  # `sync_spool` elsewhere waits for this fit rather than pass it over
        self._publisher = Publisher(
            self.trackers,
            self.spool,
            asynchronous=self.options.asynchronous,
            on_logged=self._logged,
            stall_timeout=stall_timeout_from(self.options.stall_timeout),
        )
        fits.register(self)
        self._resubmit_leftovers()
        if state is not None and self.job is not None:
            self.job.seed_retention(self.retention)
        elif state is not None and self.retention is not None:
            seed_retention_from_run(self.retention, self.trackers, self.destinations, base_name)
        return state

    def _start(self, previous: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        return {key: tracker.start(resume=previous.get(key)) for key, tracker in self.trackers.items()}

    def _resubmit_leftovers(self) -> None:
        """Queue checkpoints an earlier, interrupted fit left in this spool."""
        assert self._publisher is not None
        queued = {entry.id for live in fits.sessions_of_spool(self.spool) for entry in live.queued()}
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
        ends (a Ray Tune trial stopped by its scheduler ends FINISHED, see `tracked_ckpt.fits`).
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

    def catch_stop_signals(self, signals: Sequence[signal.Signals]) -> None:
        """Note a preemption signal while this fit trains (main thread only: `tracked_ckpt.preemption`)."""
        self.stop = StopSignals.for_fit(signals, active=lambda: self.open, fit=self.fit)

    # -- while training -------------------------------------------------------------------

    @property
    def preempted(self) -> bool:
        """Whether a preemption signal arrived during this fit."""
        return self.stop is not None and self.stop.received is not None

    @property
    def open(self) -> bool:
        """Whether the session still accepts checkpoints (its fit has not been ended)."""
        return self._publisher is not None and not self._ended and not self._ending.is_set()

    @property
    def ending(self) -> bool:
        """Whether the fit is over and its end runs in the background (`end_in_background`)."""
        return self._ending.is_set()

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

        def rename(taken: set[str]) -> str:  # called by `claim_name` under its lock
            renamed = next(f"{base_name}-{n}" for n in itertools.count(2) if f"{base_name}-{n}" not in taken)
            self._renamed[base_name] = renamed
            logger.info(
                "Checkpoints of this fit are named %s-e…: %s-e… is taken in the run by another fit or callback.",
                renamed,
                base_name,
            )
            return checkpoint_name(renamed, epoch, batch)

        return fits.claim_name(self, name, rename)

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

    def run_links(self) -> list[str]:
        """Each tracker's run, as a person finds it: `run <UI link>`, or `run <id>` without one."""
        links = []
        for key, tracker in self.trackers.items():
            destination = self.destinations.get(key, {})
            links.append(f"run {tracker.run_url(destination) or destination.get('run_id', '?')}")
        return links

    def current_destinations(self) -> dict[str, dict[str, Any]]:
        """Where each tracker logs now (a deferred start may have become a real run meanwhile)."""
        return {key: tracker.destination or self.destinations.get(key, {}) for key, tracker in self.trackers.items()}

    def log_saved(
        self,
        record: CheckpointRecord,
        filepath: str,
        *,
        resume_state: tuple[float | None, str | None, float | None] | None = None,
        defer: bool = False,
    ) -> None:
        """Freeze a file Keras just wrote into the spool (durable from here on) and queue it for logging.

        Args:
            resume_state: (best value, best name, Keras's own best) to record the file as the
                job's latest checkpoint in the local resume state, when resuming is on.
            defer: only queue it, even with `upload="sync"`: the end that follows logs it by its
                deadline (a preemption's grace period), not an upload with none.
        """
        entry = SpoolEntry(
            id=self.spool.new_id(),
            record=record,
            staged_path=self.spool.stage(filepath),
            destinations=dict(self.destinations),
        )
        self.spool.write(entry)
        if resume_state is not None:
            self.write_state(record, *resume_state)
        if defer and self._publisher is not None and not self._ended:
            self._publisher.enqueue([entry])
        else:
            self.submit(entry)

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

    def end(
        self,
        completed: bool,
        *,
        cut_off: bool = False,
        deadline: float | None = None,
        preempted_exit: int | None = None,
    ) -> PublishReport:
        """Finish the uploads (up to `wait_timeout`), release the lease and end the runs this fit started.

        Idempotent and safe from any thread: `on_train_end`, the next fit, the thread
        watcher and interpreter exit may race; the first one ends it.

        Args:
            completed: the fit reached `on_train_end` (or its scheduler stopped it, with
                `cut_off`): runs end FINISHED; otherwise FAILED.
            cut_off: the fit's thread ended without `on_train_end`; the resume state is kept.
            deadline: wait for the uploads until this `time.monotonic()` instead of `wait_timeout`
                (one deadline for this session and those joined to it: a preemption's grace period).
            preempted_exit: the fit was preempted and the process will end with this
                status: the runs end as preempted and the resume state is kept.
        """
        if preempted_exit is not None:
            cut_off = True
        elif self.stop is not None:
            self.stop.restore()  # on the main thread; elsewhere the handler passes signals on by itself
        # A fit that did not complete (it raised, is wound down at exit, was preempted) may have lost
        # its server too: ask once before ending its runs, or the client's retries hold the process.
        probe = not completed
        with self._end_lock:
            if self._ended:
                return self.report or PublishReport()
            self._ended = True
            try:
                # Callbacks of the same fit that log into this session's runs finish their uploads first.
                for other in fits.sessions_joined_to(self):
                    other.end(completed, cut_off=cut_off, deadline=deadline, preempted_exit=preempted_exit)
                # The publisher stays reachable while it closes: `queued()` still names what it uploads.
                wait = self.options.wait_timeout if deadline is None else max(0.0, deadline - time.monotonic())
                report = close_publisher(self._publisher, self.trackers, self.destinations, wait, probe=probe)
                if self.job is not None:
                    self.job.release(write=report.answering)
                if completed and not cut_off and self.state is not None and self.options.resume:
                    self.state.clear()  # the job completed: the next fit starts afresh
                self._release_hold()
                if report.ok:
                    self.spool.remove_if_empty()
                fits.remember(self.current_destinations())
                for key, tracker in self.trackers.items():
                    finish_run(tracker, completed, report.answering_by_tracker.get(key, True), preempted_exit)
                self.report = report
            finally:
                self._publisher = None
                self._release_hold()
                fits.unregister(self)
                self._done.set()
        if self.on_end is not None:
            self.on_end(self, report)
        return report

    def preemption_deadline(self) -> float | None:
        """When a preempted fit must be done logging (`time.monotonic()`): the grace period from the signal,
        less a few seconds for ending the runs and the process. None without a signal."""
        stop = self.stop
        if stop is None or stop.received_at is None:
            return None
        grace = settings.preemption_grace()
        return time.monotonic() + stop.remaining(grace) - min(5.0, grace / 5)

    def end_preempted(self) -> PublishReport:
        """Log what waits within the grace period, then end the runs as preempted.

        The grace period (`TRACKED_CKPT_PREEMPTION_GRACE`) counts from the signal. Every
        fit of this process that caught the same signal (another tracked callback of the
        same `fit` with runs of its own) ends with this one, in parallel, by one deadline.
        What is not logged by then stays in the spool for `tracked-ckpt sync` or the
        resumed job. The caller then ends the process as the signal would have
        (`StopSignals.deliver`).
        """
        stop = self.stop
        assert stop is not None and stop.received is not None
        deadline, exit_status = self.preemption_deadline(), 128 + stop.received
        started = time.monotonic()
        others = [s for s in fits.live_sessions() if s is not self and getattr(s, "stop", None) is stop]
        if self.joined is not None and self.joined not in others:
            others.append(self.joined)  # the callback of this fit that owns the runs
        threads = [
            threading.Thread(
                target=other.end,
                kwargs={"completed": False, "deadline": deadline, "preempted_exit": exit_status},
                name="tracked-ckpt-preempted",
                daemon=True,
            )
            for other in others
        ]
        for thread in threads:
            thread.start()
        report = self.end(completed=False, deadline=deadline, preempted_exit=exit_status)
        for thread in threads:
            thread.join(max(0.0, (deadline or 0.0) + 5.0 - time.monotonic()))
        logger.warning(
            "%s: logged what waited in %.1f s of the %g s grace period%s; the runs end as preempted. "
            "Start the same job again (resume=True or the same job key) to continue from here.",
            stop.received.name,
            time.monotonic() - started,
            settings.preemption_grace(),
            f"; {len(report.pending)} checkpoint(s) wait in {self.spool.directory}" if report.pending else "",
        )
        return report


def close_publisher(
    publisher: Publisher | None,
    trackers: Mapping[str, Tracker],
    destinations: Mapping[str, Mapping[str, Any]],
    timeout: float | None,
    *,
    probe: bool = False,
) -> EndReport:
    """Wait for the publisher; then ask each tracker once whether it answers (after a stalled wait, or `probe`)."""
    report = EndReport()
    if publisher is not None:
        report.merge(publisher.close(timeout))
    asked = report.stalled or probe
    report.answering_by_tracker = {
        key: answers_after_wait(tracker, destinations.get(key, {}), asked) for key, tracker in trackers.items()
    }
    return report


@dataclasses.dataclass
class EndReport(PublishReport):
    """A publisher's report plus which trackers answered after the wait (so runs and leases are ended)."""

    answering_by_tracker: dict[str, bool] = dataclasses.field(default_factory=dict)

    @property
    def answering(self) -> bool:
        return all(self.answering_by_tracker.values())


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
