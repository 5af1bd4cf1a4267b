"""The one fake tracker of the core's tests, and spool entries to feed it.

`FakeTracker` keeps what it logs in memory and notes every call, so the spool, the
publisher and the end-of-fit wait can be tested without a tracker SDK. It can be told
to fail (epoch 1, for a number of attempts or for good), to hold each call until the
test releases it, and what to answer when asked whether it is reachable. Tests that
need a real tracker's behaviour subclass that tracker instead (e.g. `MlflowTracker`
with a held or crashing step); this fake stands in only for "some tracker".
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.spool import Spool, SpoolEntry
from tracked_ckpt.tracker import Tracker

HOLD_TIMEOUT = 60.0  # seconds a held call waits for `release` before it fails the test


class FakeTracker(Tracker):
    """A tracker logging into memory, scripted to fail, hold or go unanswered.

    Args:
        fail_with: raised by epoch 1's calls (the first `failures` of them; None: all of them).
        failures: how many of epoch 1's calls fail before one works (None: it never works).
        hold: each call waits until the test sets `release` (None: calls go through).
        reachable: what `is_reachable` answers.
        released_after_probes: `is_reachable` sets `release` on this probe (a slow call
            that ends after several stall windows); None: probes never release.

    What it notes: `attempts` (the epoch of each call), `first_attempts` (each call's
    `first_attempt`), `seen` (epoch, native thread id and that thread's nice value, each
    call), `logged` ((epoch, bytes) of each call that succeeded), `probes` (`is_reachable`
    calls); `entered` is set once a call has begun.
    """

    name = display_name = "t"

    def __init__(
        self,
        *,
        fail_with: Exception | None = None,
        failures: int | None = None,
        hold: bool = False,
        reachable: bool = True,
        released_after_probes: int | None = None,
    ) -> None:
        self.fail_with, self.failures = fail_with, failures
        self.reachable, self.released_after_probes = reachable, released_after_probes
        self.release, self.entered = threading.Event(), threading.Event()
        if not hold:
            self.release.set()
        self.attempts: list[int] = []
        self.first_attempts: list[bool] = []
        self.seen: list[tuple[int, int, int]] = []
        self.logged: list[tuple[int, bytes]] = []
        self.probes = 0

    def start(self, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any], *, first_attempt: bool = False
    ) -> str:
        thread = threading.get_native_id()
        self.seen.append((record.epoch, thread, os.getpriority(os.PRIO_PROCESS, thread)))
        self.attempts.append(record.epoch)
        self.first_attempts.append(first_attempt)
        self.entered.set()
        if not self.release.wait(HOLD_TIMEOUT):
            raise AssertionError(f"the test never released the held call for epoch {record.epoch}")
        if (
            self.fail_with is not None
            and record.epoch == 1
            and (self.failures is None or self.attempts.count(1) <= self.failures)
        ):
            raise self.fail_with
        with open(path, "rb") as f:
            self.logged.append((record.epoch, f.read()))
        return f"id-{record.epoch}"

    def is_reachable(self, destination: Mapping[str, Any]) -> bool:
        self.probes += 1
        if self.released_after_probes is not None and self.probes >= self.released_after_probes:
            self.release.set()
        return self.reachable

    def is_permanent(self, exc: Exception) -> bool:
        return isinstance(exc, ValueError)


def entry_for(spool: Spool, path: str, epoch: int) -> SpoolEntry:
    """A spool entry for the file at `path` as epoch `epoch`, written to `spool` for the tracker key "t"."""
    record = CheckpointRecord(
        name=f"m-e{epoch:04d}",
        epoch=epoch,
        step=epoch,
        monitor="loss",
        mode="min",
        is_best=False,
        sha256="",
        size_bytes=os.path.getsize(path),
        format="keras",
        filepath=path,
        keras_version="3",
        backend="tensorflow",
    )
    entry = SpoolEntry(id=spool.new_id(), record=record, staged_path=spool.stage(path), destinations={"t": {}})
    spool.write(entry)
    return entry
