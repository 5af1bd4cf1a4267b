"""The job lease: which live job holds a job key, so two jobs never log into one run at once.

A lease is a small JSON value stored on the key's run (through the tracker's
`TrackerJobKeys.job_info` / `set_job_info`): the holder ("host:pid:nonce"), the
time it last said it was alive, whether it released the key, and the newest
checkpoint it logged. While training, the job holding the key refreshes it (a
heartbeat every quarter of the lease window, on its own thread; training never
waits for it). A job starting with the same key reads the lease: released or
older than the window means its holder is gone (finished, or killed without a
chance to say so) and the new job takes over; a lease that is refreshed while
the new job watches means a live holder, and the new job refuses with
`JobLockedError`. A restarted job thus waits at most one window when its
predecessor was killed a moment ago. The window is `TRACKED_CKPT_LEASE_SECONDS`
(default 60).

`tracked_ckpt.resume.JobResume` holds one `JobLease` per job key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

from tracked_ckpt import settings
from tracked_ckpt.errors import JobLockedError
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.tracker import Tracker, TrackerJobKeys

logger = logging.getLogger("tracked_ckpt")


@dataclasses.dataclass
class Lease:
    """Who holds a job key, when it last said so, and the newest checkpoint it logged."""

    holder: str
    beat: float
    released: bool = False
    latest: dict[str, Any] | None = None  # {"name", "epoch", "step"} of the newest logged checkpoint

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> Lease | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["holder"]), float(data["beat"]), bool(data.get("released")), data.get("latest"))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as no holder


class JobLease:
    """This job's side of a job key's lease: wait for an earlier holder, claim, keep alive, release.

    Args:
        key: the job key (already validated).
        trackers: the trackers by name.
        jobs: the same trackers as `TrackerJobKeys`, by name.

    Attributes:
        window: the lease window in seconds (`TRACKED_CKPT_LEASE_SECONDS`).
        holder: this job's name in the lease ("host:pid:nonce").
        previous: the lease each tracker's run held when this job started (None: none, or unreadable).
        latest: the newest checkpoint the lease names ({"name", "epoch", "step"}), or None.
    """

    def __init__(self, key: str, trackers: Mapping[str, Tracker], jobs: Mapping[str, TrackerJobKeys]):
        self.key = key
        self.trackers = trackers
        self._jobs = jobs
        self.window = settings.lease_seconds()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.previous: dict[str, Lease | None] = {}
        self.latest: dict[str, Any] | None = None
        self._destinations: Mapping[str, Mapping[str, Any]] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False

    # -- before the claim: is the key free? -----------------------------------------------

    def read(self, name: str, destination: Mapping[str, Any]) -> Lease | None:
        """The lease on tracker `name`'s run `destination`, or None (none, or unreadable)."""
        return Lease.from_json(self._jobs[name].job_info(destination).get("lease"))

    def wait_for_holder(self, name: str, destination: Mapping[str, Any]) -> None:
        """Return once the key's earlier holder is known to be gone; raise if it is alive.

        Raises:
            JobLockedError: the lease was refreshed while this job watched it.
        """
        lease = self.previous[name] = self.read(name, destination)
        if lease is None or lease.released or lease.holder == self.holder:
            return
        age = time.time() - lease.beat
        if age >= self.window:
            logger.info(
                "Job %r: its earlier holder %s went silent %.0fs ago; taking over.", self.key, lease.holder, age
            )
            return
        deadline = time.monotonic() + min(self.window, self.window - age + 1.0)
        logger.warning(
            "Job %r: its lease was refreshed by %s %.0fs ago; waiting up to %.0fs to see whether that process is "
            "still alive (a preempted or killed one stops refreshing; %s sets the window).",
            self.key,
            lease.holder,
            age,
            deadline - time.monotonic(),
            settings.LEASE_SECONDS,
        )
        poll = max(0.2, self.window / 10)
        while time.monotonic() < deadline:
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
            now = self.read(name, destination)
            if now is None or now.released:
                if now is not None:
                    self.previous[name] = now  # the released lease names the holder's last checkpoint
                return
            if now.holder != lease.holder or now.beat != lease.beat:
                raise self._locked(name, destination, now)
        logger.info("Job %r: its earlier holder %s stopped refreshing its lease; taking over.", self.key, lease.holder)

    def _locked(self, name: str, destination: Mapping[str, Any], lease: Lease) -> JobLockedError:
        tracker = self.trackers[name]
        where = tracker.run_url(destination) or destination.get("run_id", "?")
        return JobLockedError(
            f"Job {self.key!r} is already running as {lease.holder} (run {where}, lease refreshed "
            f"{max(0.0, time.time() - lease.beat):.0f}s ago): stop it first, or start this one with another key."
        )

    # -- the claim -------------------------------------------------------------------------

    def claim(self, destinations: Mapping[str, Mapping[str, Any]]) -> None:
        """Tag each run with the key and take the lease; refuse if another job took it meanwhile.

        Args:
            destinations: the run each tracker logs to (by tracker name); the heartbeat refreshes these.

        Raises:
            JobLockedError: another job holds the lease, or another first start created a run with the key.
        """
        self._destinations = destinations
        for name, jobs in self._jobs.items():
            jobs.set_job_info(destinations[name], {"key": self.key, "lease": self._lease().to_json()})
        # Two restarts that both found the lease free both write it: the last writer wins, the other sees it.
        time.sleep(min(2.0, self.window / 10))
        for name, tracker in self.trackers.items():
            destination = destinations[name]
            lease = self.read(name, destination)
            if lease is not None and lease.holder != self.holder and not lease.released:
                raise self._locked(name, destination, lease)
            winner = self._jobs[name].find_job(self.key)
            if winner is not None and winner.get("run_id") != destination.get("run_id"):
                # Two first starts created a run each: the earliest run keeps the key; end ours.
                tracker.finish(success=False)
                raise JobLockedError(
                    f"Job {self.key!r} started twice at once: it runs in run {winner.get('run_id')}; this "
                    f"start (run {destination.get('run_id')}) stops. Start one job per key."
                )

    # -- while training --------------------------------------------------------------------

    def note_logged(self, record: CheckpointRecord) -> None:
        """A checkpoint is logged: the lease names it as the newest (written on the heartbeat thread)."""
        if self.latest is None or record.step >= int(self.latest.get("step", -1)):
            self.latest = checkpoint_summary(record)
            self._wake.set()

    def start_heartbeat(self, destinations: Mapping[str, Mapping[str, Any]]) -> None:
        """Refresh the lease on `destinations` every quarter window, on a thread of its own, until `release`."""
        self._destinations = destinations
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="tracked-ckpt-lease", daemon=True)
        self._thread.start()

    def _lease(self, released: bool = False) -> Lease:
        return Lease(self.holder, time.time(), released, self.latest)

    def _beat(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.window / 4)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._write(released=False)

    def _write(self, released: bool) -> None:
        for name, tracker in self.trackers.items():
            try:
                self._jobs[name].set_job_info(self._destinations[name], {"lease": self._lease(released).to_json()})
            except Exception as exc:  # the lease only matters to a competing start: never stop training
                if not self._warned:
                    self._warned = True
                    logger.warning("Could not refresh job %r's lease on %s: %s", self.key, tracker.display_name, exc)

    def release(self, write: bool = True) -> None:
        """Stop the heartbeat and release the key (the next start with it need not wait).

        With `write=False` (the tracker stopped answering) the lease is left to expire
        after its window rather than written: writing would hang in the SDK's retries.
        """
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._wake.set()
        thread.join(timeout=10)  # a heartbeat stuck in a tracker call must not hold up the end of fit
        if write:
            self._write(released=True)


def checkpoint_summary(record: CheckpointRecord) -> dict[str, Any]:
    """How a lease names a checkpoint: {"name", "epoch", "step"}."""
    return {"name": record.name, "epoch": record.epoch, "step": record.step}
