"""A fit killed while its first checkpoint's files are being uploaded (tests/test_cli.py).

`python killed_while_uploading.py`, in the job's working folder: the first upload
creates its LoggedModel (PENDING), says so in `uploading.marker` and never finishes;
at the end of epoch 4 the process waits (bounded) for that marker and SIGKILLs itself,
leaving four checkpoints in the spool.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from support.helpers import make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker

UPLOADING = "uploading.marker"


class StuckUpload(MlflowTracker):
    """The LoggedModel exists (PENDING) and its files are being uploaded when the kill comes."""

    def _build_artifacts(self, *args, **kwargs):
        super()._build_artifacts(*args, **kwargs)
        open(UPLOADING, "w").close()
        time.sleep(300)


class Die(keras.callbacks.Callback):
    """At the end of epoch 4: once the first upload is under way (at most 120 s), SIGKILL."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 3:
            deadline = time.monotonic() + 120
            while not os.path.exists(UPLOADING) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    x, y = make_data()
    callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", tracker=StuckUpload())
    make_model().fit(x, y, validation_split=0.25, epochs=6, verbose=0, callbacks=[callback, Die()])


if __name__ == "__main__":
    main()
