"""resume="<job key>": a preempted job restarts in an empty folder and continues from the tracker."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import InjectMetric, StopAfterEpoch, child, make_data, make_model
from support.mlflow_runs import logged_models

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.resume import JobLockedError
from tracked_ckpt.settings import LEASE_SECONDS as LEASE_ENV

EPOCHS = 6
STEPS_PER_EPOCH = 5  # 40 samples, batch 8
LEASE = 2.0  # seconds: a killed holder is recognised as gone after this long


@pytest.fixture(autouse=True)
def short_lease(monkeypatch):
    monkeypatch.setenv(LEASE_ENV, str(LEASE))


def start_job(folder, key, *, die_after=-1, epochs=EPOCHS) -> subprocess.Popen:
    """The training script in its own working folder: killed after `die_after` epochs, or held in epoch 1."""
    os.makedirs(folder, exist_ok=True)
    return subprocess.Popen(
        child("keyed_job", key, die_after, epochs),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def uninterrupted_weights() -> list[np.ndarray]:
    model = make_model()
    x, y = make_data()
    model.fit(x, y, epochs=EPOCHS, batch_size=8, shuffle=False, verbose=0)
    return model.get_weights()


def resume_here(
    folder, key, monkeypatch, **kwargs
) -> tuple[TrackedModelCheckpoint, keras.callbacks.History, keras.Model]:
    """Start the same job again in `folder` (a new machine's empty disk), in this process."""
    os.makedirs(folder, exist_ok=True)
    monkeypatch.chdir(folder)
    model = make_model()
    x, y = make_data()
    callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", monitor="loss", resume=key, wait_timeout=120, **kwargs)
    history = model.fit(x, y, epochs=EPOCHS, batch_size=8, shuffle=False, verbose=0, callbacks=[callback])
    return callback, history, model


def the_run(key: str):
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default")
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert [r.data.tags.get("tracked_ckpt.job_key") for r in runs] == [key]
    return runs[0]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["server", "moved-embedded-store"])
