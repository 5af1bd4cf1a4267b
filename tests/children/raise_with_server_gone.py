"""A fit that raises while its tracking server is gone, then an interpreter exit (tests/test_end_of_fit.py).

`python raise_with_server_gone.py WHEN`: the job trains 3 epochs and raises at the end of
epoch 2, uncaught, so its session is wound down at interpreter exit. Before it raises it
writes `down?` and waits for the test to stop the server and write `down`: with WHEN
`after-logging` that happens once epoch 2's checkpoint is logged (upload="sync": nothing is
left to upload); with `before-saving` at the start of epoch 2 (its checkpoint stays in the
spool). It writes `raising` just before raising.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from support.helpers import make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint


def wait_for_the_server_to_go() -> None:
    open("down?", "w").close()
    while not os.path.exists("down"):
        time.sleep(0.05)


class RaiseAtEpochTwo(keras.callbacks.Callback):
    def __init__(self, when: str):
        super().__init__()
        self.when = when

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1 and self.when == "before-saving":
            wait_for_the_server_to_go()

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            if self.when == "after-logging":
                wait_for_the_server_to_go()
            open("raising", "w").close()
            raise RuntimeError("the job failed at epoch 2")


def main(when: str) -> None:
    upload = "sync" if when == "after-logging" else "async"
    callback = TrackedModelCheckpoint("ckpt/g-{epoch}.keras", monitor="loss", upload=upload)
    x, y = make_data()
    make_model().fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[callback, RaiseAtEpochTwo(when)])


if __name__ == "__main__":
    main(sys.argv[1])
