"""A fit killed while its first checkpoint's packs are being uploaded (tests/test_incremental.py).

`python killed_while_uploading_packs.py`, in the job's working folder: checkpoints are stored
incrementally in packs of 256 KiB; the first upload puts one pack, says so in
`uploading.marker` as it starts the second, and never finishes it. At the end of epoch 4 the
process waits (bounded) for that marker and SIGKILLs itself, leaving four checkpoints in the spool.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from support.frozen import frozen_base_model, frozen_data

from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.integrations.mlflow_chunks import IncrementalUploads

UPLOADING = "uploading.marker"


class StuckStore:
    """The experiment's chunk store, whose second pack upload never ends."""

    def __init__(self, store):
        self.store = store
        self.packs = 0

    def put(self, name, local_path):
        if name.startswith("packs/"):
            self.packs += 1
            if self.packs == 2:
                open(UPLOADING, "w").close()
                time.sleep(300)
        self.store.put(name, local_path)

    def __getattr__(self, name):  # get, list, delete: the real store's
        return getattr(self.store, name)


class StuckUploads(IncrementalUploads):
    pack_size = 256 * 1024

    def chunk_store(self, client, experiment_id):
        return StuckStore(super().chunk_store(client, experiment_id))


class StuckUpload(MlflowTracker):
    incremental_uploads = StuckUploads


class Die(keras.callbacks.Callback):
    """At the end of epoch 4: once the second pack's upload is under way (at most 120 s), SIGKILL."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 3:
            deadline = time.monotonic() + 120
            while not os.path.exists(UPLOADING) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    x, y = frozen_data()
    callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", tracker=StuckUpload(), storage="incremental")
    frozen_base_model().fit(x, y, validation_split=0.25, epochs=6, verbose=0, callbacks=[callback, Die()])


if __name__ == "__main__":
    main()
