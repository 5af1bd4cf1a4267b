"""Every Keras backend: checkpoints written on one backend load on another.

`make test` runs this module (with the callback, registry and resume tests) once on
TensorFlow and once more with KERAS_BACKEND=jax; the other backend runs in a child
process, since Keras fixes its backend at import.
"""

from __future__ import annotations

import json
import os
import subprocess

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import child, make_data, make_model

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint

OTHER_BACKEND = {"tensorflow": "jax", "jax": "tensorflow"}.get(keras.backend.backend())


@pytest.mark.skipif(OTHER_BACKEND is None, reason=f"no other backend to check against {keras.backend.backend()}")
def test_a_checkpoint_written_on_this_backend_loads_on_the_other(embedded_store, workdir):
    x, y = make_data()
    with mlflow.start_run():
        model = make_model("cross")
        model.fit(
            x,
            y,
            validation_split=0.25,
            epochs=2,
            batch_size=8,
            verbose=0,
            callbacks=[TrackedModelCheckpoint("ckpt/cross-{epoch}.keras", monitor="val_loss")],
        )
    result = tracked_ckpt.promote_best("cross-backend")
    assert result.promoted, result.reason
    assert result.checkpoint.record.backend == keras.backend.backend()
    reloaded = tracked_ckpt.load_model("cross-backend", alias="champion")
    here = np.asarray(reloaded.predict(x, verbose=0))

    env = {
        **os.environ,
        "KERAS_BACKEND": OTHER_BACKEND,
        "MLFLOW_TRACKING_URI": embedded_store,
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    done = subprocess.run(
        child("load_and_predict", "cross-backend"),
        input=json.dumps(x.tolist()),
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    there = json.loads(done.stdout.strip().splitlines()[-1])
    assert there["backend"] == OTHER_BACKEND
    np.testing.assert_allclose(np.asarray(there["predictions"]), here, rtol=1e-5, atol=1e-6)
