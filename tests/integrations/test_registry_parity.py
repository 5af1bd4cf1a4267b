"""The registry asks MLflow and W&B the same questions and gets the same answers.

The same checkpoints (epoch and batch-level saves, each with its epoch's logs)
are logged to a real embedded MLflow store through `MlflowTracker` and to the
contract-checked W&B fake the way `WandbTracker` names and describes them;
every registry scenario below then runs on both.
"""

from __future__ import annotations

import hashlib
import os

import keras
import pytest
from support.helpers import make_model
from support.wandb_fake import FakeServer

import tracked_ckpt
from tracked_ckpt import fits as fits_module
from tracked_ckpt.integrations import wandb_schema as wb
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.record import CheckpointRecord, checkpoint_name

# (epoch, batch, val_loss, mae): the best val_loss and the best mae are different checkpoints,
# and the best mae is a batch-level save.
SAVES = [(1, None, 0.50, 0.40), (2, 3, 0.45, 0.20), (2, None, 0.30, 0.35), (3, None, 0.35, 0.30)]


def write_records(directory) -> list[tuple[CheckpointRecord, str]]:
    """One real .keras file per save, and its record as the callback would build it."""
    model = make_model()
    best, out = None, []
    for i, (epoch, batch, val_loss, mae) in enumerate(SAVES):
        model.layers[-1].bias.assign([float(i)])  # distinct bytes per file
        path = os.path.join(str(directory), f"m-{i}.keras")
        model.save(path)
        with open(path, "rb") as f:
            data = f.read()
        is_best = best is None or val_loss < best
        best = val_loss if is_best else best
        out.append(
            (
                CheckpointRecord(
                    name=checkpoint_name("tiny", epoch, batch),
                    epoch=epoch,
                    step=10 * i + 1,
                    batch=batch,
                    monitor="val_loss",
                    mode="min",
                    value=val_loss,
                    is_best=is_best,
                    sha256=hashlib.sha256(data).hexdigest(),
                    size_bytes=len(data),
                    format="keras",
                    filepath=path,
                    keras_version=keras.__version__,
                    backend=keras.backend.backend(),
                    metrics={"val_loss": val_loss, "mae": mae, "loss": val_loss + 0.1},
                ),
                path,
            )
        )
    return out


def on_mlflow(records, request):
    request.getfixturevalue("embedded_store")
    tracker = MlflowTracker()
    destination = tracker.start()
    for record, path in records:
        tracker.log_checkpoint(record, path, destination)
    tracker.finish()
    return tracker, destination["run_id"]


def on_wandb(records, request):
    monkeypatch = request.getfixturevalue("monkeypatch")
    monkeypatch.delitem(fits_module._LAST_DESTINATIONS, "wandb", raising=False)
    server = FakeServer(entity="team", project="proj")
    for record, path in records:
        with open(path, "rb") as f:
            data = f.read()
        server.log(
            wb.collection_name(record, "r1"),
            {os.path.basename(path): data},
            wb.artifact_metadata(record, "r1"),
            wb.checkpoint_aliases(record),
            run_id="r1",
        )
    return WandbTracker(project="proj", api=server.api()), "r1"


@pytest.fixture(params=["mlflow", "wandb"])
def logged(request, workdir):
    records = write_records(workdir)
    tracker, run_id = (on_mlflow if request.param == "mlflow" else on_wandb)(records, request)
    return tracker, run_id, [record for record, _ in records]


def test_listed_checkpoints_read_back_as_written(logged):
    tracker, run_id, records = logged
    listed = tracked_ckpt.list_checkpoints(tracker=tracker, run_id=run_id)
    assert [c.record.name for c in listed] == [r.name for r in records]  # -bNNNNNN kept for batch saves
    for checkpoint, record in zip(listed, records):
        assert (checkpoint.record.epoch, checkpoint.record.step) == (record.epoch, record.step)
        assert checkpoint.record.batch == record.batch  # a batch save reads back whole
        assert checkpoint.record.sha256 == record.sha256
        assert checkpoint.record.metric("mae") == pytest.approx(record.metrics["mae"])


def test_best_by_the_recorded_monitor_and_by_another_logged_metric(logged):
    tracker, run_id, _records = logged
    assert tracked_ckpt.best_checkpoint(tracker=tracker, run_id=run_id).record.name == "tiny-e0002"
    by_mae = tracked_ckpt.best_checkpoint(tracker=tracker, run_id=run_id, monitor="mae", mode="min")
    assert by_mae is not None and by_mae.record.name == "tiny-e0002-b000003"
    by_loss_max = tracked_ckpt.best_checkpoint(tracker=tracker, run_id=run_id, monitor="loss", mode="max")
    assert by_loss_max.record.name == "tiny-e0001"
    with pytest.raises(tracked_ckpt.UnknownKeyError, match="'nope'.*mae"):  # a typo fails loudly, listing metrics
        tracked_ckpt.best_checkpoint(tracker=tracker, run_id=run_id, monitor="nope", mode="min")


def test_promote_by_another_metric_then_by_the_monitor(logged):
    tracker, run_id, _ = logged
    result = tracked_ckpt.promote_best("parity", tracker=tracker, run_id=run_id, monitor="mae", mode="min")
    assert result.promoted and result.checkpoint.record.name == "tiny-e0002-b000003"
    again = tracked_ckpt.promote_best("parity", tracker=tracker, run_id=run_id, monitor="mae", mode="min")
    assert not again.promoted and "already points at tiny-e0002-b000003" in again.reason
    # By the recorded monitor, the holder (val_loss 0.45) loses to tiny-e0002 (0.30).
    moved = tracked_ckpt.promote_best("parity", tracker=tracker, run_id=run_id)
    assert moved.promoted and moved.checkpoint.record.name == "tiny-e0002"
    assert moved.previous.record.name == "tiny-e0002-b000003"


def test_filter_by_schema_fields(logged):
    tracker, run_id, _ = logged
    best = tracked_ckpt.list_checkpoints(tracker=tracker, run_id=run_id, where={"is_best": True})
    assert [c.record.name for c in best] == ["tiny-e0001", "tiny-e0002-b000003", "tiny-e0002"]
    second = tracked_ckpt.list_checkpoints(tracker=tracker, run_id=run_id, where={"epoch": 2})
    assert [c.record.name for c in second] == ["tiny-e0002-b000003", "tiny-e0002"]
