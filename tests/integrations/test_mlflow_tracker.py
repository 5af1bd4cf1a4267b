"""MlflowTracker.log_checkpoint on its own: idempotent, and a half-done attempt is completed, not duplicated."""

from __future__ import annotations

import mlflow
import pytest
from helpers import save_trained_model

from tracked_ckpt.files import sha256_file
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.record import CheckpointRecord


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
