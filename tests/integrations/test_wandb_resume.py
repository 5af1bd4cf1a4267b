"""resume="<job key>" on W&B: the offline run for real, the server side against the fake."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from support.helpers import StopAfterEpoch
from support.wandb_fake import FakeServer
from support.wandb_records import run_dirs, run_summary
from test_wandb import ScriptedValLoss, tiny_model

from tracked_ckpt import TrackedModelCheckpoint, download_checkpoint
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.integrations.wandb_schema import job_run_id
from tracked_ckpt.resume import JobLockedError, JobResume, Lease
from tracked_ckpt.tracker import TrackerError

KEY = "digits job/7"


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setenv("TRACKED_CKPT_LEASE_SECONDS", "2")


def fit(epochs: int, interrupt_after: int | None = None):
    model = tiny_model()
    x, y = np.random.default_rng(0).random((64, 4)), np.random.default_rng(1).random((64, 1))
    callback = TrackedModelCheckpoint("ckpt/m-{epoch}.keras", tracker="wandb", log_git=False, resume=KEY, upload="sync")
    try:
        history = model.fit(
            x,
            y,
            validation_split=0.25,
            batch_size=16,
            epochs=epochs,
            shuffle=False,
            verbose=0,
            callbacks=[ScriptedValLoss(), callback, StopAfterEpoch(interrupt_after)],
        )
    except KeyboardInterrupt:
        callback.session.end(completed=False)  # what the interpreter's exit does after the interrupt
        history = None
    return callback, history, model


def test_job_key_names_the_run_and_a_restart_continues_it(wandb_env):
    first, _, _ = fit(epochs=3, interrupt_after=2)
    run_id = first.session.destinations["wandb"]["run_id"]
    assert run_id == job_run_id(KEY) and run_id.startswith("digits-job-7-")
    (run_dir,) = run_dirs(str(wandb_env / "wandb_dir"))
    summary = run_summary(run_dir)
    assert summary["tracked_ckpt_job_key"] == KEY
    lease = Lease.from_json(summary["tracked_ckpt_job_lease"])
    assert lease.released and lease.latest["epoch"] == 2

    # The server side, as W&B holds the run after `wandb sync`: find it, pull its latest version.
    server = FakeServer(entity="team", project="tracked-ckpt-test")
    server.sync(run_dir)  # the artifacts and the summary
    online = WandbTracker(entity="team", project="tracked-ckpt-test", mode="online", api=server.api())
    destination = online.find_job(KEY)
    assert destination["run_id"] == run_id
    assert online.job_info(destination) == {"key": KEY, "lease": summary["tracked_ckpt_job_lease"]}
    checkpoints = online.job_checkpoints(destination, "tiny")
    assert [c.record.epoch for c in checkpoints] == [1, 2]
    path = download_checkpoint(checkpoint=checkpoints[-1], tracker=online)  # sha256-verified
    with open(path, "rb") as pulled, open(wandb_env / "ckpt" / "m-2.keras", "rb") as written:
        assert pulled.read() == written.read()
    unknown = online.find_job("never started")
    assert online.job_info(unknown) == {} and online.job_checkpoints(unknown, "tiny") == []
    # A network failure is not "no such run": answering {} / [] would make a restart start over.
    server.unreachable = True
    with pytest.raises(TrackerError, match="Try again"):
        online.job_info(destination)
    with pytest.raises(TrackerError, match="Try again"):
        online.job_checkpoints(destination, "tiny")
    server.unreachable = False

    # Offline, the restart on the same disk resumes from its local state into the same run id.
    again, history, _ = fit(epochs=3)
    assert history.epoch == [2]
    assert again.session.destinations["wandb"]["run_id"] == run_id
    assert again.last_report.ok


class Started(Exception):
    """Raised by the test's `start`: the job got past the lease check and would start its run."""


def refuse_to_start(previous):
    raise Started(previous)


def test_the_lease_on_the_server_tells_a_live_holder_from_a_killed_one(wandb_env):
    server = FakeServer(entity="team", project="tracked-ckpt-test")
    run_id = job_run_id(KEY)
    server.runs.add(("team", "tracked-ckpt-test", run_id))
    online = WandbTracker(entity="team", project="tracked-ckpt-test", mode="online", api=server.api())

    def lease(beat: float) -> None:
        server.summaries[("team", "tracked-ckpt-test", run_id)] = {
            "tracked_ckpt_job_key": KEY,
            "tracked_ckpt_job_lease": Lease("node-a:41:abc", beat).to_json(),
        }

    # Killed a moment ago: its lease is fresh but never refreshed again, so the restart takes over.
    lease(time.time())
    with pytest.raises(Started) as started:
        JobResume(KEY, {"wandb": online}).begin(None, refuse_to_start, "tiny")
    assert started.value.args[0]["wandb"]["run_id"] == run_id

    # Alive: it refreshes its lease while the second job watches, so the second job refuses.
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(0.2):
            lease(time.time())

    lease(time.time())
    beating = threading.Thread(target=heartbeat)
    beating.start()
    try:
        with pytest.raises(JobLockedError, match=r"^Job 'digits job/7' is already running as node-a:41:abc \(run "):
            JobResume(KEY, {"wandb": online}).begin(None, refuse_to_start, "tiny")
    finally:
        stop.set()
        beating.join()
