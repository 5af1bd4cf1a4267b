"""Many fits in one process: copies of a callback, fits ended by an exception, names in a run, sync races."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import threading
import time

import keras
import mlflow
import pytest
from support.helpers import InjectMetric, child, make_data, make_model
from support.mlflow_runs import logged_models

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.fits import live_sessions
from tracked_ckpt.integrations.mlflow import MlflowTracker

SUPPORT = os.path.join(os.path.dirname(__file__), "support")


class Pruned(Exception):
    """What an HPO library's pruning callback raises (Optuna's TrialPruned, say)."""


class PruneAt(keras.callbacks.Callback):
    def __init__(self, epoch: int | None, error: type[BaseException] = Pruned):
        super().__init__()
        self.epoch, self.error = epoch, error

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            raise self.error(f"stopped at epoch {epoch + 1}")


class TaggedTracker(MlflowTracker):
    """A subclass with its own constructor and attributes: its copies keep both."""

    def __init__(self, tag: str):
        super().__init__()
        self.tag = tag


def runs():
    return mlflow.search_runs(experiment_names=["Default"], output_format="list")


def wait_until(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def settled():
    """No fit is open and no end of one is still running."""
    return not live_sessions() and not [t for t in threading.enumerate() if t.name.startswith("tracked-ckpt-end")]


def test_copies_and_pickles_are_independent_callbacks_before_and_after_a_fit(embedded_store, workdir):
    x, y = make_data()
    original = TrackedModelCheckpoint("ckpt/c-{epoch}.keras", monitor="loss", keep_top_k=2, name="net")
    before = [copy.deepcopy(original), pickle.loads(pickle.dumps(original))]
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[original])
    after = [copy.deepcopy(original), pickle.loads(pickle.dumps(original))]
    for other in before + after:
        assert other.session is None and other.model is None
        assert (other.filepath, other.monitor, other.keep_top_k, other.name) == (
            "ckpt/c-{epoch}.keras",
            "loss",
            2,
            "net",
        )
        assert other.trackers[0] is not original.trackers[0]
    for other in [*before, *after, original]:  # the original's second fit, and every copy, each in a run of its own
        make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[other])
        assert other.last_report.ok
    found = runs()
    assert len(found) == 6 and {r.info.status for r in found} == {"FINISHED"}
    assert len({other.session.destinations["mlflow"]["run_id"] for other in [*before, *after, original]}) == 5
    for run in found:
        assert [m.name for m in logged_models(run.info.run_id)] == ["net-e0001", "net-e0002"]


def test_trials_ended_by_an_exception_never_share_a_run(embedded_store, workdir):
    """A study in one process: pruned trials interleaved with complete ones, all writing the same files."""
    x, y = make_data()
    threads_after = []
    prune_at = [1, None, 0, 2, None, 1, 3, None]
    for epoch in prune_at:
        callback = TrackedModelCheckpoint("ckpt/net-{epoch}.keras", monitor="loss")
        try:
            make_model().fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[callback, PruneAt(epoch)])
        except Pruned:
            pass  # the study marks the trial pruned and goes on
        threads_after.append(threading.active_count())
    wait_until(settled)  # pruned fits end in the background once the exception is handled
    found = sorted(runs(), key=lambda r: r.info.start_time)
    assert len(found) == len(prune_at)
    for run, epoch in zip(found, prune_at):
        expected = 4 if epoch is None else epoch + 1
        models = logged_models(run.info.run_id)
        assert [m.name for m in models] == [f"tiny-e{e:04d}" for e in range(1, expected + 1)]
        assert all(str(m.status) in ("READY", "LoggedModelStatus.READY") for m in models)
        assert run.info.status == ("FINISHED" if epoch is None else "FAILED")
    assert max(threads_after) - min(threads_after) <= 2, threads_after  # nothing accumulates


def test_keyboard_interrupt_then_another_fit_gives_two_ended_runs(embedded_store, workdir):
    x, y = make_data()
    first = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", monitor="loss")
    with pytest.raises(KeyboardInterrupt):
        make_model().fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[first, PruneAt(1, KeyboardInterrupt)])
    # The user's own run is not blocked by ours (MLflow's "Run ... is already active").
    with mlflow.start_run(run_name="mine") as mine:
        mlflow.log_param("p", 1)
    second = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", monitor="loss")
    make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[second])
    wait_until(lambda: first.last_report is not None)
    ours = [first.session.destinations["mlflow"]["run_id"], second.session.destinations["mlflow"]["run_id"]]
    assert ours[0] != ours[1] != mine.info.run_id
    assert [mlflow.get_run(r).info.status for r in ours] == ["FAILED", "FINISHED"]
    assert [m.name for m in logged_models(ours[0])] == ["tiny-e0001", "tiny-e0002"]
    assert [m.name for m in logged_models(ours[1])] == ["tiny-e0001", "tiny-e0002", "tiny-e0003"]
    assert first.last_report.ok and second.last_report.ok


def test_the_same_callback_after_an_interrupt_gets_a_new_run_and_a_run_of_the_users_is_left_open(
    embedded_store, workdir
):
    x, y = make_data()
    callback = TrackedModelCheckpoint("ckpt/s-{epoch}.keras", monitor="loss")
    with mlflow.start_run() as users:
        try:
            make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback, PruneAt(0)])
        except Pruned:
            pass
        wait_until(lambda: callback.last_report is not None)  # ended once the exception was handled
        assert mlflow.get_run(users.info.run_id).info.status == "RUNNING"  # the user's run: left to the user
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    second = callback.session.destinations["mlflow"]["run_id"]
    assert second != users.info.run_id
    assert [m.name for m in logged_models(users.info.run_id)] == ["tiny-e0001"]
    assert [m.name for m in logged_models(second)] == ["tiny-e0001", "tiny-e0002"]


def test_an_interrupted_fit_that_is_retried_with_resume_continues_its_run(embedded_store, workdir):
    x, y = make_data()
    model = make_model()
    callback = TrackedModelCheckpoint("ckpt/r-{epoch}.keras", monitor="loss", resume=True)
    with pytest.raises(Pruned):
        model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[callback, PruneAt(1)])
    interrupted = callback.session.destinations["mlflow"]["run_id"]
    history = model.fit(x, y, epochs=4, batch_size=8, verbose=0, callbacks=[callback])
    assert history.epoch == [2, 3]
    assert callback.session.destinations["mlflow"]["run_id"] == interrupted
    assert [m.name for m in logged_models(interrupted)] == [f"tiny-e000{e}" for e in (1, 2, 3, 4)]
    assert mlflow.get_run(interrupted).info.status == "FINISHED"


FITS = 100


def test_a_hundred_interrupted_fits_leave_nothing_behind(embedded_store, workdir):
    """Threads, open files and holds after 100 interrupted fits are those after one (the exit hook is one
    per process, registered at import)."""
    x, y = make_data(16)
    model = make_model()

    def interrupted_fit():
        callback = TrackedModelCheckpoint("ckpt/n.weights.h5", save_weights_only=True, monitor="loss", log_git=False)
        try:
            model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[callback, PruneAt(0)])
        except Pruned:
            pass

    def footprint():
        wait_until(settled)
        return threading.active_count(), len(os.listdir(f"/proc/{os.getpid()}/fd"))

    interrupted_fit()
    after_one = footprint()
    for _ in range(FITS - 1):
        interrupted_fit()
    threads, files = footprint()
    # MLflow's sqlite store pools up to 5 connections, opened as threads first need one: that much
    # may come and stay; a leak per fit would be a hundred.
    assert threads <= after_one[0] and files <= after_one[1] + 5, (after_one, threads, files)
    assert len(runs()) == FITS and {r.info.status for r in runs()} == {"FAILED"}
    assert not os.path.exists(workdir / "ckpt" / ".tracked_ckpt")  # no hold, no entry left


def test_callbacks_of_one_fit_share_its_run(embedded_store, workdir):
    x, y = make_data()
    keras_file = TrackedModelCheckpoint("ckpt/a-{epoch}.keras", monitor="loss")
    weights = TrackedModelCheckpoint("ckpt/b-{epoch}.weights.h5", save_weights_only=True, monitor="loss")
    make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[keras_file, weights])
    (run,) = runs()
    assert run.info.status == "FINISHED"
    assert {keras_file.session.destinations["mlflow"]["run_id"], weights.session.destinations["mlflow"]["run_id"]} == {
        run.info.run_id
    }
    # Names are given at the save, in callback order; the two callbacks' uploads may finish in any order.
    assert sorted((m.name, m.tags["tracked_ckpt.format"]) for m in logged_models(run.info.run_id)) == [
        ("tiny-2-e0001", "weights.h5"),
        ("tiny-2-e0002", "weights.h5"),
        ("tiny-e0001", "keras"),
        ("tiny-e0002", "keras"),
    ]


def test_names_are_unique_in_a_run_for_two_callbacks_and_for_two_fits(embedded_store, workdir):
    x, y = make_data()
    model = make_model("net")
    best = TrackedModelCheckpoint("ckpt/best.keras", monitor="loss", save_best_only=True)
    every = TrackedModelCheckpoint("ckpt/w-{epoch}.weights.h5", save_weights_only=True, monitor="loss")
    with mlflow.start_run() as run:
        model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[InjectMetric("loss", [0.5, 0.4]), best, every])
        model.fit(
            x,
            y,
            epochs=2,
            batch_size=8,
            verbose=0,  # fine-tuning: a second stage, epochs from 1 again
            callbacks=[InjectMetric("loss", [0.3, 0.2]), best],
        )
    assert best.session.destinations["mlflow"]["run_id"] == every.session.destinations["mlflow"]["run_id"]
    names = [(m.name, m.tags["tracked_ckpt.format"]) for m in logged_models(run.info.run_id)]
    assert len({name for name, _ in names}) == len(names) == 6, names
    assert sorted(names) == sorted(
        [
            ("net-e0001", "keras"),
            ("net-2-e0001", "weights.h5"),
            ("net-e0002", "keras"),
            ("net-2-e0002", "weights.h5"),
            ("net-3-e0001", "keras"),
            ("net-3-e0002", "keras"),
        ]
    )


def test_sync_waits_for_a_live_process_holding_the_spool_and_names_it(embedded_store, workdir):
    spool = workdir / "ckpt" / ".tracked_ckpt" / "spool"
    holder = subprocess.Popen(child("hold_spool", spool), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        report = tracked_ckpt.sync_spool(str(workdir), timeout=1.0)
        assert not report.ok and report.held == [f"{os.uname().nodename}:{holder.pid}"]
        cli = subprocess.run(
            [sys.executable, "-m", "tracked_ckpt.cli", "sync", str(workdir), "--timeout", "1"],
            capture_output=True,
            text=True,
        )
        assert cli.returncode != 0 and f":{holder.pid}" in cli.stderr + cli.stdout
        # Released while sync waits: sync returns as soon as it is, and reports success.
        waiting = threading.Timer(1.0, lambda: (holder.stdin.write("\n"), holder.stdin.flush()))
        waiting.start()
        started = time.monotonic()
        report = tracked_ckpt.sync_spool(str(workdir), timeout=60)
        assert report.ok and time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait()


def test_a_fit_that_need_not_wait_returns_before_its_last_upload_and_promote_sees_it(embedded_store, workdir):
    from support.no_wait_trainer import EPOCHS, GatedLastUpload, train

    GatedLastUpload.gate.clear()
    callback = train(str(workdir))
    assert callback.last_report is None  # fit returned; the last upload is held at the gate
    run_id = callback.session.destinations["mlflow"]["run_id"]
    assert len(logged_models(run_id)) < EPOCHS or any(str(m.status).endswith("PENDING") for m in logged_models(run_id))
    threading.Timer(0.5, GatedLastUpload.gate.set).start()
    result = tracked_ckpt.promote_best("no-wait", monitor="loss")  # waits for the uploads, then ranks all three
    assert callback.last_report.ok and len(callback.last_report.logged) == EPOCHS
    assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(run_id=run_id)] == [1, 2, 3]
    assert result.checkpoint.run_id == run_id
    assert tracked_ckpt.wait(timeout=1)
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_a_process_killed_right_after_a_fit_that_need_not_wait_loses_nothing(embedded_store, workdir):
    trainer = os.path.join(SUPPORT, "no_wait_trainer.py")
    killed = subprocess.run(
        [sys.executable, trainer, str(workdir)],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": embedded_store},
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_id = killed.stdout.strip().splitlines()[-1]
    assert len([m for m in logged_models(run_id) if str(m.status).endswith("READY")]) < 3
    report = tracked_ckpt.sync_spool(str(workdir), timeout=120)
    assert report.ok, report
    models = logged_models(run_id)
    assert [m.name for m in models] == ["tiny-e0001", "tiny-e0002", "tiny-e0003"]
    assert all(str(m.status).endswith("READY") for m in models)


def test_copies_of_a_tracker_subclass_keep_its_class_and_attributes(embedded_store, workdir):
    callback = TrackedModelCheckpoint("ckpt/t-{epoch}.keras", monitor="loss", tracker=TaggedTracker("blue"))
    for other in (copy.deepcopy(callback), pickle.loads(pickle.dumps(callback))):
        (tracker,) = other.trackers
        assert type(tracker) is TaggedTracker and tracker.tag == "blue" and tracker is not callback.trackers[0]
    x, y = make_data()
    make_model().fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[copy.deepcopy(callback)])
    assert len(runs()) == 1


def test_sync_in_the_process_of_an_interrupted_fit_ends_it_instead_of_waiting_for_itself(embedded_store, workdir):
    x, y = make_data()
    kept = []
    callback = TrackedModelCheckpoint("ckpt/h-{epoch}.keras", monitor="loss")
    try:
        make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback, PruneAt(1)])
    except Pruned as exc:
        kept.append(exc)  # the traceback keeps the fit's frame (and its CallbackList) alive
    assert callback.session.open
    report = tracked_ckpt.sync_spool(str(workdir))  # no timeout: it must not wait for this very process
    assert report.ok and not report.held
    assert callback.last_report is not None
    assert mlflow.get_run(callback.session.destinations["mlflow"]["run_id"]).info.status == "FAILED"
