"""The publisher: takes spooled checkpoints to their trackers, off the training thread.

One background worker logs entries in the order they were saved. A tracker
error is retried with exponential backoff while training goes on; the entry
stays in the spool until every tracker confirmed it. `close` waits a bounded
time and reports what was logged and what is still pending.

The wait at the end follows progress: it goes on while uploads advance (up to
the caller's timeout), and stops once the trackers have made none for the stall
window. An attempt still inside a tracker call is not a stall while the tracker
answers (a large, slow upload); failed attempts, or a call hanging on a tracker
that does not answer (MLflow's own HTTP retries can take minutes), are.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from tracked_ckpt import settings
from tracked_ckpt.chunking import scan_file
from tracked_ckpt.errors import ChecksumError
from tracked_ckpt.files import sha256_file
from tracked_ckpt.progress import Progress, wait_with_progress
from tracked_ckpt.record import STORAGE_INCREMENTAL
from tracked_ckpt.requirements import RequirementsResolver
from tracked_ckpt.spool import Spool, SpoolEntry
from tracked_ckpt.storage import can_chunk, storage_for_tracker
from tracked_ckpt.tracker import Tracker

logger = logging.getLogger("tracked_ckpt")

#: Called after a tracker confirmed an entry: (entry, tracker name, tracker's id).
LoggedHook = Callable[[SpoolEntry, str, str], None]


def _lower_thread_priority(increment: int) -> int | None:
    """Raise the calling thread's nice value by `increment`; return the old value (None: unchanged).

    On Linux a nice value belongs to a thread (its native id), so training threads
    keep theirs. Elsewhere, or where refused, nothing changes and nothing is said.
    """
    if increment <= 0 or not sys.platform.startswith("linux") or not hasattr(os, "setpriority"):
        return None
    try:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, before + increment))
        return before
    except (OSError, AttributeError) as exc:
        logger.debug("Upload thread keeps its priority: %s", exc)
        return None


def _restore_thread_priority(value: int) -> None:
    """Put the calling thread back to nice `value`, where permitted (root, CAP_SYS_NICE, RLIMIT_NICE)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), value)
    except OSError as exc:  # an unprivileged thread cannot lower its nice value again
        logger.debug("Upload thread stays at its lower priority while fit waits: %s", exc)


def _digest(entry: SpoolEntry) -> tuple[str, int]:
    """(sha256, size) of an entry's staged file, from the one read it gets on this thread.

    An incremental checkpoint's file is cut into chunks in the same read (`chunking.scan_file`,
    remembered in `RECENT_SCANS`): its trackers' chunk stores then read only the chunks they lack.
    """
    if entry.record.storage == STORAGE_INCREMENTAL and can_chunk():
        scanned = scan_file(entry.staged_path)
        return scanned.sha256, scanned.size
    return sha256_file(entry.staged_path)


def stall_timeout_from(value: float | None) -> float:
    """The stall window: `value`, else `TRACKED_CKPT_STALL_TIMEOUT`, else 30 s.

    Raises:
        ValueError: the value is not a positive number of seconds.
    """
    if value is None:
        return settings.stall_timeout()
    if not value > 0:  # also refuses NaN
        raise ValueError(
            f"stall_timeout={value!r} is not a positive number of seconds: use e.g. 30, or math.inf to wait "
            "for the whole wait_timeout."
        )
    return float(value)


class LoggedEntry(NamedTuple):
    """One spool entry a tracker confirmed; a tuple, so `for entry, tracker, ref in report.logged` works.

    Attributes:
        entry: the spool entry (its `record` is the checkpoint's schema values).
        tracker: the tracker's name (`"mlflow"`, `"wandb"`).
        ref: the tracker's id of the logged checkpoint (MLflow LoggedModel id, W&B artifact version).
    """

    entry: SpoolEntry
    tracker: str
    ref: str


