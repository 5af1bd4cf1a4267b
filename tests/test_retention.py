"""keep_top_k: storage stays O(K) on the tracker and on disk; promoted checkpoints survive."""

from __future__ import annotations

import os
import subprocess

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import InjectMetric, make_data, make_model
from support.mlflow_runs import logged_models

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.fits import last_destination
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.retention import Kept, to_evict

# 20 epochs; the best three are epochs 7 (0.05), 13 (0.08) and 18 (0.1); epoch 20 is the latest.
SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.05, 0.3, 0.35, 0.45, 0.2, 0.25, 0.08, 0.5, 0.6, 0.7, 0.15, 0.1, 0.9, 0.95]


def stored_model_ids(root) -> set[str]:
    """Ids of LoggedModels whose artifact folder (…/models/<id>/artifacts) still holds files."""
    found = set()
    for dirpath, _, files in os.walk(root):
        parts = dirpath.split(os.sep)
        if files and "models" in parts:
            index = parts.index("models")
            if index + 2 < len(parts) and parts[index + 2] == "artifacts":
                found.add(parts[index + 1])
    return found


@pytest.mark.slow
@pytest.mark.parametrize("where", ["server", "embedded"])
def test_twenty_epochs_keep_three(where, request, workdir):
    request.getfixturevalue("server_store" if where == "server" else "embedded_store")
    callback = TrackedModelCheckpoint("ckpt/r-{epoch:02d}.keras", monitor="score", mode="min", keep_top_k=3)
    x, y = make_data()
    make_model().fit(x, y, epochs=20, batch_size=8, verbose=0, callbacks=[InjectMetric("score", SCORES), callback])
    assert callback.last_report.ok
    runs = mlflow.search_runs(
        experiment_names=[os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default")], output_format="list"
    )
    (run,) = runs
    remaining = logged_models(run.info.run_id)
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in remaining] == [7, 13, 18, 20]
    assert sorted(os.listdir(workdir / "ckpt")) == ["r-07.keras", "r-13.keras", "r-18.keras", "r-20.keras"]
    # The files of deleted checkpoints are gone from the artifact store, not just hidden.
    root = request.getfixturevalue("mlflow_server").artifacts if where == "server" else workdir / "mlruns"
    logged = {ref for _, _, ref in callback.last_report.logged}
    kept = {m.model_id for m in remaining}
    assert len(logged) == 20
    assert stored_model_ids(root) & logged == kept


class PromoteAt(keras.callbacks.Callback):
    def __init__(self, epoch, name):
        super().__init__()
        self.epoch, self.name = epoch, name

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            tracked_ckpt.promote_best(self.name)


def test_a_promoted_checkpoint_is_never_deleted(embedded_store, workdir):
    scores = [0.5, 0.4, 0.3, 0.2, 0.1]
    callback = TrackedModelCheckpoint("ckpt/p-{epoch}.keras", monitor="score", mode="min", keep_top_k=1, upload="sync")
    x, y = make_data()
    # Epoch 1 is promoted right after it is logged (sync upload), then better ones follow.
    make_model().fit(
        x,
        y,
        epochs=5,
        batch_size=8,
        verbose=0,
        callbacks=[InjectMetric("score", scores), callback, PromoteAt(0, "kept-model")],
    )
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(run.info.run_id)] == [1, 5]
    assert sorted(os.listdir(workdir / "ckpt")) == ["p-1.keras", "p-5.keras"]
    # The alias still resolves to epoch 1's checkpoint: it loads with epoch 1's weights, not epoch 5's.
    loaded = tracked_ckpt.load_model("kept-model").predict(x, verbose=0)
    first = keras.saving.load_model(workdir / "ckpt" / "p-1.keras").predict(x, verbose=0)
    last = keras.saving.load_model(workdir / "ckpt" / "p-5.keras").predict(x, verbose=0)
    np.testing.assert_allclose(loaded, first, rtol=1e-6)
    assert not np.allclose(loaded, last)


