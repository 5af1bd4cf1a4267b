"""Large checkpoints on the production-shaped stack: S3 multipart upload through MLflow's own path.

With `MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD=true` on the client, a file at or above
`MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE` is not PUT through the MLflow server:
the client asks the server to start an S3 multipart upload (`mpu/create`), gets
one presigned URL per `MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE` part, PUTs each part
straight to S3, and the server completes the upload (`mpu/complete`). The test
lowers both thresholds so a ~200 MB checkpoint takes that path, and checks it on
the S3 server's side, not in MLflow's code.
"""

from __future__ import annotations

import math
import os
import re
import uuid

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import sha256
from support.production_stack import ARTIFACT_PREFIX

import tracked_ckpt
from tracked_ckpt.integrations.mlflow import MlflowTracker

pytestmark = pytest.mark.slow

MIB = 1024**2
CHUNK = 32 * MIB  # S3 parts must be >= 5 MiB (but the last); boto3's own transfers use 8 MiB parts
THRESHOLD = 64 * MIB


def big_model() -> keras.Model:
    """~200 MB as a `.keras` file (16.8M weights plus Adam's two slots), cheap to train on 8 rows."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(8192), keras.layers.Dense(1)], name="big")
    model.compile(optimizer="adam", loss="mse")
    return model


def read_from(path: str, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_a_checkpoint_above_the_multipart_threshold_goes_to_s3_in_parts(production_stack, workdir, monkeypatch):
    stack = production_stack
    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD", "true")
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE", str(THRESHOLD))
    monkeypatch.setenv("MLFLOW_MULTIPART_UPLOAD_CHUNK_SIZE", str(CHUNK))
    experiment = f"large-{uuid.uuid4().hex[:8]}"
    tracker = MlflowTracker(tracking_uri=stack.url, experiment=experiment)
    moto_offset, server_offset = os.path.getsize(stack.s3.log), os.path.getsize(stack.server.log)

    # storage="full": the file itself takes MLflow's multipart path ("auto" would chunk it: 200 MB).
    callback = tracked_ckpt.TrackedModelCheckpoint(
        "ckpt/{epoch}.keras", monitor="loss", tracker=tracker, storage="full"
    )
    x = np.random.default_rng(0).normal(size=(8, 2048)).astype("float32")
    big_model().fit(x, x[:, :1], epochs=1, batch_size=8, verbose=0, callbacks=[callback])

    report = callback.last_report
    assert report.ok and len(report.logged) == 1, report
    local = workdir / "ckpt" / "1.keras"
    size = os.path.getsize(local)
    assert size > THRESHOLD + 2 * CHUNK, size  # a few hundred MB, several parts
    parts = math.ceil(size / CHUNK)

    client = mlflow.MlflowClient(stack.url)
    (model,) = client.search_logged_models([client.get_experiment_by_name(experiment).experiment_id])
    relative = model.artifact_location.removeprefix("mlflow-artifacts:/")
    key = f"{ARTIFACT_PREFIX}/{relative}/data/model.keras"

    # S3's side: a multipart object's ETag ends in "-<number of parts>", here MLflow's chunking
    # (boto3's 8 MiB parts, as the server's own upload would use, would give a different count).
    head = stack.s3.client().head_object(Bucket=stack.s3.bucket, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{parts}"), (head["ETag"], parts, math.ceil(size / (8 * MIB)))
    # ... and moto saw one presigned part PUT per chunk, on this object, each accepted.
    part_puts = re.findall(
        rf'"PUT /{stack.s3.bucket}/{re.escape(key)}\?([^ "]*) HTTP/1\.1" (\d+)', read_from(stack.s3.log, moto_offset)
    )
    part_puts = [(q, status) for q, status in part_puts if "partNumber=" in q and "uploadId=" in q]
    assert len(part_puts) == parts and all(status == "200" for _, status in part_puts), part_puts
    assert all("X-Amz-Signature=" in q for q, _ in part_puts)  # presigned URLs: the client, not the server
    # The MLflow server only brokered the upload: it never received the checkpoint's bytes.
    server_log = read_from(stack.server.log, server_offset)
    assert re.search(rf"POST /api/2\.0/mlflow-artifacts/mpu/create/{re.escape(relative)}/data", server_log)
    assert re.search(rf"POST /api/2\.0/mlflow-artifacts/mpu/complete/{re.escape(relative)}/data", server_log)
    assert f"PUT /api/2.0/mlflow-artifacts/artifacts/{relative}/data/model.keras" not in server_log
    # The small files of the same model stay single PUTs through the server.
    assert f"PUT /api/2.0/mlflow-artifacts/artifacts/{relative}/MLmodel" in server_log

    # The bytes: downloaded back through the server, verified by sha256 against the file Keras wrote.
    checkpoint = tracked_ckpt.best_checkpoint(run_id=model.source_run_id, tracker=tracker)
    assert checkpoint.record.sha256 == sha256(local)
    path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint, tracker=tracker, cache_dir=workdir / "cache")
    assert os.path.getsize(path) == size and sha256(path) == checkpoint.record.sha256
