"""Incremental checkpoints logged to MLflow from a Keras file and a record, for the read side's tests.

`log_incremental` logs through the product's own write path, `MlflowTracker.log_checkpoint`
with a record saying `storage="incremental"` (what a fit with that argument hands it), with a
pack cache of its own so that a later load on the "same machine" finds nothing cached unless the
test says so.

The steps are also available one by one (`begin`, `upload_chunks`, `finish`, in the order
`log_checkpoint` takes them), so a test can hold a writer between uploading its packs and writing
its manifest (tests/children/incremental_writer.py), which the real call does in one go.
"""

from __future__ import annotations

import os
import tempfile
import time

import keras
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.tracking import MlflowClient

from tracked_ckpt.files import sha256_file
from tracked_ckpt.integrations.mlflow_chunks import MANIFEST_ARTIFACT, experiment_chunk_store
from tracked_ckpt.integrations.mlflow_model import build_model_folder, checkpoint_params, checkpoint_tags
from tracked_ckpt.integrations.mlflow_store import artifact_repository
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.pack_writer import StoredFile, store_file
from tracked_ckpt.record import STORAGE_INCREMENTAL, CheckpointRecord, checkpoint_name
from tracked_ckpt.specs import io_specs

FORMATS = {".keras": "keras", ".h5": "h5", ".weights.h5": "weights.h5"}


def file_format(path: str) -> str:
    """The record's `format` of a Keras file, from its name."""
    return "weights.h5" if path.endswith(".weights.h5") else FORMATS[os.path.splitext(path)[1]]


def incremental_record(
    path: str,
    *,
    base: str = "net",
    epoch: int = 1,
    loss: float = 1.0,
    model: keras.Model | None = None,
    code_paths: tuple[str, ...] | None = None,
) -> CheckpointRecord:
    """The record the callback would build for a Keras file at `path`, with `storage="incremental"`."""
    sha, size = sha256_file(path)
    kind = file_format(path)
    return CheckpointRecord(
        name=checkpoint_name(base, epoch, None),
        epoch=epoch,
        step=epoch * 10,
        monitor="loss",
        mode="min",
        is_best=True,
        sha256=sha,
        size_bytes=size,
        format=kind,
        filepath=os.path.abspath(path),
        keras_version=keras.__version__,
        backend=keras.backend.backend(),
        value=loss,
        metrics={"loss": loss},
        io_specs=io_specs(model) if model is not None and kind == "keras" else None,
        code_paths=code_paths,
        storage=STORAGE_INCREMENTAL,
    )


def begin(client: MlflowClient, run_id: str, record: CheckpointRecord) -> LoggedModel:
    """The checkpoint's LoggedModel, PENDING, as `MlflowTracker.log_checkpoint` creates it."""
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.create_logged_model(
        experiment_id=experiment_id,
        name=record.name,
        source_run_id=run_id,
        tags=checkpoint_tags(record),
        params=checkpoint_params(record),
    )


def upload_chunks(client: MlflowClient, experiment_id: str, path: str, cache: PackCache) -> StoredFile:
    """Put the file's chunks the experiment's chunk store lacks into it (`pack_writer.store_file`)."""
    return store_file(path, experiment_chunk_store(client, experiment_id), cache)


def finish(
    client: MlflowClient,
    model: LoggedModel,
    record: CheckpointRecord,
    stored: StoredFile,
    *,
    described_from: str | None = None,
) -> str:
    """Write the manifest, log the metrics, link the model to its run and finalize it READY.

    `described_from`: the checkpoint file; also log the model folder's small files (MLmodel with
    the signature, the environment, code/) beside the manifest, everything but the file itself.
    """
    repository = artifact_repository(client, model.artifact_location)
    with tempfile.TemporaryDirectory(prefix="stand-in-") as tmp:
        if described_from is not None:
            build_model_folder(
                record,
                described_from,
                tmp,
                model_id=model.model_id,
                run_id=model.source_run_id,
                artifact_uri=model.artifact_location,
            )
            os.remove(os.path.join(tmp, "data", "model.keras"))
            os.rmdir(os.path.join(tmp, "data"))
        with open(os.path.join(tmp, MANIFEST_ARTIFACT), "wb") as f:
            f.write(stored.manifest.to_bytes())
        repository.log_artifacts(tmp)
    run_id = model.source_run_id
    timestamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, timestamp, record.epoch, model_id=model.model_id) for k, v in record.metrics.items()],
    )
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=record.epoch)])
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    return model.model_id


def log_incremental(client: MlflowClient, run_id: str, path: str, record: CheckpointRecord, cache: PackCache) -> str:
    """Log the Keras file at `path` as an incremental checkpoint of run `run_id` through
    `MlflowTracker.log_checkpoint`; its model id.

    `cache` is the writer's pack cache: give it one apart from the reader's (`TRACKED_CKPT_CACHE`),
    as a training machine's is, or a load finds every pack cached. The writer's cache is
    `<TRACKED_CKPT_CACHE>/chunks`, so the variable points into `cache`'s folder for the call.
    """
    from tracked_ckpt.integrations.mlflow import MlflowTracker

    assert record.storage == STORAGE_INCREMENTAL
    reader_cache = os.environ.get("TRACKED_CKPT_CACHE")
    os.environ["TRACKED_CKPT_CACHE"] = str(cache.root.parent / f"{cache.root.name}-writer")
    try:
        destination = {"tracking_uri": client.tracking_uri, "run_id": run_id}
        return MlflowTracker(tracking_uri=client.tracking_uri).log_checkpoint(record, path, destination)
    finally:
        if reader_cache is None:
            os.environ.pop("TRACKED_CKPT_CACHE", None)
        else:
            os.environ["TRACKED_CKPT_CACHE"] = reader_cache
