"""The job lease on its own, against MLflow's embedded sqlite store: claim, heartbeat, a second holder, release."""

from __future__ import annotations

import logging
import time

import pytest

from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.lease import JobLease, Lease
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.resume import JobLockedError
from tracked_ckpt.settings import LEASE_SECONDS as LEASE_ENV

KEY = "lease-job"
WINDOW = 2.0  # seconds: the heartbeat writes every WINDOW / 4


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setenv(LEASE_ENV, str(WINDOW))


@pytest.fixture
def run(embedded_store):
    """A tracker with a run started on the embedded store: (tracker, its destination)."""
    tracker = MlflowTracker()
    destination = tracker.start()
    yield tracker, destination
    tracker.finish()


def lease_on(tracker: MlflowTracker) -> JobLease:
    return JobLease(KEY, {"mlflow": tracker}, {"mlflow": tracker})


def checkpoint(epoch: int) -> CheckpointRecord:
    return CheckpointRecord.from_metadata(
        {"epoch": epoch, "step": 5 * epoch, "sha256": "ab" * 32, "monitor": "loss", "mode": "min", "value": 0.5},
        name=f"k-e{epoch:04d}",
    )


def stored(tracker: MlflowTracker, destination) -> Lease | None:
    """The lease as a starting job reads it off the run."""
    return Lease.from_json(tracker.job_info(destination).get("lease"))


def eventually(condition, what: str, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def test_a_claim_tags_the_run_with_the_key_and_takes_the_lease(run):
    tracker, destination = run
    lease = lease_on(tracker)
    assert tracker.find_job(KEY) is None
    lease.claim({"mlflow": destination})
    assert tracker.find_job(KEY)["run_id"] == destination["run_id"]
    assert tracker.job_info(destination)["key"] == KEY
    held = stored(tracker, destination)
    assert held.holder == lease.holder and not held.released and held.latest is None


def test_the_heartbeat_renews_the_lease_names_the_newest_checkpoint_and_release_frees_the_key(run):
    tracker, destination = run
    lease = lease_on(tracker)
    lease.claim({"mlflow": destination})
    claimed = stored(tracker, destination)
    lease.start_heartbeat({"mlflow": destination})
    try:
        eventually(lambda: stored(tracker, destination).beat > claimed.beat, "a renewed lease")
        lease.note_logged(checkpoint(3))
        named = eventually(lambda: stored(tracker, destination).latest, "the lease to name the checkpoint")
        assert named == {"name": "k-e0003", "epoch": 3, "step": 15}
        lease.note_logged(checkpoint(2))  # an older checkpoint never replaces the newest
        assert lease.latest == named
    finally:
        lease.release()
    released = stored(tracker, destination)
    assert released.released and released.holder == lease.holder and released.latest == named
    lease.release()  # a second release changes nothing
    assert stored(tracker, destination) == released


def test_a_second_job_with_the_key_is_refused_while_the_holder_beats(run):
    tracker, destination = run
    holder = lease_on(tracker)
    holder.claim({"mlflow": destination})
    holder.start_heartbeat({"mlflow": destination})
    try:
        second = lease_on(MlflowTracker())
        assert second.holder != holder.holder
        with pytest.raises(JobLockedError) as refused:
            second.wait_for_holder("mlflow", destination)  # waits to see the holder's lease refreshed
        message = str(refused.value)
        assert message.startswith(f"Job {KEY!r} is already running as {holder.holder} (run ")
        assert destination["run_id"] in message and "\n" not in message
    finally:
        holder.release()
    assert stored(tracker, destination).holder == holder.holder  # the refused job wrote nothing


def test_a_released_key_is_taken_over_and_its_last_checkpoint_is_known(run):
    tracker, destination = run
    first = lease_on(tracker)
    first.claim({"mlflow": destination})
    first.start_heartbeat({"mlflow": destination})
    first.note_logged(checkpoint(4))
    first.release()
    second = lease_on(MlflowTracker())
    second.wait_for_holder("mlflow", destination)
    assert second.previous["mlflow"].released
    assert second.previous["mlflow"].latest == {"name": "k-e0004", "epoch": 4, "step": 20}
    second.claim({"mlflow": destination})
    assert stored(tracker, destination).holder == second.holder


@pytest.mark.parametrize("silent_for", [WINDOW * 5, 0.0])
def test_a_holder_that_stopped_beating_is_taken_over(run, caplog, silent_for):
    tracker, destination = run
    killed = Lease("node-a:41:abc", time.time() - silent_for)  # a holder killed before it could release
    tracker.set_job_info(destination, {"key": KEY, "lease": killed.to_json()})
    second = lease_on(tracker)
    with caplog.at_level(logging.INFO, logger="tracked_ckpt"):
        second.wait_for_holder("mlflow", destination)
    said = "went silent" if silent_for else "stopped refreshing its lease"
    assert f"Job {KEY!r}: its earlier holder node-a:41:abc {said}" in caplog.text
    assert second.previous["mlflow"] == killed
    # Waiting is said, with how long, where a user sees it (a warning shows without logging set up).
    waits = [r for r in caplog.records if "waiting up to" in r.getMessage()]
    if silent_for:
        assert waits == []  # long silent: taken over at once
    else:
        (wait,) = waits
        assert wait.levelno == logging.WARNING and f"waiting up to {WINDOW:.0f}s" in wait.getMessage()


def test_two_first_starts_keep_the_earliest_run_and_the_other_stops(embedded_store):
    first_tracker, second_tracker = MlflowTracker(), MlflowTracker()
    first_run = first_tracker.start()
    started = first_tracker.client(first_run["tracking_uri"]).get_run(first_run["run_id"]).info.start_time
    eventually(lambda: time.time() * 1000 > started + 1, "a later millisecond")  # the runs' order is their start
    second_run = second_tracker.start()  # a second run, created later, for the same key
    first = lease_on(first_tracker)
    first.claim({"mlflow": first_run})
    second = lease_on(second_tracker)
    with pytest.raises(JobLockedError) as refused:
        second.claim({"mlflow": second_run})
    assert str(refused.value).startswith(f"Job {KEY!r} started twice at once: it runs in run {first_run['run_id']};")
    assert second_tracker.client(second_run["tracking_uri"]).get_run(second_run["run_id"]).info.status == "FAILED"
    assert first_tracker.find_job(KEY)["run_id"] == first_run["run_id"]
    first_tracker.finish()
