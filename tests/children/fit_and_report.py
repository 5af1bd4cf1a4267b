"""A user's three-epoch fit, printing what its end of fit reported (tests/test_end_of_fit.py).

`python fit_and_report.py STALL_TIMEOUT WAIT_TIMEOUT`, in the job's working folder, the
tracker from MLFLOW_* variables. Warnings go to stderr; the last line of stdout is JSON:
pending, logged, stalled, the spool folder, and the seconds from the last epoch's end
until fit returned.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import keras
import numpy as np

from tracked_ckpt import TrackedModelCheckpoint


class LastEpoch(keras.callbacks.Callback):
    """Remembers when the latest epoch ended."""

    def on_epoch_end(self, epoch, logs=None):
        self.at = time.monotonic()


def main(stall_timeout: float, wait_timeout: float) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(1)], name="down")
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.rand(32, 4), np.random.rand(32, 1)
    last = LastEpoch()
    callback = TrackedModelCheckpoint(
        "ckpt/d-{epoch}.keras", monitor="loss", stall_timeout=stall_timeout, wait_timeout=wait_timeout
    )
    model.fit(x, y, epochs=3, verbose=0, callbacks=[callback, last])
    report = callback.last_report
    print(
        json.dumps(
            {
                "pending": len(report.pending),
                "logged": len(report.logged),
                "stalled": report.stalled,
                "spool": callback.spool.directory,
                "waited": time.monotonic() - last.at,
            }
        )
    )


if __name__ == "__main__":
    main(float(sys.argv[1]), float(sys.argv[2]))
