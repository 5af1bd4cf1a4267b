"""A resume="<job key>" training job in its working folder (tests/test_resume_by_key.py).

`python keyed_job.py KEY DIE_AFTER EPOCHS`: with DIE_AFTER >= 0 the process SIGKILLs
itself at the end of that (0-based) epoch, whose checkpoint is logged (upload="sync");
with DIE_AFTER < 0 it creates `training` at each epoch's start and holds the first
epoch until a file `stop` exists.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from support.helpers import KillAtEpochEnd, make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint


class HoldUntilStopFile(keras.callbacks.Callback):
    """Say `training` at each epoch's start; hold the first epoch until `stop` exists."""

    def on_epoch_begin(self, epoch, logs=None):
        open("training", "w").close()
        while epoch == 0 and not os.path.exists("stop"):
            time.sleep(0.05)


def main(key: str, die_after: int, epochs: int) -> None:
    x, y = make_data()
    callback = TrackedModelCheckpoint("ckpt/k-{epoch}.keras", monitor="loss", resume=key, upload="sync")
    extra = [KillAtEpochEnd(die_after)] if die_after >= 0 else [HoldUntilStopFile()]
    make_model().fit(x, y, epochs=epochs, batch_size=8, shuffle=False, verbose=0, callbacks=[callback, *extra])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
