"""The spool and publisher on their own: freezing, claiming, parking, ordering."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from support.fake_tracker import FakeTracker, entry_for
from support.io_counters import bytes_read

from tracked_ckpt import publisher as publisher_module
from tracked_ckpt.blobstore import LocalFolderStore
from tracked_ckpt.files import clone_file, link_or_copy, sha256_file
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.pack_writer import store_file
from tracked_ckpt.packs import Manifest
from tracked_ckpt.publisher import Publisher
from tracked_ckpt.record import STORAGE_INCREMENTAL
from tracked_ckpt.settings import DEFAULT_UPLOAD_NICENESS
from tracked_ckpt.settings import UPLOAD_NICENESS as UPLOAD_NICENESS_ENV
from tracked_ckpt.spool import Spool, release_path


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
    with spool.claim(entry) as first, spool.claim(entry) as second:
        assert first and not second
    with spool.claim(entry) as again:
        assert again


def test_permanent_failures_are_parked_and_the_rest_goes_on(tmp_path):
    spool = Spool(tmp_path / "spool")
    for epoch in (1, 2):
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    entries = [entry_for(spool, str(tmp_path / f"{e}.keras"), e) for e in (1, 2)]
    tracker = FakeTracker(fail_with=ValueError("run was deleted"))
    publisher = Publisher({"t": tracker}, spool, asynchronous=False)
    for entry in entries:
        publisher.submit(entry)
    report = publisher.close(timeout=5)
    assert [e for e, _ in tracker.logged] == [2]
    assert [e.record.epoch for e, _ in report.failed] == [1] and not report.ok
    assert [e.record.epoch for e in spool.entries()] == []  # parked, not pending
    assert spool.unpark_all() == 1
    retry = Publisher({"t": FakeTracker()}, spool, asynchronous=False)
    for entry in spool.entries():
        retry.submit(entry)
    assert retry.close(timeout=5).ok


def test_transient_failures_keep_order_and_are_retried(tmp_path):
    spool = Spool(tmp_path / "spool")
    for epoch in (1, 2):
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    tracker = FakeTracker(fail_with=ConnectionError("down"))
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
    tracker = FakeTracker(fail_with=ConnectionError("down"), failures=3)
    publisher = Publisher({"t": tracker}, spool, asynchronous=True, initial_backoff=0.01)
    for epoch in (1, 2):
        publisher.submit(entry_for(spool, str(tmp_path / f"{epoch}.keras"), epoch))
    report = publisher.close(timeout=30)
    assert report.ok and tracker.attempts == [1, 1, 1, 1, 2]
    assert tracker.logged == [(1, b"bytes 1"), (2, b"bytes 2")]
    assert [ref for _, _, ref in report.logged] == ["id-1", "id-2"]
    assert list(spool.entries()) == []


def _nice_of(tid: int) -> int:
    with open(f"/proc/self/task/{tid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[16])  # field 19 of stat(5): nice


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")
@pytest.mark.parametrize("setting", [None, "0"])
def test_the_upload_thread_yields_to_training_until_fit_waits(tmp_path, monkeypatch, setting):
    if setting is None:
        monkeypatch.delenv(UPLOAD_NICENESS_ENV, raising=False)
    else:
        monkeypatch.setenv(UPLOAD_NICENESS_ENV, setting)
    spool = Spool(tmp_path / "spool")
    for epoch in (1, 2):
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    tracker = FakeTracker(hold=True)
    publisher = Publisher({"t": tracker}, spool, asynchronous=True)
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    publisher.submit(entry_for(spool, str(tmp_path / "1.keras"), 1))
    assert tracker.entered.wait(10)
    ((_, worker, nice_inside),) = tracker.seen
    lowered = min(19, base + DEFAULT_UPLOAD_NICENESS) if setting is None else base
    assert worker != threading.get_native_id()
    assert _nice_of(worker) == nice_inside == lowered  # the kernel's view agrees with the thread's
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base  # training keeps its own
    publisher.submit(entry_for(spool, str(tmp_path / "2.keras"), 2))
    closer = threading.Thread(target=publisher.close, kwargs={"timeout": 20})
    closer.start()
    while not publisher._closing:  # close() has begun to wait for the uploads
        closer.join(0.01)
    tracker.release.set()
    closer.join(20)
    assert publisher.report.ok and [e for e, _ in tracker.logged] == [1, 2]
    if os.geteuid() == 0:  # lowering a nice value again needs privilege; otherwise it stays low
        assert tracker.seen[1][2] == base  # while fit waits, uploads run at normal priority


def _other_filesystem(tmp_path) -> str:
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) here")
    return tempfile.mkdtemp(prefix="tracked-ckpt-spool-", dir="/dev/shm")


def test_a_copied_snapshot_is_hashed_as_it_is_copied_and_not_read_again(tmp_path, monkeypatch):
    folder = _other_filesystem(tmp_path)
    try:
        spool = Spool(folder)
        path = tmp_path / "ckpt.keras"
        data = os.urandom(3 * (1 << 20) + 17)  # several chunks and a short last one
        path.write_bytes(data)
        entry = entry_for(spool, str(path), 1)
        assert os.stat(entry.staged_path).st_ino != os.stat(path).st_ino  # a copy, not a link
        assert entry.record.sha256 == hashlib.sha256(data).hexdigest() and entry.record.size_bytes == len(data)
        on_disk = next(spool.entries())
        assert on_disk.record.sha256 == entry.record.sha256  # in the manifest: a sync elsewhere trusts it too
        path.write_bytes(b"rewritten in place")  # Keras's next save, into the same inode (no link to protect)

        def no_second_read(p):
            raise AssertionError("the publisher hashed a file whose hash the copy already gave")

        monkeypatch.setattr(publisher_module, "sha256_file", no_second_read)
        tracker = FakeTracker()
        publisher = Publisher({"t": tracker}, spool, asynchronous=False)
        publisher.submit(entry)
        assert publisher.close(timeout=5).ok and tracker.logged == [(1, data)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_linked_snapshot_is_hashed_by_the_publisher(tmp_path):
    spool = Spool(tmp_path / "spool")
    path = tmp_path / "ckpt.keras"
    path.write_bytes(b"epoch one")
    entry = entry_for(spool, str(path), 1)
    assert os.stat(entry.staged_path).st_ino == os.stat(path).st_ino and entry.record.sha256 == ""
    release_path(str(path))
    path.write_bytes(b"epoch two")
    tracker = FakeTracker()
    publisher = Publisher({"t": tracker}, spool, asynchronous=False)
    publisher.submit(entry)
    assert publisher.close(timeout=5).ok and tracker.logged == [(1, b"epoch one")]
    assert entry.record.sha256 == hashlib.sha256(b"epoch one").hexdigest()


class _ChunkStoreTracker(FakeTracker):
    """Logs into a chunk store on a folder, as the MLflow and W&B trackers do for incremental records."""

    stores_incremental = True

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.store, self.cache = LocalFolderStore(root / "store"), PackCache(root / "cache")
        self.manifests: list[Manifest] = []

    def log_checkpoint(self, record, path, destination, *, first_attempt=False):
        stored = store_file(path, self.store, self.cache, expected_sha256=record.sha256, label=record.name)
        self.manifests.append(stored.manifest)
        return f"id-{record.epoch}"


def test_an_incremental_checkpoint_is_read_once_for_its_sha256_and_its_chunks(tmp_path):
    """The publisher's pass gives the record its sha256 and the chunk store its chunks: no second read."""
    pytest.importorskip("pyfastcdc")
    spool, tracker = Spool(tmp_path / "spool"), _ChunkStoreTracker(tmp_path)
    publisher = Publisher({"t": tracker}, spool, asynchronous=False)
    data = os.urandom(8 << 20)
    versions = [data, data[: 4 << 20] + os.urandom(4096) + data[(4 << 20) + 4096 :]]  # a frozen base, a new head
    read = []
    for epoch, content in enumerate(versions, start=1):
        path = tmp_path / "ckpt.keras"
        path.write_bytes(content)
        entry = entry_for(spool, str(path), epoch)
        release_path(str(path))  # as the callback does: the next save gets a new inode
        entry.record = dataclasses.replace(entry.record, storage=STORAGE_INCREMENTAL)
        spool.write(entry)
        before = bytes_read()
        publisher.submit(entry)
        read.append(bytes_read() - before)

    assert publisher.close(timeout=5).ok
    assert [m.sha256 for m in tracker.manifests] == [hashlib.sha256(v).hexdigest() for v in versions]
    # The second version: one pass (sha256 and chunks), then only its few new chunks (before: two passes).
    assert read[1] < 1.25 * len(data)


