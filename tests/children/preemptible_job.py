"""A preemptible training job in its working folder (tests/test_preempted_fit.py).

`python preemptible_job.py EPOCHS RESUME [SIGNALS] [HANDLER] [KEEP_TOP_K]`: RESUME is `true`
(the local resume state) or a job key; SIGNALS a comma-separated `preempt_on` (empty: the
callback's default); HANDLER `exit7` installs a handler of the job's own before `fit` (it writes
`handler-ran` and exits with status 7); KEEP_TOP_K, when given, ranks a scripted `score`
(SCORES) instead of val_loss. Every batch writes `at-<epoch>-<batch>` (0-based) and takes
~0.1 s, so the test can signal the job in the middle of an epoch; a completed job prints
`completed`.
"""

from __future__ import annotations

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras
from support.helpers import InjectMetric, make_data, make_model

from tracked_ckpt import TrackedModelCheckpoint


class SayWhere(keras.callbacks.Callback):
    """Mark each finished batch on disk, a little slowly; hold after epoch 2's second batch until `go`.

    The hold makes "mid-epoch" exact on a loaded machine: the test signals the job while it
    holds there (the handler notes the signal), then writes `go`.
    """

    def on_train_batch_end(self, batch, logs=None):
        open(f"at-{self._epoch}-{batch}", "w").close()
        while self._epoch == 1 and batch == 1 and not os.path.exists("go"):
            time.sleep(0.02)
        time.sleep(0.1)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch


SCORES = [0.5, 0.2, 0.4, 0.3, 0.6, 0.7]


def main(epochs: int, resume: str, signals: str | None, handler: str | None, keep_top_k: int | None) -> None:
    if handler == "exit7":

        def exit7(signum, frame):
            open("handler-ran", "w").close()
            sys.exit(7)

        signal.signal(signal.SIGTERM, exit7)
    options: dict[str, object] = {} if not signals else {"preempt_on": signals.split(",")}
    extra = []
    if keep_top_k is not None:
        options.update(keep_top_k=keep_top_k, mode="min", upload="sync")
        extra = [InjectMetric("score", SCORES)]
    callback = TrackedModelCheckpoint(
        "ckpt/p-{epoch}.keras",
        monitor="val_loss" if keep_top_k is None else "score",
        resume=True if resume == "true" else resume,
        stall_timeout=3,
        **options,
    )
    x, y = make_data()
    model = make_model()
    model.fit(
        x,
        y,
        validation_split=0.2,
        epochs=epochs,
        batch_size=8,
        shuffle=False,
        verbose=0,
        callbacks=[SayWhere(), *extra, callback],
    )
    print("completed", flush=True)


if __name__ == "__main__":
    signals, handler, keep = (sys.argv[3:6] + ["", "", ""])[:3]  # noqa: RUF005
    main(int(sys.argv[1]), sys.argv[2], signals or None, handler or None, int(keep) if keep else None)
