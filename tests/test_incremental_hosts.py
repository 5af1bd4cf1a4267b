"""Incremental checkpoints keep the full path's guarantees: an outage mid-fit, a sweep, retention.

Real fits of the frozen-base model (tests/support/frozen.py: ~3.2 MB `.keras`, ~200 KB changing an
epoch) with `storage="incremental"`, into a real `mlflow server` (one the test stops and restarts on
the same store and port) or the embedded store, and a real KerasTuner search. What is checked is
read back from the tracker and the experiment's chunk store: each checkpoint one READY LoggedModel,
every pack its manifest references present, and the file rebuilt through a cold cache (so from the
store, not from the packs the writer cached) byte-identical to the one Keras wrote.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from support.frozen import frozen_base_model, frozen_data
from support.helpers import InjectMetric, sha256
from support.mlflow_runs import logged_models
from support.mlflow_server import MlflowServer

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow_chunks import MANIFEST_ARTIFACT, experiment_chunk_store
from tracked_ckpt.packs import PACKS, Manifest

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]


def store_packs(experiment_id: str) -> dict[str, int]:
    """Every pack the experiment's chunk store holds, by name, with its size (the store's own listing)."""
    store = experiment_chunk_store(mlflow.MlflowClient(), experiment_id)
    return {Path(f.path).name: f.file_size for f in store.repository.list_artifacts(PACKS.rstrip("/"))}


def manifest_of(model, folder: Path) -> Manifest:
    """The manifest a LoggedModel holds in place of its file."""
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{model.artifact_location}/{MANIFEST_ARTIFACT}", dst_path=str(folder / model.model_id)
    )
    return Manifest.from_bytes(Path(local).read_bytes())


def cold_cache(monkeypatch, folder: Path) -> None:
    """From now on, downloads and packs are cached in an empty folder: a load reads the chunk store."""
    folder.mkdir(parents=True)
    monkeypatch.setenv("TRACKED_CKPT_CACHE", str(folder))


def checkpoints_by_id(run_id: str) -> dict[str, tracked_ckpt.LoggedCheckpoint]:
    return {found.id: found for found in tracked_ckpt.list_checkpoints(run_id=run_id)}


def predictions(model: keras.Model) -> np.ndarray:
    return np.asarray(model.predict(frozen_data(8)[0], verbose=0))


# -- an outage mid-fit -------------------------------------------------------------------------------


class StopServerOnceLogged(keras.callbacks.Callback):
    """After the first epoch, waits until its checkpoint is READY on the server, then stops the server."""

    def __init__(self, server: MlflowServer):
        super().__init__()
        self.server = server

    def on_epoch_end(self, epoch, logs=None):
        if epoch != 0:
            return
        client, deadline = mlflow.MlflowClient(), time.monotonic() + 300
        while not any(str(m.status) == "READY" for m in client.search_logged_models(experiment_ids=["0"])):
            assert time.monotonic() < deadline, "the first checkpoint was not logged within 300 s"
            time.sleep(0.1)
        self.server.stop()


@pytest.mark.slow
def test_an_outage_mid_fit_then_sync_logs_each_incremental_checkpoint_once(own_server, workdir, monkeypatch):
    callback = TrackedModelCheckpoint("ckpt/o-{epoch}.keras", monitor="loss", storage="incremental", wait_timeout=3)
    x, y = frozen_data()
    frozen_base_model().fit(
        x, y, epochs=4, batch_size=16, verbose=0, callbacks=[callback, StopServerOnceLogged(own_server)]
    )
    # The fit returned without the server: epochs 2 to 4 wait in the spool.
    assert len(callback.last_report.logged) == 1 and len(callback.last_report.pending) == 3

    own_server.start()  # the same store and port
    synced = subprocess.run([*CLI, "sync"], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert "0 still pending" in synced.stdout, synced.stdout
    assert tracked_ckpt.wait(timeout=300)  # the fit's own retries are done too: nothing more can be logged

    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    models = logged_models(run.info.run_id)
    assert [m.name for m in models] == [f"frozen-e000{e}" for e in range(1, 5)]  # each exactly once
    assert {str(m.status) for m in models} == {"READY"}
    assert {m.tags["tracked_ckpt.storage"] for m in models} == {"incremental"}
    present = store_packs(run.info.experiment_id)
    manifests = [manifest_of(m, workdir / "manifests") for m in models]
    assert all(set(manifest.packs) <= set(present) for manifest in manifests)  # no pack a manifest needs is missing
    assert sum(present.values()) < 2 * manifests[0].size  # four checkpoints, not four copies

    cold_cache(monkeypatch, workdir / "cold")
    found = checkpoints_by_id(run.info.run_id)
    for epoch, model in enumerate(models, start=1):
        downloaded = tracked_ckpt.download_checkpoint(checkpoint=found[model.model_id])
        assert sha256(downloaded) == sha256(workdir / "ckpt" / f"o-{epoch}.keras")
    np.testing.assert_allclose(
        predictions(tracked_ckpt.load_model(checkpoint=found[models[-1].model_id])),
        predictions(keras.saving.load_model(workdir / "ckpt" / "o-4.keras")),
        rtol=1e-6,
    )
    again = tracked_ckpt.sync_spool(workdir / "ckpt", timeout=300)
    assert again.ok and not again.logged
    assert len(logged_models(run.info.run_id)) == 4


# -- a sweep -----------------------------------------------------------------------------------------


def test_a_keras_tuner_sweep_logs_each_trial_once_and_its_trials_share_the_frozen_base(
    server_store, workdir, monkeypatch
):
    pytest.importorskip("keras_tuner")
    monkeypatch.syspath_prepend(os.path.join(os.path.dirname(__file__), "..", "examples"))
    from sweep_keras_tuner import TrackedTuner  # one MLflow run per trial

    def build(hp) -> keras.Model:
        model = frozen_base_model()
        model.compile(
            keras.optimizers.Adam(hp.Choice("learning_rate", [1e-2, 3e-3, 1e-3])),
            "sparse_categorical_crossentropy",
        )
        return model

    trials, epochs = 3, 2
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    x, y = frozen_data()
    tuner = TrackedTuner(
        build, objective="val_loss", max_trials=trials, seed=1, directory=str(workdir), project_name="frozen"
    )
    checkpoint = TrackedModelCheckpoint(
        str(workdir / "ckpt" / "frozen-{epoch}.keras"), monitor="val_loss", storage="incremental"
    )
    tuner.search(x[:48], y[:48], validation_data=(x[48:], y[48:]), epochs=epochs, verbose=0, callbacks=[checkpoint])
    assert tracked_ckpt.wait(timeout=300)

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert sorted(r.info.run_name for r in runs) == [f"trial-{t}" for t in range(trials)]
    manifests: dict[str, Manifest] = {}
    for run in runs:
        models = logged_models(run.info.run_id)
        assert [m.name for m in models] == [f"frozen-e000{e}" for e in range(1, epochs + 1)]  # each once
        assert {str(m.status) for m in models} == {"READY"}
        assert {m.tags["tracked_ckpt.storage"] for m in models} == {"incremental"}
        manifests.update((m.model_id, manifest_of(m, workdir / "manifests")) for m in models)

    present = store_packs(experiment_id)
    assert set(present) == {pack for m in manifests.values() for pack in m.packs}  # none missing, none stray
    assert set.intersection(*(set(m.packs) for m in manifests.values()))  # every checkpoint shares the base
    size = next(iter(manifests.values())).size
    print(f"file {size} B; {len(manifests)} checkpoints in {len(present)} packs of {sum(present.values())} B")
    # Trials sharing nothing would hold at least one whole file each.
    assert sum(present.values()) < 2 * size

    cold_cache(monkeypatch, workdir / "cold")
    # Every trial wrote the same file names: those on disk are the last trial's, byte for byte.
    (last,) = [r for r in runs if r.info.run_name == f"trial-{trials - 1}"]
    found = checkpoints_by_id(last.info.run_id)
    for epoch, model in enumerate(logged_models(last.info.run_id), start=1):
        downloaded = tracked_ckpt.download_checkpoint(checkpoint=found[model.model_id])
        assert sha256(downloaded) == sha256(workdir / "ckpt" / f"frozen-{epoch}.keras")
    # The sweep's best checkpoint is the epoch KerasTuner kept as its best model.
    best = tracked_ckpt.best_checkpoint(experiment=experiment, monitor="val_loss")
    assert best is not None and best.record.value == pytest.approx(tuner.oracle.get_best_trials(1)[0].score)
    np.testing.assert_allclose(
        predictions(tracked_ckpt.load_model(checkpoint=best)), predictions(tuner.get_best_models(1)[0]), rtol=1e-5
    )


# -- retention and garbage collection --------------------------------------------------------------


def test_keep_top_k_keeps_the_best_incremental_checkpoints_and_gc_frees_only_the_dropped_ones_packs(
    embedded_store, workdir, monkeypatch
):
    # Epoch 2 is the best, epoch 4 the latest: epochs 1 and 3 go.
    callback = TrackedModelCheckpoint(
        "ckpt/r-{epoch}.keras", monitor="score", mode="min", keep_top_k=1, storage="incremental"
    )
    x, y = frozen_data()
    frozen_base_model().fit(
        x, y, epochs=4, batch_size=16, verbose=0, callbacks=[InjectMetric("score", [0.5, 0.1, 0.4, 0.3]), callback]
    )
    assert callback.last_report.ok
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    models = logged_models(run.info.run_id)
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == [2, 4]
    assert sorted(os.listdir(workdir / "ckpt")) == ["r-2.keras", "r-4.keras"]
    live = {pack for m in models for pack in manifest_of(m, workdir / "manifests").packs}
    before = store_packs(run.info.experiment_id)
    assert live < set(before)  # deleting a checkpoint left its own packs behind, for gc

    def loads_byte_identical(cache: Path) -> None:
        cold_cache(monkeypatch, cache)
        found = checkpoints_by_id(run.info.run_id)
        for model in models:
            epoch = int(model.tags["tracked_ckpt.epoch"])
            downloaded = tracked_ckpt.download_checkpoint(checkpoint=found[model.model_id])
            assert sha256(downloaded) == sha256(workdir / "ckpt" / f"r-{epoch}.keras")
        np.testing.assert_allclose(
            predictions(tracked_ckpt.load_model(checkpoint=found[models[0].model_id])),
            predictions(keras.saving.load_model(workdir / "ckpt" / "r-2.keras")),
            rtol=1e-6,
        )

    loads_byte_identical(workdir / "cold-before")
    (first,) = tracked_ckpt.collect_garbage(experiment="Default", grace_seconds=0)
    assert set(first.collected.condemned) == set(before) - live
    assert set(store_packs(run.info.experiment_id)) == set(before)  # condemned, not deleted yet
    (second,) = tracked_ckpt.collect_garbage(experiment="Default", grace_seconds=0)
    assert set(second.collected.deleted) == set(before) - live
    assert set(store_packs(run.info.experiment_id)) == live  # the dropped ones' packs gone, the live ones' kept
    loads_byte_identical(workdir / "cold-after")
