"""A preempted fit on W&B: the run is marked preempting, finished with the signal's exit status,
and the preempted checkpoint is a version of its own (offline, read from the run's files)."""

from __future__ import annotations

import signal

import keras
import numpy as np
import pytest
from support.helpers import Preempted, SignalMidEpoch
from support.wandb_records import finished_records, logged_artifacts, run_dirs

from tracked_ckpt import TrackedModelCheckpoint


def test_a_preempted_fit_marks_its_run_preempting(wandb_env):
    def handler(signum, frame):
        raise Preempted()

    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="tiny")
        model.compile(optimizer="adam", loss="mse")
        x, y = np.random.rand(32, 4), np.random.rand(32, 1)
        callback = TrackedModelCheckpoint(
            "ckpt/w-{epoch}.keras", monitor="loss", tracker="wandb", log_git=False, preempt_on="SIGUSR1"
        )
        with pytest.raises(Preempted):  # the job's handler ran, after the save and the drain
            model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[SignalMidEpoch(), callback])
        assert signal.getsignal(signal.SIGUSR1) is handler
    finally:
        signal.signal(signal.SIGUSR1, previous)
    (run_dir,) = run_dirs(str(wandb_env / "wandb_dir"))
    records = finished_records(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "preempting" in kinds
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [128 + signal.SIGUSR1]
    versions = logged_artifacts(run_dir)
    preempted = [v for v in versions if v.metadata.get("preempted")]
    assert len(versions) == 2 and len(preempted) == 1  # epoch 1, then the save at the signal
    assert preempted[0].metadata["epoch"] == 2 and preempted[0].metadata["batch"] == 2
