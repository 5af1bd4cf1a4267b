"""The spool and publisher on their own: freezing, claiming, parking, ordering."""

from __future__ import annotations

import os

from tracked_ckpt.publisher import Publisher
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.spool import Spool, SpoolEntry, release_path
from tracked_ckpt.tracker import Tracker


def entry_for(spool: Spool, path: str, epoch: int) -> SpoolEntry:
    record = CheckpointRecord(name=f"m-e{epoch:04d}", epoch=epoch, step=epoch, monitor="loss", mode="min",
                              is_best=False, sha256="", size_bytes=os.path.getsize(path), format="keras",
                              filepath=path, keras_version="3", backend="tensorflow")
    entry = SpoolEntry(id=spool.new_id(), record=record, staged_path=spool.stage(path), destinations={"t": {}})
    spool.add(entry)
    return entry


class Recorder(Tracker):
    name = display_name = "t"

    def start(self, run_name=None, resume=None):
        return {}

    def __init__(self, fail_with=None, failures=None):
        self.fail_with, self.logged, self.attempts = fail_with, [], []
        self.failures = failures  # None: epoch 1 always fails; N: it fails N times, then works

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        self.attempts.append(record.epoch)
        if self.fail_with is not None and record.epoch == 1:
            if self.failures is None or self.attempts.count(1) <= self.failures:
                raise self.fail_with
        with open(path, "rb") as f:
            self.logged.append((record.epoch, f.read()))
        return f"id-{record.epoch}"

    def is_permanent(self, exc):
        return isinstance(exc, ValueError)


def test_a_rewritten_file_does_not_change_what_was_staged(tmp_path):
    spool = Spool(tmp_path / "spool")
    path = str(tmp_path / "ckpt.keras")
    with open(path, "wb") as f:
        f.write(b"epoch one")
    link = str(tmp_path / "via-link.keras")
    os.symlink(path, link)  # written through a symlink, as some users lay out checkpoints
    staged = spool.stage(link)
    release_path(link)
    with open(link, "wb") as f:  # what Keras does next epoch: truncate and write in place
        f.write(b"epoch two")
    with open(staged, "rb") as f:
        assert f.read() == b"epoch one"
    with open(path, "rb") as f:
        assert f.read() == b"epoch two"


def test_an_entry_is_claimed_by_one_publisher_at_a_time(tmp_path):
    spool = Spool(tmp_path / "spool")
    (tmp_path / "c.keras").write_bytes(b"x")
    entry = entry_for(spool, str(tmp_path / "c.keras"), 1)
    with spool.claim(entry) as first:
        with spool.claim(entry) as second:
            assert first and not second
    with spool.claim(entry) as again:
        assert again


def test_permanent_failures_are_parked_and_the_rest_goes_on(tmp_path):
    spool = Spool(tmp_path / "spool")
    for epoch in (1, 2):
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    entries = [entry_for(spool, str(tmp_path / f"{e}.keras"), e) for e in (1, 2)]
    tracker = Recorder(fail_with=ValueError("run was deleted"))
    publisher = Publisher({"t": tracker}, spool, asynchronous=False)
    for entry in entries:
        publisher.submit(entry)
    report = publisher.close(timeout=5)
    assert [e for e, _ in tracker.logged] == [2]
    assert [e.record.epoch for e, _ in report.failed] == [1] and not report.ok
    assert [e.record.epoch for e in spool.entries()] == []  # parked, not pending
    assert spool.unpark_all() == 1
    retry = Publisher({"t": Recorder()}, spool, asynchronous=False)
    for entry in spool.entries():
        retry.submit(entry)
    assert retry.close(timeout=5).ok


def test_transient_failures_keep_order_and_are_retried(tmp_path):
    spool = Spool(tmp_path / "spool")
    for epoch in (1, 2):
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    tracker = Recorder(fail_with=ConnectionError("down"))
    publisher = Publisher({"t": tracker}, spool, asynchronous=True, initial_backoff=0.01)
    for epoch in (1, 2):
        publisher.submit(entry_for(spool, str(tmp_path / f"{epoch}.keras"), epoch))
    report = publisher.close(timeout=0.5)
    assert tracker.logged == []  # epoch 2 waits behind epoch 1, in order
    assert 3 <= len(tracker.attempts) < 20  # retried, with backoff after close() too: no busy loop
    assert set(tracker.attempts) == {1}
    assert [e.record.epoch for e in report.pending] == [1, 2]
    assert len(list(spool.entries())) == 2  # nothing lost


def test_a_transient_failure_is_retried_until_it_logs(tmp_path):
    spool = Spool(tmp_path / "spool")
    for epoch in (1, 2):
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    tracker = Recorder(fail_with=ConnectionError("down"), failures=3)
    publisher = Publisher({"t": tracker}, spool, asynchronous=True, initial_backoff=0.01)
    for epoch in (1, 2):
        publisher.submit(entry_for(spool, str(tmp_path / f"{epoch}.keras"), epoch))
    report = publisher.close(timeout=30)
    assert report.ok and tracker.attempts == [1, 1, 1, 1, 2]
    assert tracker.logged == [(1, b"bytes 1"), (2, b"bytes 2")]
    assert [ref for _, _, ref in report.logged] == ["id-1", "id-2"]
    assert list(spool.entries()) == []
