"""Real faults against a real MLflow server: nothing is lost, nothing is logged twice."""

from __future__ import annotations

import logging

import keras
import mlflow
import pytest
from support.helpers import make_data, make_model
from support.mlflow_runs import logged_models
from support.mlflow_server import MlflowServer

from tracked_ckpt import TrackedModelCheckpoint


class ServerSwitch(keras.callbacks.Callback):
    """Stops the server after one epoch and starts it again after another."""

    def __init__(self, server: MlflowServer, stop_after: int | None, start_after: int):
        super().__init__()
        self.server, self.stop_after, self.start_after = server, stop_after, start_after

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.stop_after:
            self.server.stop()
        if epoch == self.start_after:
            self.server.start()


def only_run():
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    return run


@pytest.mark.slow
def test_server_down_for_two_epochs_mid_fit(own_server):
    callback = TrackedModelCheckpoint("ckpt/o-{epoch}.keras")
    x, y = make_data()
    # Down after epoch 2, back after epoch 5: epochs 3, 4 and 5 are saved while it is away.
    history = make_model().fit(
        x,
        y,
        validation_split=0.25,
        epochs=7,
        verbose=0,
        callbacks=[callback, ServerSwitch(own_server, stop_after=1, start_after=4)],
    )
    assert len(history.epoch) == 7
    assert callback.last_report.ok
    run = only_run()
    models = logged_models(run.info.run_id)
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == [1, 2, 3, 4, 5, 6, 7]
    assert {str(m.status) for m in models} == {"READY"}
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_server_unreachable_at_start_spools_and_warns(own_server, caplog):
    own_server.stop()
    callback = TrackedModelCheckpoint("ckpt/u-{epoch}.keras")
    x, y = make_data()
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        make_model().fit(
            x,
            y,
            validation_split=0.25,
            epochs=4,
            verbose=0,
            callbacks=[callback, ServerSwitch(own_server, stop_after=None, start_after=1)],
        )
    assert "unreachable" in caplog.text
    assert callback.last_report.ok
    run = only_run()
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(run.info.run_id)] == [1, 2, 3, 4]
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


@pytest.mark.slow
def test_server_gone_for_good_keeps_everything_for_sync(own_server, caplog):
    callback = TrackedModelCheckpoint("ckpt/g-{epoch}.keras", wait_timeout=3)
    x, y = make_data()
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        make_model().fit(
            x,
            y,
            validation_split=0.25,
            epochs=3,
            verbose=0,
            callbacks=[callback, ServerSwitch(own_server, stop_after=0, start_after=99)],
        )
    pending = callback.last_report.pending
    assert len(pending) >= 2
    assert "tracked-ckpt sync" in caplog.text
    own_server.start()
    from tracked_ckpt import sync_spool

    report = sync_spool(callback.spool.directory, timeout=120)
    assert report.ok
    run = only_run()
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(run.info.run_id)] == [1, 2, 3]