@dataclasses.dataclass
class PublishReport:
    """What the publisher did: ids logged per tracker, and entries still pending."""

    logged: list[LoggedEntry] = dataclasses.field(default_factory=list)
    pending: list[SpoolEntry] = dataclasses.field(default_factory=list)
    failed: list[tuple[SpoolEntry, str]] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    #: True when the wait stopped because no tracker made progress for the stall window.
    stalled: bool = False
    #: Live processes ("host:pid") still using the spool when a sync ended: it may not be complete.
    held: list[str] = dataclasses.field(default_factory=list)
    #: Trackers a sync found not answering, so it tried nothing ("MLflow at http://host:5000").
    unreachable: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.pending and not self.failed and not self.held

    def merge(self, other: PublishReport) -> None:
        """Add another publisher's report to this one (e.g. one spool of many)."""
        self.logged.extend(other.logged)
        self.pending.extend(other.pending)
        self.failed.extend(other.failed)
        self.errors.extend(other.errors)
        self.stalled = self.stalled or other.stalled
        self.held.extend(h for h in other.held if h not in self.held)
        self.unreachable.extend(u for u in other.unreachable if u not in self.unreachable)


class Publisher:
    """Logs spool entries to trackers, in order, with retries.

    Args:
        trackers: tracker name -> tracker object (names as in the entries' destinations).
        spool: where entries live until confirmed.
        asynchronous: True to log on a background thread, False to log inline in `submit`.
        on_logged: called (on the logging thread) whenever a tracker confirms an entry.
        max_backoff: longest wait, in seconds, between two attempts at a failing entry.
        stall_timeout: seconds `close` keeps waiting without progress (an entry
            confirmed, or a tracker answering while an upload is in flight);
            None: no stall rule, only `close`'s timeout.
    """

    def __init__(
        self,
        trackers: Mapping[str, Tracker],
        spool: Spool,
        *,
        asynchronous: bool = True,
        on_logged: LoggedHook | None = None,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        stall_timeout: float | None = None,
    ):
        self.trackers = dict(trackers)
        self.spool = spool
        self.asynchronous = asynchronous
        self.on_logged = on_logged
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stall_timeout = stall_timeout
        self.report = PublishReport()
        self._queue: collections.deque[SpoolEntry] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._wake = threading.Event()  # set by close(): cut a backoff short
        self._deadline: float | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._progress_at = time.monotonic()  # the last time a tracker confirmed something
        self._in_call: tuple[SpoolEntry, str] | None = None  # (entry, tracker) inside a tracker call now
        self._niced_from: int | None = None  # the worker's nice value before it lowered its priority
        self._requirements = RequirementsResolver()  # one per fit: each distinct config parsed once

    def submit(self, entry: SpoolEntry) -> None:
        """Queue a spooled entry. In sync mode, log it (and anything before it) now."""
        with self._cond:
            self._queue.append(entry)
            self._cond.notify_all()
        if not self.asynchronous:
            self._drain_once()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tracked-ckpt-publisher", daemon=True)
            self._thread.start()

    def enqueue(self, entries: list[SpoolEntry]) -> None:
        """Queue entries without logging them yet; `close` logs them (what a sync does)."""
        with self._cond:
            self._queue.extend(entries)
            self._cond.notify_all()

    def queued(self) -> list[SpoolEntry]:
        """Entries submitted and not yet done with, oldest first."""
        with self._cond:
            return list(self._queue)

    def close(self, timeout: float | None = None) -> PublishReport:
        """Log what is queued, waiting at most `timeout` seconds (None: until done)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._progress_at = time.monotonic()  # the stall window counts from the start of the wait at the latest
        if self.asynchronous and self._thread is not None:
            with self._cond:
                self._closing = True
                self._deadline = deadline
                self._cond.notify_all()
            self._wake.set()
            wait_with_progress(
                "tracked-ckpt: uploading",
                pending=lambda: list(self._queue),
                join=self._thread.join,
                alive=lambda: self._thread is not None and self._thread.is_alive() and not self._stalled(),
                deadline=deadline,
                size_of=lambda entry: entry.record.size_bytes,
            )
            if self.report.stalled:
                self._thread.join(1.0)  # the worker stops after its current attempt; don't wait for it
            else:
                self._thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()) + 1.0)
            if self._thread.is_alive():
                # Still inside a tracker call: it finishes on its own, the spool keeps the rest.
                logger.warning("A checkpoint upload was still in progress when the wait ran out.")
        else:
            with Progress(
                "tracked-ckpt: syncing", sum(e.record.size_bytes for e in self._queue), len(self._queue)
            ) as bar:
                while self._queue and (deadline is None or time.monotonic() < deadline):
                    before = list(self._queue)
                    ok = self._drain_once()
                    done = before[: len(before) - len(self._queue)]
                    bar.advance(sum(e.record.size_bytes for e in done), len(done))
                    if not ok:
                        if self._stalled():
                            break
                        self._sleep_backoff(deadline)
        with self._cond:
            self.report.pending = list(self._queue)
        return self.report

    def _stalled(self) -> bool:
        """True (once, then for good) when nothing progressed for the stall window; stops the worker.

        A call still in flight counts as progress while its tracker answers a
        liveness probe: a slow upload of a large checkpoint is never cut short.
        """
        if self.report.stalled:
            return True
        if self.stall_timeout is None or time.monotonic() - self._progress_at < self.stall_timeout:
            return False
        in_call = self._in_call
        if in_call is not None and self._answers(*in_call):
            self._progress_at = time.monotonic()
            return False
        self.report.stalled = True
        logger.warning(
            "No checkpoint upload made progress for %.0f s (the tracker is unreachable or failing): "
            "not waiting longer; the spool keeps what is left.",
            self.stall_timeout,
        )
        with self._cond:
            self._deadline = time.monotonic()  # the worker stops after its current attempt
            self._cond.notify_all()
        self._wake.set()
        return True

    def _answers(self, entry: SpoolEntry, name: str) -> bool:
        """Whether the tracker of an in-flight call answers now (trackers without a probe: assume so)."""
        try:
            return bool(self.trackers[name].is_reachable(entry.destinations[name]))
        except Exception:  # a probe that fails says the same as one that answers no
            return False

    # -- worker -------------------------------------------------------------------------

    def _run(self) -> None:
        # Uploads take what training leaves of the CPU (hashing, the HTTP client, a co-located
        # server's share is not ours to lower); once close() waits for them, nothing is left to yield to.
        self._niced_from = _lower_thread_priority(settings.upload_niceness())
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._past_deadline():
                    return
            self._unnice_if_closing()
            if not self._drain_once():
                self._sleep_backoff(None)  # follows self._deadline, which close() may set meanwhile

    def _unnice_if_closing(self) -> None:
        """On the worker, once `close` waits: back to normal priority (training no longer needs the CPU)."""
        if self._niced_from is not None and self._closing and threading.current_thread() is self._thread:
            _restore_thread_priority(self._niced_from)
            self._niced_from = None

    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _sleep_backoff(self, deadline: float | None) -> None:
        """Wait before the next attempt: exponential, capped, and never past the deadline.

        `close()` may set (or shorten) the deadline while the worker sleeps; it sets
        `_wake` so the remaining wait is recomputed, not dropped. While `close()`
        waits, a backoff is at most a third of the stall window, so a tracker that
        comes back gets a few attempts before the wait gives up on it.
        """
        exponent = min(max(0, self._failures - 1), 16)
        started = time.monotonic()
        delay = min(self.max_backoff, self.initial_backoff * 2**exponent)
        while True:
            until = started + (
                min(delay, self.stall_timeout / 3) if self._closing and self.stall_timeout is not None else delay
            )
            limit = deadline if deadline is not None else self._deadline
            remaining = (until if limit is None else min(until, limit)) - time.monotonic()
            if remaining <= 0:
                return
            if self._wake.wait(remaining):
                self._wake.clear()

    def _drain_once(self) -> bool:
        """Try to log queued entries in order; False when one failed (it stays queued)."""
        while True:
            with self._cond:
                if not self._queue:
                    return True
                if self._closing and self._past_deadline():
                    return False  # what is left stays in the spool, reported as pending
                entry = self._queue[0]
            if not self._publish(entry):
                return False
            with self._cond:
                self._queue.popleft()

    def _publish(self, entry: SpoolEntry) -> bool:
        """Log one entry to its pending trackers; True when it is done with (logged or parked)."""
        with self.spool.claim(entry) as claimed:
            if not claimed:  # another process or worker (e.g. a concurrent sync) holds it
                self.report.errors.append(f"{entry.record.name}: being logged elsewhere")
                return False
            if not self.spool.reload(entry):
                # Logged (or parked) by another process since it was queued: nothing left to do
                # here, and a parked entry keeps its file for `sync --retry-failed`.
                if not self.spool.is_parked(entry):
                    self.spool.remove(entry)
                self._progress_at = time.monotonic()
                return True
            return self._publish_claimed(entry)

    def _publish_claimed(self, entry: SpoolEntry) -> bool:
        self._unnice_if_closing()  # close() may have started while earlier entries uploaded
        try:
            first_attempt = entry.attempts == 0
            if not entry.record.sha256:
                # Hashing happens here, not on the training thread: the staged file is frozen.
                sha, size = _digest(entry)
                entry.record = dataclasses.replace(entry.record, sha256=sha, size_bytes=size)
            if entry.record.requirements is None and entry.record.format == "keras":
                # What the saved config needs beyond Keras, for every tracker alike: read here, off
                # the training thread, from the frozen file.
                entry.record = dataclasses.replace(
                    entry.record,
                    requirements=self._requirements.requirements(
                        entry.staged_path, entry.record.code_paths, entry.record.name
                    ),
                )
            # Counted on disk before any tracker call, so that a crash or a hang in the middle of
            # one makes every later attempt (here, or a sync in another process) a retry.
            entry.attempts += 1
            self.spool.write(entry)
            for name in entry.pending_trackers:
                tracker = self.trackers[name]
                self._in_call = (entry, name)
                # On a first attempt nothing of this entry can exist on the tracker yet: it may skip
                # its idempotency look-up.
                ref = tracker.log_checkpoint(
                    storage_for_tracker(entry.record, tracker.stores_incremental),
                    entry.staged_path,
                    entry.destinations[name],
                    first_attempt=first_attempt,
                )
                self._in_call = None
                self._progress_at = time.monotonic()
                entry.done[name] = ref
                self.spool.write(entry)
                self.report.logged.append(LoggedEntry(entry, name, ref))
                if self.on_logged is not None:
                    self.on_logged(entry, name, ref)
        except Exception as exc:
            self._in_call = None  # a tracker failure is retried; the entry stays spooled
            message = f"{entry.record.name}: {type(exc).__name__}: {exc}"
            if self._permanent(exc, entry):
                # Retrying cannot help (the run was deleted, the file is gone, the request is
                # invalid): park it so the checkpoints after it are not held up.
                self.spool.park(entry, message)
                self._progress_at = time.monotonic()
                self.report.failed.append((entry, message))
                logger.error(
                    "Could not log checkpoint %s; kept in %s (retry with `tracked-ckpt sync --retry-failed`).",
                    message,
                    self.spool.directory,
                )
                return True
            self._failures += 1
            if self._failures == 1 or self._failures % 10 == 0:
                logger.warning(
                    "Could not log checkpoint %s (attempt %d); will retry, training goes on.",
                    message,
                    self._failures,
                )
            self.report.errors.append(message)
            return False
        self._failures = 0
        self.spool.remove(entry)
        return True

    def _permanent(self, exc: Exception, entry: SpoolEntry) -> bool:
        if isinstance(exc, FileNotFoundError) and not os.path.exists(entry.staged_path):
            return True
        if isinstance(exc, ChecksumError):  # the staged bytes changed since they were hashed
            return True
        return any(self.trackers[name].is_permanent(exc) for name in entry.pending_trackers if name in self.trackers)
