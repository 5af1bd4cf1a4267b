"""The end-of-fit wait follows progress; a first attempt is known as such, across processes."""

from __future__ import annotations

import json
import os

import pytest
from support.fake_tracker import FakeTracker, entry_for

from tracked_ckpt.publisher import Publisher, stall_timeout_from
from tracked_ckpt.spool import Spool


def spooled(tmp_path, epochs=(1,)):
    spool = Spool(tmp_path / "spool")
    for epoch in epochs:
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    return spool, [entry_for(spool, str(tmp_path / f"{e}.keras"), e) for e in epochs]


def test_a_call_to_a_tracker_that_answers_is_waited_for(tmp_path):
    spool, entries = spooled(tmp_path)
    tracker = FakeTracker(hold=True, reachable=True, released_after_probes=3)
    publisher = Publisher({"t": tracker}, spool, stall_timeout=0.2)
    publisher.submit(entries[0])
    assert tracker.entered.wait(30)
    report = publisher.close(timeout=60)
    assert report.ok and not report.stalled
    assert tracker.probes >= 3  # it outlived three stall windows
    assert tracker.first_attempts == [True]


def test_a_call_to_a_tracker_that_does_not_answer_is_a_stall(tmp_path):
    spool, entries = spooled(tmp_path, epochs=(1, 2))
    tracker = FakeTracker(hold=True, reachable=False, released_after_probes=3)
    publisher = Publisher({"t": tracker}, spool, stall_timeout=0.2)
    for entry in entries:
        publisher.submit(entry)
    assert tracker.entered.wait(30)
    report = publisher.close(timeout=60)
    # Counted before the held call is let go: once it returns, epoch 1 is logged (and leaves the spool).
    assert len(list(spool.entries())) == 2
    tracker.release.set()
    assert report.stalled and [e.record.epoch for e in report.pending] == [1, 2]
    assert tracker.probes == 1


def test_failed_attempts_are_a_stall_and_the_spool_counts_them(tmp_path):
    spool, entries = spooled(tmp_path)
    tracker = FakeTracker(fail_with=ConnectionError("down"))
    publisher = Publisher({"t": tracker}, spool, stall_timeout=0.3, initial_backoff=0.01, max_backoff=0.05)
    publisher.submit(entries[0])
    report = publisher.close(timeout=60)
    assert report.stalled and len(report.pending) == 1
    (left,) = spool.entries()
    assert left.attempts == len(tracker.attempts) >= 1  # written before each call: any later one is a retry


def test_an_entry_logged_by_another_process_meanwhile_is_not_logged_again(tmp_path):
    spool, entries = spooled(tmp_path)
    stale = entries[0]
    spool.remove(stale)  # e.g. a `tracked-ckpt sync` finished it after this publisher queued it
    tracker = FakeTracker(hold=True, reachable=True, released_after_probes=3)
    tracker.release.set()
    publisher = Publisher({"t": tracker}, spool, asynchronous=False)
    publisher.submit(stale)
    assert publisher.close(timeout=5).ok
    assert tracker.first_attempts == []
    assert not os.listdir(spool.directory)


def test_old_manifests_without_an_attempt_count_are_retries(tmp_path):
    spool, entries = spooled(tmp_path)
    path = os.path.join(spool.directory, entries[0].id + ".json")
    with open(path) as f:
        data = json.load(f)
    data.pop("attempts")
    with open(path, "w") as f:
        json.dump(data, f)
    (entry,) = spool.entries()
    assert entry.attempts == 1


@pytest.mark.parametrize("value, env", [(0, None), (None, "soon")])
def test_a_bad_stall_timeout_is_a_one_line_error(monkeypatch, value, env):
    if env is not None:
        monkeypatch.setenv("TRACKED_CKPT_STALL_TIMEOUT", env)
    with pytest.raises(ValueError, match="positive number of seconds"):
        stall_timeout_from(value)


def test_stall_timeout_default_and_environment(monkeypatch):
    monkeypatch.delenv("TRACKED_CKPT_STALL_TIMEOUT", raising=False)
    assert stall_timeout_from(None) == 30.0
    monkeypatch.setenv("TRACKED_CKPT_STALL_TIMEOUT", "12")
    assert stall_timeout_from(None) == 12.0
    assert stall_timeout_from(5) == 5.0
