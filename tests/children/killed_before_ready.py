"""A fit whose epoch-3 LoggedModel gets its files, metrics and run link but is never made READY (tests/test_sweep.py).

`python killed_before_ready.py MARKER`, in the job's working folder: when the third
checkpoint's LoggedModel is about to be finalized, the process creates MARKER and
stalls there (600 s) for the test to SIGKILL it.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlflow import MlflowClient
from support.helpers import InjectMetric, make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint


def stall_before_finalizing_epoch_3(marker: str) -> None:
    """Patch MlflowClient.finalize_logged_model: for epoch 3, say so in `marker` and stall."""
    finalize = MlflowClient.finalize_logged_model

    def finalize_or_stall(self, model_id, status):
        if self.get_logged_model(model_id).tags.get("tracked_ckpt.epoch") == "3":
            open(marker, "w").close()
            time.sleep(600)
        return finalize(self, model_id, status)

    MlflowClient.finalize_logged_model = finalize_or_stall


def main(marker: str) -> None:
    stall_before_finalizing_epoch_3(marker)
    x, y = make_data()
    callback = TrackedModelCheckpoint("ckpt/h-{epoch}.keras", monitor="score", mode="min")
    make_model().fit(
        x, y, epochs=3, batch_size=8, verbose=0, callbacks=[InjectMetric("score", [0.5, 0.4, 0.1]), callback]
    )


if __name__ == "__main__":
    main(sys.argv[1])