@pytest.mark.parametrize("size", [0, 17, 1 << 20, 3 * (1 << 20) + 17])
def test_sha256_file_is_the_standard_digest_and_size(tmp_path, size):
    """The tests' file hash (helpers.sha256) is this function: pinned here to hashlib, chunk edges included."""
    path = tmp_path / "data.bin"
    data = os.urandom(size)
    path.write_bytes(data)
    assert sha256_file(str(path)) == (hashlib.sha256(data).hexdigest(), size)


def test_a_clone_that_the_filesystem_refuses_leaves_nothing_behind(tmp_path):
    src, dst = tmp_path / "a.keras", tmp_path / "b.keras"
    src.write_bytes(b"bytes")
    if clone_file(str(src), str(dst)):  # btrfs, XFS: a real clone, independent of later writes
        src.write_bytes(b"other")
        assert dst.read_bytes() == b"bytes"
    else:  # ext4, tmpfs: refused, and no empty file left for a copy to trip over
        assert not dst.exists()
    link_or_copy(str(src), str(tmp_path / "c.keras"))
    assert (tmp_path / "c.keras").read_bytes() == src.read_bytes()


def test_a_fit_ending_in_the_background_never_removes_the_folder_a_new_fit_just_made(tmp_path):
    """One process: an ending fit removes the emptied spool folder while a new fit probes and holds it."""
    spool = Spool(tmp_path / "ckpt" / ".tracked_ckpt" / "spool")
    errors: list[BaseException] = []
    starts = 300
    started = threading.Event()

    def new_fits() -> None:
        try:
            for _ in range(starts):
                spool.check_writable()  # the callback's write check at on_train_begin
                hold = spool.hold()  # the session's hold, moments later
                assert os.path.isdir(spool.directory)
                hold.release()
                started.set()
        except BaseException as exc:
            errors.append(exc)

    fits = threading.Thread(target=new_fits)
    fits.start()
    started.wait(timeout=60)
    while fits.is_alive():
        spool.remove_if_empty()  # the previous fit's end, on its own thread
    fits.join()
    assert errors == []
