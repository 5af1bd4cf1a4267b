"""Logging what waits in spools, outside a fit: `sync_spool` (`tracked-ckpt sync`).

A spool keeps every checkpoint until each of its trackers confirmed it, so
whatever a fit left (a killed process, a trial its scheduler stopped, a tracker
that was down) can be logged later, from any process: each entry goes to the
run it was saved for, with the same publisher and the same end-of-run sequence
as during a fit. A fit still using a spool holds it (`Spool.hold`); sync waits
for such a fit, bounded by `HOLD_WAIT`, before reporting what it left.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tracked_ckpt.fits import sessions_of_spool
from tracked_ckpt.git import redact_remote
from tracked_ckpt.publisher import Publisher, PublishReport, stall_timeout_from
from tracked_ckpt.session import EndReport, close_publisher
from tracked_ckpt.spool import Spool, SpoolEntry, find_spools
from tracked_ckpt.tracker import Tracker, finish_run, tracker_class

logger = logging.getLogger("tracked_ckpt")

#: Seconds `sync_spool` without a timeout waits for a live fit using a spool before reporting it.
HOLD_WAIT = 600.0


def sync_spool(
    directory: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = None,
    retry_failed: bool = False,
    on_spool: Callable[[str, PublishReport], None] | None = None,
    tracking_uri: str | None = None,
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

    Each checkpoint goes to the trackers its fit logged to, at the address the
    fit recorded in the spool; `tracking_uri` replaces that address (the
    `tracking_uri` of each recorded destination, MLflow's) for a server that
    moved since, whose store holds the same runs. The spool remembers it for
    what is still left afterwards.

    Args:
        directory: a spool, or a folder above spools, or several.
        timeout: seconds for the whole call (None: no limit).
        retry_failed: put parked entries (set aside after a permanent error) back in line.
        on_spool: called with each spool's folder and report as it is done (the CLI prints it).
        tracking_uri: where the tracker answers now, instead of the URI the fit recorded.

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
        one = _sync_one(Spool(spool_dir), remaining, retry_failed, tracking_uri)
        if on_spool is not None:
            on_spool(spool_dir, one)
        report.merge(one)
    return report


def _sync_one(spool: Spool, timeout: float | None, retry_failed: bool, tracking_uri: str | None) -> PublishReport:
    deadline = None if timeout is None else time.monotonic() + timeout
    # Fits of this process on this spool that are over (their thread is this one, or gone) but were never
    # ended still hold it: end them now, rather than wait for ourselves.
    for session in [
        s for s in sessions_of_spool(spool) if s.thread is threading.current_thread() or not s.thread.is_alive()
    ]:
        session.end(completed=False)
    # Another live fit is waited for at most this long, even without a timeout: then it is reported.
    hold_deadline = time.monotonic() + (HOLD_WAIT if timeout is None else timeout)
    if retry_failed:
        spool.unpark_all()
    trackers: dict[str, Tracker] = {}
    destinations: dict[str, Mapping[str, Any]] = {}
    report = EndReport()
    while True:
        entries = list(spool.entries())
        if tracking_uri:
            _redirect(entries, tracking_uri)
        for entry in entries:
            for name in entry.pending_trackers:
                if name not in trackers:
                    trackers[name] = tracker_class(name)()
                    destinations[name] = entry.destinations[name]
        silent = _not_answering(trackers, destinations)
        if silent:
            # Each attempt would hang in the tracker's own retries (minutes, for MLflow) to fail anyway.
            report.pending, report.stalled, report.held = entries, True, spool.holders()
            report.answering_by_tracker = {name: name not in silent for name in trackers}
            report.unreachable = silent
            break
        # A single attempt per pass, then backoff until `timeout` or a stall: the same loop as during fit.
        publisher = Publisher(
            {n: trackers[n] for n in trackers}, spool, asynchronous=False, stall_timeout=stall_timeout_from(None)
        )
        publisher.enqueue(entries)
        one = close_publisher(publisher, trackers, destinations, _remaining(deadline))
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


def _redirect(entries: Sequence[SpoolEntry], tracking_uri: str) -> None:
    """Point every recorded destination that names a tracking URI at `tracking_uri` instead."""
    for entry in entries:
        for destination in entry.destinations.values():
            if "tracking_uri" in destination:
                destination["tracking_uri"] = tracking_uri


def _not_answering(trackers: Mapping[str, Tracker], destinations: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Where the trackers that do not answer a quick probe log to, e.g. "MLflow at http://host:5000"."""
    silent = []
    for name, tracker in trackers.items():
        if not tracker.is_reachable(destinations[name]):
            uri: str | None = str(destinations[name].get("tracking_uri") or "")
            if uri and urllib.parse.urlsplit(uri).netloc:
                uri = redact_remote(uri)  # never print a password or a token
            silent.append(f"{tracker.display_name} at {uri}" if uri else tracker.display_name)
    return silent


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
