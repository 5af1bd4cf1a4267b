"""A resume=True fit of five epochs that SIGKILLs itself right after its third checkpoint (tests/test_resume.py).

`python train_and_die.py '<json scores>'`, in the job's working folder: the scripted
`score` (one value an epoch) is the monitored metric, mode "min".
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support.helpers import InjectMetric, KillAtEpochEnd, make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint


def main(scores: list[float | None]) -> None:
    x, y = make_data()
    callback = TrackedModelCheckpoint("ckpt/r-{epoch}.keras", monitor="score", mode="min", resume=True)
    # Killed right after the third checkpoint was written and queued.
    make_model().fit(
        x, y, epochs=5, batch_size=8, verbose=0, callbacks=[InjectMetric("score", scores), callback, KillAtEpochEnd(2)]
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
