"""Preemption end to end: a training process told to stop saves, drains, ends as the signal would
have made it, and the restarted job continues from the preempted checkpoint in the same run."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time

import keras
import mlflow
import pytest
from support.helpers import Preempted, SignalMidEpoch, child, make_data, make_model, sha256
from support.mlflow_runs import logged_models
from support.mlflow_server import MlflowServer

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.settings import PREEMPTION_GRACE

EPOCHS = 4
GRACE = 20.0  # seconds; the default (25) is the same code with more room


@pytest.fixture(autouse=True)
def short_grace(monkeypatch):
    monkeypatch.setenv(PREEMPTION_GRACE, str(GRACE))


def start_job(folder, resume="true", signals="", handler="", keep_top_k="") -> subprocess.Popen:
    os.makedirs(folder, exist_ok=True)
    return subprocess.Popen(
        child("preemptible_job", EPOCHS, resume, signals, handler, keep_top_k),
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_mid_epoch(job: subprocess.Popen, folder) -> None:
    """Until the job holds in the middle of its second epoch (tests/children/preemptible_job.py)."""
    marker = folder / "at-1-1"
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert job.poll() is None, job.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "the job never reached epoch 2"
        time.sleep(0.05)


def signal_mid_epoch(job: subprocess.Popen, folder, sig: int) -> float:
    """Send `sig` while the job holds in its second epoch, then let it go; return when it was sent."""
    wait_mid_epoch(job, folder)
    job.send_signal(sig)
    sent = time.monotonic()
    (folder / "go").touch()
    return sent


def the_run():
    runs = mlflow.search_runs(experiment_names=[os.environ["MLFLOW_EXPERIMENT_NAME"]], output_format="list")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def preempted_models(run_id):
    return [m for m in logged_models(run_id) if m.tags.get("tracked_ckpt.preempted") == "true"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("signals", "sig", "resume"),
    [("", signal.SIGTERM, "true"), ("SIGTERM,SIGUSR1", signal.SIGUSR1, "preempted-job")],
    ids=["sigterm-by-default-resume-true", "named-signal-job-key"],
)
def test_a_preempted_job_saves_drains_exits_as_signalled_and_resumes_where_it_stopped(
    server_store, workdir, signals, sig, resume
):
    folder = workdir / "job"
    job = start_job(folder, resume=resume, signals=signals)
    sent = signal_mid_epoch(job, folder, sig)
    out, _ = job.communicate(timeout=120)
    took = time.monotonic() - sent

    assert job.returncode == -sig, out[-3000:]  # a shell or Kubernetes reports 128 + sig (143 for SIGTERM)
    assert took < GRACE, f"{took:.1f}s"
    assert f"{signal.Signals(sig).name}: logged what waited" in out
    run = the_run()
    assert run.info.status == "KILLED"
    (preempted,) = preempted_models(run.info.run_id)
    assert str(preempted.status).endswith("READY")
    assert preempted.tags["tracked_ckpt.epoch"] == "2"
    assert int(preempted.tags["tracked_ckpt.batch"]) >= 2  # mid-epoch: at a batch boundary
    assert preempted.name.startswith("tiny-e0002-b")

    again = start_job(folder, resume=resume, signals=signals)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "completed" in out, out[-3000:]
    job_name = "the job" if resume == "true" else f"job {resume!r}"
    assert f"tracked-ckpt: resuming {job_name} from {preempted.name}, epoch 2, step " in out
    assert "(epoch 2 runs again from its start), in run http" in out
    run = the_run()  # still one run: the same one
    assert run.info.status == "FINISHED"
    models = logged_models(run.info.run_id)
    names = [m.name for m in models]
    assert [n for n, c in collections.Counter(names).items() if c > 1] == []  # nothing logged twice
    epochs = sorted(int(m.tags["tracked_ckpt.epoch"]) for m in models if "tracked_ckpt.batch" not in m.tags)
    assert epochs == [1, 2, 3, 4]  # epoch 2 ran again from its start, then 3 and 4
    assert all(str(m.status).endswith("READY") for m in models)
    # The resumed epoch 2 started from the preempted weights and step, not from epoch 1's.
    steps = {m.name: int(m.tags["tracked_ckpt.step"]) for m in models}
    assert steps["tiny-e0002"] > steps[preempted.name] > steps["tiny-e0001"]
    record = tracked_ckpt.list_checkpoints(run_id=run.info.run_id, where={"preempted": True})
    assert [c.record.name for c in record] == [preempted.name]


@pytest.mark.slow
def test_keep_top_k_ranks_the_whole_preempted_and_resumed_job(server_store, workdir):
    folder = workdir / "job"
    job = start_job(folder, keep_top_k=2)  # scores 0.5, 0.2, 0.4, 0.3 for epochs 1-4
    signal_mid_epoch(job, folder, signal.SIGTERM)
    out, _ = job.communicate(timeout=120)
    assert job.returncode == -signal.SIGTERM, out[-3000:]
    again = start_job(folder, keep_top_k=2)
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0, out[-3000:]
    # Epoch 1 and the preempted save (no score: worst) were logged by the first process; the
    # resumed one ranks them too: the best two (epochs 2 and 4), 4 also the latest, remain.
    remaining = logged_models(the_run().info.run_id)
    assert [m.name for m in remaining] == ["tiny-e0002", "tiny-e0004"]
    assert sorted(os.listdir(folder / "ckpt")) == ["p-2.keras", "p-4.keras"]


@pytest.mark.slow
def test_a_handler_the_job_installed_still_runs(server_store, workdir):
    folder = workdir / "job"
    job = start_job(folder, handler="exit7")
    signal_mid_epoch(job, folder, signal.SIGTERM)
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 7, out[-3000:]  # the job's own handler decided how it ends
    assert (folder / "handler-ran").exists()
    assert len(preempted_models(the_run().info.run_id)) == 1  # saved and logged before the handler ran
    assert the_run().info.status == "KILLED"


@pytest.mark.slow
def test_with_the_tracker_down_the_job_still_exits_in_time_and_sync_logs_the_rest(
    workdir, tmp_path_factory, monkeypatch
):
    server = MlflowServer(str(tmp_path_factory.mktemp("preempt-server"))).start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "preempted-offline")
        mlflow.set_tracking_uri(server.url)
        mlflow.set_experiment("preempted-offline")
        folder = workdir / "job"
        job = start_job(folder)
        wait_mid_epoch(job, folder)
        server.stop()
        sent = signal_mid_epoch(job, folder, signal.SIGTERM)
        out, _ = job.communicate(timeout=120)
        took = time.monotonic() - sent
        assert job.returncode == -signal.SIGTERM, out[-3000:]
        assert took < GRACE + 5, f"{took:.1f}s"  # the grace period, plus the process's own end
        assert "wait in" in out  # the preempted checkpoint (at least) waits in the spool

        server.start()
        sync = subprocess.run(
            [sys.executable, "-m", "tracked_ckpt.cli", "sync", str(folder / "ckpt" / ".tracked_ckpt" / "spool")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert sync.returncode == 0, sync.stdout + sync.stderr
        (preempted,) = preempted_models(the_run().info.run_id)
        assert str(preempted.status).endswith("READY")
    finally:
        server.stop()
        mlflow.set_tracking_uri(None)


def test_handlers_are_only_ours_during_fit(embedded_store, workdir):
    calls = []

    def mine(signum, frame):
        calls.append(signum)

    previous = signal.signal(signal.SIGUSR1, mine)
    try:
        seen_during_fit = []

        class Look(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                seen_during_fit.append(signal.getsignal(signal.SIGUSR1))

        callback = TrackedModelCheckpoint("ckpt/h-{epoch}.keras", monitor="loss", preempt_on=["SIGUSR1"])
        x, y = make_data()
        make_model().fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback, Look()])
        assert seen_during_fit and seen_during_fit[0] is not mine  # ours while fit ran
        assert signal.getsignal(signal.SIGUSR1) is mine  # and the job's own again after
        assert calls == []
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.fixture
def handler_that_raises():
    def handler(signum, frame):
        raise Preempted()

    previous = signal.signal(signal.SIGUSR1, handler)
    yield handler
    signal.signal(signal.SIGUSR1, previous)


def test_two_callbacks_of_one_fit_share_the_signal_and_the_run_ends_once(embedded_store, workdir, handler_that_raises):
    every = TrackedModelCheckpoint("ckpt/a-{epoch}.keras", monitor="loss", preempt_on="SIGUSR1", name="every")
    best = TrackedModelCheckpoint(
        "ckpt/b.keras", monitor="loss", save_best_only=True, preempt_on="SIGUSR1", name="best"
    )
    x, y = make_data()
    with pytest.raises(Preempted):
        make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[SignalMidEpoch(), every, best])
    assert signal.getsignal(signal.SIGUSR1) is handler_that_raises
    run = mlflow.get_run(every.session.destinations["mlflow"]["run_id"])
    assert run.info.status == "KILLED"
    assert best.session.destinations["mlflow"]["run_id"] == run.info.run_id  # one run for the fit
    assert not best.session.open  # ended with the run it joined
    assert [m.name for m in preempted_models(run.info.run_id)] == ["every-e0002-b000002"]


def test_a_filepath_naming_an_epoch_metric_still_gets_its_preemption_save(embedded_store, workdir, handler_that_raises):
    # {val_loss} is not in batch logs: the preemption save has a name of its own, beside the checkpoints.
    callback = TrackedModelCheckpoint("ckpt/v-{val_loss:.3f}.keras", monitor="val_loss", preempt_on="SIGUSR1")
    x, y = make_data()
    with pytest.raises(Preempted):
        make_model().fit(
            x, y, validation_split=0.25, epochs=3, batch_size=8, verbose=0, callbacks=[SignalMidEpoch(), callback]
        )
    run = mlflow.get_run(callback.session.destinations["mlflow"]["run_id"])
    assert run.info.status == "KILLED"
    assert [m.name for m in preempted_models(run.info.run_id)] == ["tiny-e0002-b000002"]
    assert os.path.exists(workdir / "ckpt" / "tiny-preempted-e0002-b000002.keras")
    assert len(logged_models(run.info.run_id)) == 2  # epoch 1, and the save at the signal


def test_the_preemption_save_never_touches_the_best_file_nor_the_best_value(
    embedded_store, workdir, handler_that_raises
):
    callback = TrackedModelCheckpoint("ckpt/best.keras", monitor="loss", save_best_only=True, preempt_on="SIGUSR1")
    x, y = make_data()
    with pytest.raises(Preempted):
        make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[SignalMidEpoch(), callback])
    run_id = callback.session.destinations["mlflow"]["run_id"]
    models = logged_models(run_id)
    (best,) = [m for m in models if m.tags.get("tracked_ckpt.preempted") != "true"]
    (preempted,) = preempted_models(run_id)
    assert sha256(workdir / "ckpt" / "best.keras") == best.tags["tracked_ckpt.sha256"]  # still epoch 1's bytes
    assert preempted.tags["tracked_ckpt.is_best"] == "false" and "tracked_ckpt.value" not in preempted.tags
    assert callback.best_name == best.name  # the best so far is still epoch 1
    assert os.path.exists(workdir / "ckpt" / f"{preempted.name.replace('tiny-', 'tiny-preempted-')}.keras")


def test_a_handler_that_returns_runs_once_and_the_fit_stops_there(embedded_store, workdir):
    calls = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    try:
        callback = TrackedModelCheckpoint("ckpt/r-{epoch}.keras", monitor="loss", preempt_on="SIGUSR1")
        x, y = make_data()
        history = make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[SignalMidEpoch(), callback])
        assert calls == [signal.SIGUSR1]  # the job's handler, once
        assert len(history.epoch) == 2  # the fit stopped in epoch 2, where the signal came
        assert signal.getsignal(signal.SIGUSR1) is not callback.session.stop._note
        assert mlflow.get_run(callback.session.destinations["mlflow"]["run_id"]).info.status == "KILLED"
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_fit_that_need_not_wait_gives_the_handlers_back_when_it_returns(embedded_store, workdir):
    previous = signal.getsignal(signal.SIGUSR1)
    callback = TrackedModelCheckpoint("ckpt/n-{epoch}.keras", monitor="loss", preempt_on="SIGUSR1", blocking=False)
    x, y = make_data()
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    assert signal.getsignal(signal.SIGUSR1) is previous  # restored on the training thread, not the ending one
    assert tracked_ckpt.wait(timeout=120)


def test_with_sync_uploads_the_preemption_save_is_logged_by_the_bounded_end(
    embedded_store, workdir, handler_that_raises
):
    callback = TrackedModelCheckpoint("ckpt/s-{epoch}.keras", monitor="loss", upload="sync", preempt_on="SIGUSR1")
    x, y = make_data()
    with pytest.raises(Preempted):
        make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[SignalMidEpoch(), callback])
    run_id = callback.session.destinations["mlflow"]["run_id"]
    assert [m.name for m in preempted_models(run_id)] == ["tiny-e0002-b000002"]
    assert callback.last_report.ok and not callback.last_report.pending
