"""No credential reaches the tracker; loading is safe by default."""

from __future__ import annotations

import logging
import os

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import git, make_data, make_repo

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint

SECRET = "tok3n-PLANTED-7f3a9c"


def files_containing(root, needle: bytes) -> list[str]:
    hits = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                if needle in f.read():
                    hits.append(path)
    return hits


def test_planted_secrets_never_reach_the_store(mlflow_server, workdir, monkeypatch, caplog, capsys):
    # A token in the git remote (as CI checkouts leave it), in the environment, and in the URI.
    make_repo(workdir)
    git(workdir, "remote", "add", "origin", f"https://x-access-token:{SECRET}@github.com/org/repo.git")
    monkeypatch.setenv("MY_SERVICE_TOKEN", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    uri = mlflow_server.url.replace("http://", f"http://user:{SECRET}@")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "security-scan")
    try:
        callback = TrackedModelCheckpoint("ckpt/s-{epoch}.keras", verbose=1)
        x, y = make_data()
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="scan")
        model.compile(optimizer="adam", loss="mse")
        with caplog.at_level(logging.DEBUG, logger="tracked_ckpt"):
            model.fit(x, y, validation_split=0.25, epochs=2, verbose=0, callbacks=[callback])
            result = tracked_ckpt.promote_best("security-scan-model")
        assert result.promoted
    finally:
        mlflow.set_tracking_uri(None)
    remote = result.checkpoint.record.git_remote
    assert remote == "https://github.com/org/repo.git"
    # The whole store: the server's database and every artifact file.
    assert files_containing(mlflow_server.root, SECRET.encode()) == []
    assert SECRET not in caplog.text
    # MLflow itself prints "View run at <tracking URI>" verbatim when a run ends (its own
    # output, documented in docs/how-to/production-server.md); every line tracked-ckpt prints is clean.
    ours = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(("🏃", "🧪"))]
    assert ours and not [line for line in ours if SECRET in line]


class Doubler(keras.layers.Layer):
    def call(self, x):
        return x * 2


def test_load_model_keeps_keras_safe_mode_on(embedded_store, workdir):
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2), keras.layers.Dense(1)], name="lambda"
    )
    model.compile(optimizer="adam", loss="mse")
    x, y = make_data()
    model.fit(x, y, validation_split=0.25, epochs=1, verbose=0, callbacks=[TrackedModelCheckpoint("ckpt/l.keras")])
    tracked_ckpt.promote_best("lambda-model")
    with pytest.raises(ValueError, match="safe_mode"):
        tracked_ckpt.load_model("lambda-model")
    loaded = tracked_ckpt.load_model("lambda-model", safe_mode=False)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
