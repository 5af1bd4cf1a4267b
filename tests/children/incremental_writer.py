"""A second process logging an incremental checkpoint while `gc` runs (tests/test_incremental_read.py).

`python incremental_writer.py RUN_ID FOLDER`: saves a model of its own, then logs it into the run
as the write side does (tests/support/incremental.py), stopping at two points the test can see:

1. `FOLDER/uploaded` (the packs it uploaded, one a line): its LoggedModel is PENDING, its packs are
   in the chunk store, its manifest is not written yet; it waits for `FOLDER/go-manifest`.
2. `FOLDER/manifest` (its model id): the manifest is written, the LoggedModel still PENDING; it
   waits for `FOLDER/go-finish`, finalizes READY and writes `FOLDER/done`.

Each wait gives up after 300 s (the test is gone).
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
import mlflow
from mlflow.entities import LoggedModelStatus
from support.incremental import begin, incremental_record, upload_chunks

from tracked_ckpt.integrations.mlflow_chunks import MANIFEST_ARTIFACT
from tracked_ckpt.integrations.mlflow_store import artifact_repository
from tracked_ckpt.pack_cache import PackCache


def wait_for(path: str) -> None:
    deadline = time.monotonic() + 300
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit(f"gave up waiting for {path}")
        time.sleep(0.05)


def main(run_id: str, folder: str) -> None:
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512), keras.layers.Dense(2)], name="writer")
    path = os.path.join(folder, "writer.keras")
    model.save(path)
    client = mlflow.MlflowClient()
    record = incremental_record(path, base="writer", model=model)
    logged = begin(client, run_id, record)
    stored = upload_chunks(client, logged.experiment_id, path, PackCache(os.path.join(folder, "writer-cache")))
    with open(os.path.join(folder, "uploaded"), "w") as f:
        f.write("\n".join(stored.manifest.packs))
    wait_for(os.path.join(folder, "go-manifest"))

    manifest = os.path.join(folder, "out", MANIFEST_ARTIFACT)
    os.makedirs(os.path.dirname(manifest))
    with open(manifest, "wb") as f:
        f.write(stored.manifest.to_bytes())
    artifact_repository(client, logged.artifact_location).log_artifact(manifest)
    with open(os.path.join(folder, "manifest"), "w") as f:
        f.write(logged.model_id)
    wait_for(os.path.join(folder, "go-finish"))

    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    open(os.path.join(folder, "done"), "w").close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
