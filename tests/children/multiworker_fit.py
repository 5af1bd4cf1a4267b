"""One worker of a two-worker TF_CONFIG cluster, each saving with TrackedModelCheckpoint (tests/test_multiworker.py).

`python multiworker_fit.py`, in the shared working folder, with TF_CONFIG naming this
worker; USE_STRATEGY=1 builds the model under MultiWorkerMirroredStrategy.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf
from support.helpers import make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint


def main(use_strategy: bool) -> None:
    if use_strategy:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            model = make_model()
    else:
        model = make_model()
    x, y = make_data(64)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    callback = TrackedModelCheckpoint("ckpt/mw-{epoch}.keras", monitor="loss")
    model.fit(data, epochs=3, verbose=0, callbacks=[callback])
    print("worker done", flush=True)


if __name__ == "__main__":
    main(os.environ.get("USE_STRATEGY") == "1")
