"""The end-of-fit wait follows progress; a first attempt is known as such, across processes."""

from __future__ import annotations

import json
import os
import threading

import mlflow
import pytest
from helpers import save_trained_model, sha256
from test_spool import entry_for

from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.publisher import Publisher, stall_timeout_from
from tracked_ckpt.spool import Spool
from tracked_ckpt.tracker import Tracker


class Blocking(Tracker):
    """A tracker whose call waits for `release`; `is_reachable` answers `reachable`."""

    name = display_name = "t"

    def __init__(self, reachable: bool):
        self.reachable = reachable
        self.release = threading.Event()
        self.entered = threading.Event()
        self.probes = 0
        self.first_attempts: list[bool] = []

    def start(self, resume=None):
        return {}

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        self.first_attempts.append(first_attempt)
        self.entered.set()
        self.release.wait(60)
        return f"id-{record.epoch}"

    def is_reachable(self, destination):
        self.probes += 1
        if self.probes >= 3:
            self.release.set()  # a slow upload that ends after several stall windows
        return self.reachable


def spooled(tmp_path, epochs=(1,)):
    spool = Spool(tmp_path / "spool")
    for epoch in epochs:
        (tmp_path / f"{epoch}.keras").write_bytes(f"bytes {epoch}".encode())
    return spool, [entry_for(spool, str(tmp_path / f"{e}.keras"), e) for e in epochs]


def test_a_call_to_a_tracker_that_answers_is_waited_for(tmp_path):
    spool, entries = spooled(tmp_path)
    tracker = Blocking(reachable=True)
    publisher = Publisher({"t": tracker}, spool, stall_timeout=0.2)
    publisher.submit(entries[0])
    assert tracker.entered.wait(30)
    report = publisher.close(timeout=60)
    assert report.ok and not report.stalled
    assert tracker.probes >= 3  # it outlived three stall windows
    assert tracker.first_attempts == [True]


def test_a_call_to_a_tracker_that_does_not_answer_is_a_stall(tmp_path):
    spool, entries = spooled(tmp_path, epochs=(1, 2))
    tracker = Blocking(reachable=False)
    publisher = Publisher({"t": tracker}, spool, stall_timeout=0.2)
    for entry in entries:
        publisher.submit(entry)
    assert tracker.entered.wait(30)
    report = publisher.close(timeout=60)
    tracker.release.set()
    assert report.stalled and [e.record.epoch for e in report.pending] == [1, 2]
    assert tracker.probes == 1
    assert len(list(spool.entries())) == 2


class Failing(Tracker):
    name = display_name = "t"

    def __init__(self):
        self.calls = 0

    def start(self, resume=None):
        return {}

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        self.calls += 1
        raise ConnectionError("down")


def test_failed_attempts_are_a_stall_and_the_spool_counts_them(tmp_path):
    spool, entries = spooled(tmp_path)
    tracker = Failing()
    publisher = Publisher({"t": tracker}, spool, stall_timeout=0.3, initial_backoff=0.01, max_backoff=0.05)
    publisher.submit(entries[0])
    report = publisher.close(timeout=60)
    assert report.stalled and len(report.pending) == 1
    (left,) = spool.entries()
    assert left.attempts == tracker.calls >= 1  # written before each call: any later one is a retry


def test_an_entry_logged_by_another_process_meanwhile_is_not_logged_again(tmp_path):
    spool, entries = spooled(tmp_path)
    stale = entries[0]
    spool.remove(stale)  # e.g. a `tracked-ckpt sync` finished it after this publisher queued it
    tracker = Blocking(reachable=True)
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


class CrashesAfterCreating(MlflowTracker):
    """A first attempt that dies right after the model exists (files, metrics, outputs not logged)."""

    def __init__(self):
        super().__init__()
        self.crash = True

    def _build_artifacts(self, *args, **kwargs):
        if self.crash:
            self.crash = False
            raise ConnectionError("killed mid-upload")
        return super()._build_artifacts(*args, **kwargs)


def test_a_first_attempt_that_died_midway_is_completed_by_the_retry(store, workdir):
    _, x = save_trained_model("ckpt.keras")
    tracker = CrashesAfterCreating()
    destination = tracker.start()
    spool = Spool(workdir / "spool")
    entry = entry_for(spool, str(workdir / "ckpt.keras"), 1)
    entry.destinations = {"mlflow": destination}
    spool.write(entry)
    publisher = Publisher({"mlflow": tracker}, spool, asynchronous=False, initial_backoff=0.01)
    publisher.submit(entry)  # the first attempt: no look-up, and it leaves a PENDING model behind
    assert entry.attempts == 1 and not entry.done
    report = publisher.close(timeout=60)  # the retry finds that model and completes it
    tracker.finish()
    assert report.ok
    client = mlflow.MlflowClient()
    models = client.search_logged_models(
        [destination["experiment_id"]], filter_string=f"source_run_id = '{destination['run_id']}'"
    )
    assert [m.model_id for m in models] == [report.logged[0][2]]
    assert str(models[0].status) == "READY"
    loaded = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}")
    assert loaded.predict(x).shape == (len(x), 1)
    assert models[0].tags["tracked_ckpt.sha256"] == sha256(workdir / "ckpt.keras")
