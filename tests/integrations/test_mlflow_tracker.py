"""MlflowTracker.log_checkpoint on its own: idempotent, and a half-done attempt is completed, not duplicated
(called directly, or retried by the publisher after a first attempt died midway)."""

from __future__ import annotations

import mlflow
import pytest
from support.fake_tracker import entry_for
from support.helpers import save_trained_model, sha256

from tracked_ckpt.files import sha256_file
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.publisher import Publisher
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.spool import Spool


def record_for(path: str, epoch: int = 1) -> CheckpointRecord:
    digest, size = sha256_file(path)
    return CheckpointRecord(
        name=f"tiny-e{epoch:04d}",
        epoch=epoch,
        step=epoch * 5,
        monitor="loss",
        mode="min",
        is_best=True,
        sha256=digest,
        size_bytes=size,
        format="keras",
        filepath=path,
        keras_version="3",
        backend="tensorflow",
        value=0.5,
        metrics={"loss": 0.5, "mae": 0.4},
    )


class FailsBeforeFinalizing(MlflowTracker):
    """Everything happens (model, files, metrics, run output) but the last step fails."""

    def log_checkpoint(self, record, path, destination, first_attempt=False):
        original = self.client(destination["tracking_uri"]).finalize_logged_model

        def broken(*args, **kwargs):
            raise ConnectionError("server went away")

        client = self.client(destination["tracking_uri"])
        client.finalize_logged_model = broken
        try:
            return super().log_checkpoint(record, path, destination, first_attempt=first_attempt)
        finally:
            client.finalize_logged_model = original


def test_a_retry_completes_the_half_logged_model(store, workdir):
    save_trained_model("ckpt.keras")
    record = record_for(str(workdir / "ckpt.keras"))
    first = FailsBeforeFinalizing()
    destination = first.start()
    with pytest.raises(ConnectionError):
        first.log_checkpoint(record, "ckpt.keras", destination)
    retry = MlflowTracker()
    model_id = retry.log_checkpoint(record, "ckpt.keras", destination)
    again = retry.log_checkpoint(record, "ckpt.keras", destination)
    first.finish()
    assert again == model_id
    client = mlflow.MlflowClient()
    models = client.search_logged_models(
        [destination["experiment_id"]], filter_string=f"source_run_id = '{destination['run_id']}'"
    )
    assert [m.model_id for m in models] == [model_id]
    assert str(models[0].status) == "READY"
    assert sorted((m.key, m.step) for m in models[0].metrics) == [("loss", 1), ("mae", 1)]
    outputs = client.get_run(destination["run_id"]).outputs.model_outputs
    assert [o.model_id for o in outputs] == [model_id]
    assert models[0].params["epoch"] == "1"  # schema keys the Models table can show as columns


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