def test_a_killed_job_finishes_in_a_new_folder_from_the_tracker(where, request, workdir, tmp_path_factory, monkeypatch):
    request.getfixturevalue("server_store" if where == "server" else "embedded_store")
    first = workdir / "node-a"
    job = start_job(first, "digits-job", die_after=2)
    out, _ = job.communicate(timeout=300)
    assert job.returncode == -signal.SIGKILL, out[-3000:]
    killed_run = the_run("digits-job")
    assert killed_run.info.status == "RUNNING"  # a killed job leaves its run looking alive

    second = tmp_path_factory.mktemp("node-b")
    if where == "moved-embedded-store":
        # The whole embedded store moves (a copied mlflow.db + mlruns/); the first folder is gone.
        shutil.copyfile(workdir / "mlflow.db", second / "mlflow.db")
        shutil.copytree(workdir / "mlruns", second / "mlruns")
        shutil.rmtree(workdir / "mlruns")
        os.remove(workdir / "mlflow.db")
        uri = f"sqlite:///{second}/mlflow.db"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
    shutil.rmtree(first)  # checkpoints, spool and resume state: all gone with the machine

    callback, history, model = resume_here(second, "digits-job", monkeypatch)

    assert callback.last_report.ok, callback.last_report.errors
    assert history.epoch == [3, 4, 5]  # epochs 4-6
    run = the_run("digits-job")
    assert run.info.run_id == killed_run.info.run_id
    assert run.info.status == "FINISHED"
    models = logged_models(run.info.run_id)
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == [1, 2, 3, 4, 5, 6]  # each logged once
    # The optimizer's iteration count continued from the downloaded checkpoint.
    assert [int(m.tags["tracked_ckpt.step"]) for m in models] == [STEPS_PER_EPOCH * e for e in range(1, 7)]
    assert int(model.optimizer.iterations.numpy()) == STEPS_PER_EPOCH * EPOCHS
    expected = uninterrupted_weights()
    for got, want in zip(model.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The logged epoch-6 checkpoint is that model, and is_best continued from the first job's values.
    last = tracked_ckpt.list_checkpoints(run_id=run.info.run_id, where={"epoch": 6})[0]
    for got, want in zip(tracked_ckpt.load_model(checkpoint=last).get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert [m.tags["tracked_ckpt.is_best"] for m in models] == ["true"] * 6  # the loss falls every epoch
    assert not os.path.exists(second / "ckpt" / ".tracked_ckpt")  # completed: no local state left


def test_a_completed_job_says_so_and_trains_nothing(server_store, workdir, monkeypatch, caplog):
    _callback, history, _ = resume_here(workdir / "node-a", "done-job", monkeypatch)
    assert history.epoch == list(range(EPOCHS))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        _callback, history, _ = resume_here(workdir / "node-b", "done-job", monkeypatch)
    assert history.epoch == []
    out = caplog.text  # a warning with verbose=0: a resume is never silent
    run = the_run("done-job")
    assert f"tracked-ckpt: job 'done-job' already completed (tiny-e{EPOCHS:04d}, epoch {EPOCHS}, in run " in out
    assert run.info.run_id in out and "another job key" in out


def test_a_second_live_job_with_the_same_key_is_refused(server_store, workdir, monkeypatch):
    holder = start_job(workdir / "node-a", "busy-job", epochs=2)
    try:
        while not os.path.exists(workdir / "node-a" / "training"):  # the holder claimed the key
            assert holder.poll() is None, holder.stdout.read()[-3000:]
            time.sleep(0.1)
        with pytest.raises(JobLockedError) as refused:
            resume_here(workdir / "node-b", "busy-job", monkeypatch)
        message = str(refused.value)
        assert "\n" not in message and "busy-job" in message
        assert f":{holder.pid}:" in message  # names the running job (host:pid:...)
        run = the_run("busy-job")
        assert run.info.run_id in message
        assert logged_models(run.info.run_id) == []  # the refused job logged nothing
    finally:
        (workdir / "node-a" / "stop").touch()
        out, _ = holder.communicate(timeout=300)
    assert holder.returncode == 0, out[-3000:]
    # The holder finished and released the key: a new start needs no wait and has nothing left to train.
    _callback, history, _ = resume_here(workdir / "node-c", "busy-job", monkeypatch)
    assert history.epoch == list(range(2, EPOCHS))
    assert the_run("busy-job").info.status == "FINISHED"


def test_a_key_whose_latest_checkpoint_was_deleted_resumes_from_the_newest_survivor(
    embedded_store, workdir, monkeypatch, caplog
):
    scores = [0.1, 0.5, 0.4, 0.3, 0.2, 0.35]
    model = make_model()
    x, y = make_data()
    first = TrackedModelCheckpoint(
        "ckpt/k-{epoch}.keras", monitor="score", mode="min", resume="ranked", keep_top_k=1, upload="sync"
    )
    model.fit(x, y, epochs=3, batch_size=8, shuffle=False, verbose=0, callbacks=[InjectMetric("score", scores), first])
    run = the_run("ranked")
    models = logged_models(run.info.run_id)
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == [1, 3]  # the best and the latest
    # The latest goes the way keep_top_k deletes: through the tracker.
    assert MlflowTracker().delete_checkpoint(models[-1].model_id, first.session.destinations["mlflow"])
    shutil.rmtree(workdir / "ckpt")

    monkeypatch.chdir(workdir)
    model = make_model()
    callback = TrackedModelCheckpoint(
        "ckpt/k-{epoch}.keras", monitor="score", mode="min", resume="ranked", keep_top_k=1, upload="sync"
    )
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        history = model.fit(
            x,
            y,
            epochs=EPOCHS,
            batch_size=8,
            shuffle=False,
            verbose=0,
            callbacks=[InjectMetric("score", scores), callback],
        )
    assert history.epoch == [1, 2, 3, 4, 5]  # from epoch 1, the newest survivor
    warned = [r.getMessage() for r in caplog.records if "was deleted" in r.getMessage()]
    assert len(warned) == 1 and "tiny-e0003" in warned[0] and "tiny-e0001" in warned[0]
    # Retention ranked the earlier job's checkpoint too: epoch 1 (0.1) is still the best one kept.
    remaining = logged_models(run.info.run_id)
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in remaining] == [1, 6]
    assert [m.tags["tracked_ckpt.is_best"] for m in remaining] == ["true", "false"]
    assert int(model.optimizer.iterations.numpy()) == STEPS_PER_EPOCH * EPOCHS


def test_a_key_whose_run_has_no_checkpoint_starts_afresh_in_that_run(embedded_store, workdir, monkeypatch):
    client = mlflow.MlflowClient()
    empty = client.create_run("0", tags={"tracked_ckpt.job_key": "fresh"})  # killed before its first save
    _callback, history, _ = resume_here(workdir, "fresh", monkeypatch)
    assert history.epoch == list(range(EPOCHS))
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(empty.info.run_id)] == list(range(1, 7))
    assert client.get_run(empty.info.run_id).info.status == "FINISHED"