def test_a_failed_file_delete_is_finished_by_the_next_attempt(embedded_store, workdir):
    """The model is hidden before its files go; when they cannot go, the next attempt deletes them."""
    callback = TrackedModelCheckpoint("ckpt/d-{epoch}.keras", upload="sync")
    x, y = make_data()
    make_model().fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    ((_, _, ref),) = callback.last_report.logged
    destination = last_destination("mlflow")
    (stored,) = [p for p in (workdir / "mlruns").rglob("*.keras") if ref in p.parts]
    if subprocess.run(["chattr", "+i", str(stored)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i (an undeletable file, even for root) is not available on this file system")
    tracker = MlflowTracker()
    try:
        with pytest.raises(OSError):
            tracker.delete_checkpoint(ref, destination)
        assert logged_models(destination["run_id"]) == []  # hidden already
        assert ref in stored_model_ids(workdir / "mlruns")
    finally:
        subprocess.run(["chattr", "-i", str(stored)], check=True)
    assert tracker.delete_checkpoint(ref, destination) is True
    assert ref not in stored_model_ids(workdir / "mlruns")
    assert tracker.delete_checkpoint(ref, destination) is True  # gone already: nothing left to do


def _rec(epoch, value):
    return CheckpointRecord(
        name=f"m-e{epoch:04d}",
        epoch=epoch,
        step=epoch,
        monitor="s",
        mode="min",
        is_best=False,
        sha256="0" * 64,
        size_bytes=1,
        format="keras",
        filepath=f"/x/{epoch}",
        keras_version="3",
        backend="tf",
        value=value,
    )


def test_policy_keeps_top_k_and_latest_and_treats_missing_values_as_worst():
    kept = [Kept(_rec(e, v), {}, {}) for e, v in enumerate([0.3, None, 0.1, 0.2, 0.5, None], start=1)]
    assert [c.record.epoch for c in to_evict(kept, 2, "min")] == [1, 2, 5]
    assert [c.record.epoch for c in to_evict(kept, 2, "max")] == [2, 3, 4]
    assert to_evict(kept[:2], 2, "min") == []


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_keep_top_k_below_one_is_refused(k):
    with pytest.raises(ValueError, match="keep_top_k"):
        TrackedModelCheckpoint("ckpt/x.keras", keep_top_k=k)


def test_keep_top_k_ranks_every_fit_of_the_callback_in_the_run(embedded_store, workdir):
    # A two-stage fine-tune in one run: epochs 1-4, then the same callback on to epoch 10.
    scores = [0.9, 0.5, 0.3, 0.8, 0.6, 0.2, 0.7, 0.85, 0.95, 0.99]
    callback = TrackedModelCheckpoint(
        "ckpt/s-{epoch:02d}.keras", monitor="score", mode="min", keep_top_k=2, upload="sync"
    )
    model = make_model()
    x, y = make_data()
    with mlflow.start_run() as run:
        model.fit(
            x,
            y,
            epochs=4,
            batch_size=8,
            verbose=0,
            callbacks=[InjectMetric("score", scores), callback, PromoteAt(0, "stage-one")],
        )
        model.fit(
            x,
            y,
            initial_epoch=4,
            epochs=10,
            batch_size=8,
            verbose=0,
            callbacks=[InjectMetric("score", scores), callback],
        )
    # The best two of all ten (epochs 6 and 3), the latest (10) and the promoted one (1).
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(run.info.run_id)] == [1, 3, 6, 10]
    assert sorted(os.listdir(workdir / "ckpt")) == ["s-01.keras", "s-03.keras", "s-06.keras", "s-10.keras"]


def test_checkpoints_of_another_run_never_compete(embedded_store, workdir):
    callback = TrackedModelCheckpoint("ckpt/o-{epoch}.keras", monitor="score", mode="min", keep_top_k=1, upload="sync")
    x, y = make_data()
    runs = []
    for scores in ([0.1, 0.2], [0.5, 0.6]):  # the second run's values are all worse than the first's
        with mlflow.start_run() as run:
            make_model().fit(
                x, y, epochs=2, batch_size=8, verbose=0, callbacks=[InjectMetric("score", scores), callback]
            )
        runs.append(run.info.run_id)
    # Each run keeps its own best and latest. Ranked together, the first run's better values and
    # later step would evict the second run's epoch 1.
    assert [[int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(r)] for r in runs] == [[1, 2], [1, 2]]


def test_the_latest_is_the_last_logged_even_when_a_recompile_restarts_the_step_count(embedded_store, workdir):
    # Stage two recompiles with a new optimizer: its steps start again at 0, below stage one's.
    scores = [0.1, 0.5, 0.6, 0.7, 0.8]
    callback = TrackedModelCheckpoint("ckpt/c-{epoch}.keras", monitor="score", mode="min", keep_top_k=1, upload="sync")
    model = make_model()
    x, y = make_data()
    with mlflow.start_run() as run:
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[InjectMetric("score", scores), callback])
        model.compile(optimizer="adam", loss="mse")
        extra = [InjectMetric("score", scores), callback]
        model.fit(x, y, initial_epoch=3, epochs=5, batch_size=8, verbose=0, callbacks=extra)
    # The best (epoch 1) and the latest (epoch 5, although its step is lower than epoch 3's).
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in logged_models(run.info.run_id)] == [1, 5]
    assert sorted(os.listdir(workdir / "ckpt")) == ["c-1.keras", "c-5.keras"]
