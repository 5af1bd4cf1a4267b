"""A trainer for the `blocking=False` tests: its last upload waits on a gate, so `fit` returns first.

Run as a script (`python no_wait_trainer.py FOLDER`) it trains, and is killed by
SIGKILL as soon as `fit` returns, with the last upload still held at the gate.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/, for `support`

from support.helpers import make_data, make_model
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker

EPOCHS = 3


class GatedLastUpload(MlflowTracker):
    """MLflow, except that the last epoch's upload waits until `gate` is set (shared by every copy)."""

    gate = threading.Event()

    def log_checkpoint(self, record, path, destination, *, first_attempt=False):
        if record.epoch == EPOCHS:
            self.gate.wait(600)
        return super().log_checkpoint(record, path, destination, first_attempt=first_attempt)


def train(folder: str) -> TrackedModelCheckpoint:
    """A fit that returns without waiting for its uploads."""
    x, y = make_data()
    callback = TrackedModelCheckpoint(
        os.path.join(folder, "ckpt", "n-{epoch}.keras"), monitor="loss", tracker=GatedLastUpload(), blocking=False
    )
    make_model().fit(x, y, epochs=EPOCHS, batch_size=8, verbose=0, callbacks=[callback])
    return callback


if __name__ == "__main__":
    callback = train(sys.argv[1])
    print(callback.session.destinations["mlflow"]["run_id"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # right after fit returned, the last upload still at the gate