def test_weights_only_batch_level_checkpoints_resume_mid_epoch(embedded_store, workdir, monkeypatch):
    class CutOff(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if self.model.optimizer.iterations.numpy() == 2 * STEPS_PER_EPOCH + 3:  # in epoch 3
                raise KeyboardInterrupt("preempted")

    path = "ckpt/w-{epoch}-{batch}.weights.h5"
    x, y = make_data()
    first = TrackedModelCheckpoint(
        path, monitor="loss", save_weights_only=True, save_freq=3, resume="weights-job", upload="sync"
    )
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(x, y, epochs=EPOCHS, batch_size=8, shuffle=False, verbose=0, callbacks=[first, CutOff()])
    first.session.end(completed=False)  # what the interpreter's exit does after the interrupt
    shutil.rmtree(workdir / "ckpt")

    model = make_model()  # weights-only: the model is built in code, as Keras needs
    callback = TrackedModelCheckpoint(
        path, monitor="loss", save_weights_only=True, save_freq=3, resume="weights-job", wait_timeout=120
    )
    history = model.fit(x, y, epochs=EPOCHS, batch_size=8, shuffle=False, verbose=0, callbacks=[callback])
    # The newest save was at step 12, in epoch 3: that epoch runs again from its start.
    assert history.epoch == [2, 3, 4, 5]
    run = the_run("weights-job")
    steps = [int(m.tags["tracked_ckpt.step"]) for m in logged_models(run.info.run_id)]
    assert steps[:4] == [3, 6, 9, 12]
    assert steps == sorted(set(steps))  # the optimizer's iteration count continued from step 12
    assert callback.last_report.ok


def test_local_state_older_than_the_run_is_not_used(embedded_store, workdir, monkeypatch):
    """Machine A -> B -> A: back on A, its own state is older than what B logged; the run wins."""
    x, y = make_data()

    def run_on(folder, preempt_after):
        os.makedirs(folder, exist_ok=True)
        monkeypatch.chdir(folder)
        model = make_model()
        callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", monitor="loss", resume="a-b-a", upload="sync")
        cut = [StopAfterEpoch(preempt_after)] if preempt_after else []
        try:
            history = model.fit(x, y, epochs=EPOCHS, batch_size=8, shuffle=False, verbose=0, callbacks=[callback, *cut])
        except KeyboardInterrupt:
            callback.session.end(completed=False)  # what the interpreter's exit does after the interrupt
            history = None
        return history, model

    run_on(workdir / "node-a", preempt_after=2)  # epochs 1-2; A keeps its local state (epoch 2)
    assert os.path.exists(workdir / "node-a" / "ckpt" / ".tracked_ckpt" / "resume.json")
    run_on(workdir / "node-b", preempt_after=4)  # epochs 3-4, from the run
    history, model = run_on(workdir / "node-a", preempt_after=None)

    assert history.epoch == [4, 5]  # epochs 5-6: after B's epoch 4, not A's epoch 2
    run = the_run("a-b-a")
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(run.info.run_id)] == [1, 2, 3, 4, 5, 6]
    assert int(model.optimizer.iterations.numpy()) == STEPS_PER_EPOCH * EPOCHS


@pytest.mark.parametrize("key", ["", "   ", "x" * 201, "tab\there", 3.5])
def test_a_bad_job_key_is_refused_with_the_fix(key):
    with pytest.raises((ValueError, TypeError), match="resume="):
        TrackedModelCheckpoint("ckpt/x.keras", resume=key)


def test_a_bad_lease_window_is_refused_with_the_fix(monkeypatch):
    from tracked_ckpt.settings import lease_seconds

    monkeypatch.setenv(LEASE_ENV, "soon")
    with pytest.raises(ValueError, match=f"{LEASE_ENV}=60"):
        lease_seconds()


def test_without_local_state_an_unreachable_tracker_stops_the_job_before_training(workdir):
    from support.mlflow_server import free_port

    from tracked_ckpt.tracker import TrackerError

    tracker = MlflowTracker(tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", tracker=tracker, resume="needs-the-tracker")
    x, y = make_data()
    with pytest.raises(
        TrackerError, match=r"^Cannot look up job 'needs-the-tracker' on MLflow: .* unreachable\..*again"
    ):
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert not os.path.exists(workdir / "ckpt" / "k-1.keras")  # nothing trained from scratch by mistake
