"""Incremental checkpoints on MLflow: a manifest per LoggedModel, chunks in the experiment's store.

Real fits of a frozen-base model (tests/support/frozen.py, ~3.2 MB `.keras`, ~200 KB changing
an epoch) into the real `mlflow server` (proxied artifacts) and the embedded sqlite store; the
chunk store is read back through MLflow's artifact repositories and every file is rebuilt with
`pack_reader.restore_file` and compared with the one Keras wrote.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pytest
from support.fake_tracker import entry_for
from support.frozen import frozen_base_model, frozen_data
from support.helpers import child, sha256
from support.mlflow_runs import logged_models

import tracked_ckpt.storage
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.integrations.mlflow_chunks import (
    DESCRIPTION_TAG,
    MANIFEST_ARTIFACT,
    IncrementalUploads,
    experiment_chunk_store,
)
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.pack_reader import restore_file
from tracked_ckpt.packs import Manifest
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.storage import STORAGE_CHOICES, storage_for_file
from tracked_ckpt.tracker import Tracker

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]


def fit_run(path: str, *, epochs: int = 3, storage: str = "incremental", weights: bool = False, tracker: Any = None):
    """One MLflow run of the frozen-base model; returns its run id."""
    x, y = frozen_data()
    with mlflow.start_run() as run:
        callback = TrackedModelCheckpoint(
            path, monitor="loss", save_weights_only=weights, storage=storage, tracker=tracker or "mlflow"
        )
        frozen_base_model().fit(x, y, epochs=epochs, batch_size=16, verbose=0, callbacks=[callback])
    return run.info.run_id


def artifacts_of(model) -> list[str]:
    """Every file of a LoggedModel, as paths relative to its folder."""
    client, found, folders = mlflow.MlflowClient(), [], [None]
    while folders:
        for info in client.list_logged_model_artifacts(model.model_id, folders.pop()):
            (folders if info.is_dir else found).append(info.path)
    return sorted(found)


def holds_no_copy(model) -> bool:
    """The LoggedModel holds the manifest and the model folder's small files, never the checkpoint's bytes."""
    files = artifacts_of(model)
    return MANIFEST_ARTIFACT in files and not any(f.endswith((".keras", ".h5")) for f in files)


def manifest_of(model, folder: Path) -> Manifest:
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{model.artifact_location}/{MANIFEST_ARTIFACT}", dst_path=str(folder / model.model_id)
    )
    return Manifest.from_bytes(Path(local).read_bytes())


def pack_sizes(experiment_id: str) -> dict[str, int]:
    """Every pack of the experiment's chunk store, by name, with its size (as the store lists it)."""
    store = experiment_chunk_store(mlflow.MlflowClient(), experiment_id)
    return {Path(f.path).name: f.file_size for f in store.repository.list_artifacts("packs")}


def restored(model, manifest: Manifest, folder: Path) -> str:
    """sha256 of the file rebuilt from the store, through a cold cache."""
    store = experiment_chunk_store(mlflow.MlflowClient(), model.experiment_id)
    target = folder / "restored" / model.model_id / manifest.name
    restore_file(manifest, store, PackCache(folder / "cold-cache"), target)
    return sha256(target)


def test_epochs_and_runs_of_an_experiment_share_their_unchanged_chunks(store, workdir, tmp_path):
    first = fit_run("ckpt/a-{epoch}.keras")
    models = logged_models(first)
    assert [m.name for m in models] == ["frozen-e0001", "frozen-e0002", "frozen-e0003"]
    assert {str(m.status) for m in models} == {"READY"}
    size = os.path.getsize(workdir / "ckpt" / "a-1.keras")
    manifests = []
    for epoch, model in enumerate(models, start=1):
        assert model.tags["tracked_ckpt.storage"] == "incremental"
        assert model.tags[DESCRIPTION_TAG].startswith("incremental: ") and " new of 3." in model.tags[DESCRIPTION_TAG]
        assert holds_no_copy(model)  # no copy of the file
        manifest = manifest_of(model, tmp_path)
        local = sha256(workdir / "ckpt" / f"a-{epoch}.keras")
        assert manifest.sha256 == model.tags["tracked_ckpt.sha256"] == local
        assert restored(model, manifest, tmp_path) == local
        manifests.append(manifest)

    sizes = pack_sizes(models[0].experiment_id)
    assert set(sizes) == {pack for m in manifests for pack in m.packs}  # nothing unreferenced, nothing missing
    new = [
        sum(sizes[p] for p in set(m.packs) - {q for before in manifests[:i] for q in before.packs})
        for i, m in enumerate(manifests)
    ]
    print(f"file {size} B; new bytes per epoch {new}; packs {len(sizes)}")
    assert new[0] >= size * 0.9  # the first checkpoint uploads (about) the whole file
    assert max(new[1:]) < size * 0.25  # later ones only what changed: the head and Adam's moments
    assert sum(sizes.values()) < size * 1.5  # three checkpoints, not three copies

    # A second run of the same experiment: its frozen base is already there.
    second = fit_run("ckpt/b-{epoch}.keras", epochs=1)
    (model,) = logged_models(second)
    manifest = manifest_of(model, tmp_path)
    known = {p for m in manifests for p in m.packs}
    uploaded = sum(size for pack, size in pack_sizes(model.experiment_id).items() if pack not in known)
    assert uploaded == sum(pack_sizes(model.experiment_id)[p] for p in set(manifest.packs) - known)
    assert uploaded < size * 0.25, (uploaded, size)
    assert restored(model, manifest, tmp_path) == sha256(workdir / "ckpt" / "b-1.keras")


@pytest.mark.parametrize(
    ("path", "weights"),
    [("ckpt/m-{epoch}.keras", False), ("ckpt/m-{epoch}.h5", False), ("ckpt/m-{epoch}.weights.h5", True)],
)
def test_every_format_is_rebuilt_byte_identical(embedded_store, workdir, tmp_path, path, weights):
    models = logged_models(fit_run(path, epochs=2, weights=weights))
    assert len(models) == 2
    for epoch, model in enumerate(models, start=1):
        local = workdir / path.format(epoch=epoch)
        manifest = manifest_of(model, tmp_path)
        assert manifest.name == local.name and manifest.size == local.stat().st_size
        assert restored(model, manifest, tmp_path) == sha256(local)


def test_auto_keeps_small_files_plain_and_chunks_large_ones(embedded_store, workdir, monkeypatch):
    assert storage_for_file("auto", tracked_ckpt.storage.AUTO_INCREMENTAL_BYTES - 1) == "full"
    assert storage_for_file("auto", tracked_ckpt.storage.AUTO_INCREMENTAL_BYTES) == "incremental"
    assert storage_for_file("full", 10**12) == "full"

    (small,) = logged_models(fit_run("ckpt/s-{epoch}.keras", epochs=1, storage="auto"))  # 3.2 MB: a plain model
    assert "tracked_ckpt.storage" not in small.tags and DESCRIPTION_TAG not in small.tags
    assert "data/model.keras" in artifacts_of(small) and "MLmodel" in artifacts_of(small)

    monkeypatch.setattr(tracked_ckpt.storage, "AUTO_INCREMENTAL_BYTES", 1_000_000)
    (large,) = logged_models(fit_run("ckpt/l-{epoch}.keras", epochs=1, storage="auto"))
    assert large.tags["tracked_ckpt.storage"] == "incremental"
    assert holds_no_copy(large)

    # A model that trains most of its bytes rewrites most of its file: "auto" keeps it plain.
    assert storage_for_file("auto", 10**9, frozen_fraction=0.49) == "full"
    assert storage_for_file("auto", 10**9, frozen_fraction=0.5) == "incremental"
    trained = keras.Sequential([keras.Input((512,)), keras.layers.Dense(512), keras.layers.Dense(1)])
    trained.compile("adam", "mse")
    with mlflow.start_run() as run:
        callback = TrackedModelCheckpoint("ckpt/t-{epoch}.keras", monitor="loss", storage="auto")
        trained.fit(np.zeros((32, 512)), np.zeros(32), epochs=1, verbose=0, callbacks=[callback])
    assert os.path.getsize("ckpt/t-1.keras") > 1_000_000
    (plain,) = logged_models(run.info.run_id)
    assert "tracked_ckpt.storage" not in plain.tags and "data/model.keras" in artifacts_of(plain)


def test_full_storage_logs_the_model_folder_as_before(embedded_store, workdir):
    (model,) = logged_models(fit_run("ckpt/f-{epoch}.keras", epochs=1, storage="full"))
    assert "tracked_ckpt.storage" not in model.tags
    assert {"MLmodel", "data/model.keras"} <= set(artifacts_of(model))
    assert pack_sizes(model.experiment_id) == {}  # no chunk store was written


def test_an_unknown_storage_is_one_line_naming_the_choices(workdir):
    with pytest.raises(ValueError) as raised:
        TrackedModelCheckpoint("ckpt/x.keras", storage="delta")
    message = str(raised.value)
    assert "\n" not in message and all(repr(choice) in message for choice in STORAGE_CHOICES)


class RecordingTracker(Tracker):
    """A tracker without a chunk store (`stores_incremental` False): notes the records it is handed."""

    name = display_name = "recording"

    def __init__(self) -> None:
        self.records: list[CheckpointRecord] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> RecordingTracker:
        return self  # each fit copies its trackers: keep noting into this one

    def start(self, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {}

    def log_checkpoint(self, record, path, destination, *, first_attempt=False) -> str:
        self.records.append(record)
        return f"r-{record.epoch}"


def test_a_tracker_without_a_chunk_store_gets_full_files_beside_mlflow(embedded_store, workdir):
    recording = RecordingTracker()
    run_id = fit_run("ckpt/t-{epoch}.keras", epochs=2, tracker=["mlflow", recording])
    assert [r.storage for r in recording.records] == ["full", "full"]
    assert [m.tags["tracked_ckpt.storage"] for m in logged_models(run_id)] == ["incremental", "incremental"]
    # One spool record for both: the same checkpoints, only the storage handed to each differs.
    assert [r.sha256 for r in recording.records] == [m.tags["tracked_ckpt.sha256"] for m in logged_models(run_id)]


@pytest.mark.slow
def test_killed_while_uploading_packs_then_sync_logs_each_once(embedded_store, workdir, tmp_path):
    died = subprocess.run(child("killed_while_uploading_packs"), cwd=workdir, capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    assert logged_models(run.info.run_id) == []  # killed before the first checkpoint's packs were all up
    assert len(pack_sizes(run.info.experiment_id)) == 1  # one pack of it was
    spool = workdir / "ckpt" / ".tracked_ckpt" / "spool"
    assert len([f for f in os.listdir(spool) if f.endswith(".json")]) == 4

    synced = subprocess.run([*CLI, "sync"], cwd=workdir, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert "logged 4 checkpoint(s), 0 still pending" in synced.stdout
    models = logged_models(run.info.run_id)
    assert [m.name for m in models] == [f"frozen-e000{i}" for i in range(1, 5)]
    assert {str(m.status) for m in models} == {"READY"}
    present = set(pack_sizes(run.info.experiment_id))
    for epoch, model in enumerate(models, start=1):
        manifest = manifest_of(model, tmp_path)
        assert set(manifest.packs) <= present
        assert restored(model, manifest, tmp_path) == sha256(workdir / "ckpt" / f"k-{epoch}.keras")
    again = subprocess.run([*CLI, "sync"], cwd=workdir, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to sync" in again.stdout
    assert len(logged_models(run.info.run_id)) == 4


@pytest.fixture(scope="module")
def unproxied_server(tmp_path_factory):
    """`mlflow server --no-serve-artifacts`: the client writes the chunk store (a local folder) itself."""
    from support.mlflow_server import MlflowServer

    server = MlflowServer(str(tmp_path_factory.mktemp("unproxied")), serve_artifacts=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["no-serve-artifacts", "production"])
def remote_store(request, workdir, monkeypatch):
    """A server whose artifacts the client writes itself, and the production stack (PostgreSQL, S3 via moto)."""
    server = request.getfixturevalue(
        "unproxied_server" if request.param == "no-serve-artifacts" else "production_stack"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", f"incremental-{request.param}-{os.getpid()}-{id(workdir)}")
    mlflow.set_tracking_uri(server.url)
    yield server.url
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_the_chunk_store_works_wherever_the_artifacts_go(remote_store, workdir, tmp_path):
    models = logged_models(fit_run("ckpt/r-{epoch}.keras", epochs=2))
    assert {str(m.status) for m in models} == {"READY"}
    first, second = (manifest_of(m, tmp_path) for m in models)
    sizes = pack_sizes(models[0].experiment_id)
    assert set(sizes) == set(first.packs) | set(second.packs)
    assert sum(sizes[p] for p in set(second.packs) - set(first.packs)) < first.size * 0.25
    for epoch, (model, manifest) in enumerate(zip(models, (first, second)), start=1):
        assert restored(model, manifest, tmp_path) == sha256(workdir / "ckpt" / f"r-{epoch}.keras")


def test_a_file_that_no_longer_matches_its_sha256_is_set_aside_not_logged(embedded_store, workdir):
    from tracked_ckpt.publisher import Publisher
    from tracked_ckpt.spool import Spool, SpoolEntry

    (workdir / "m.weights.h5").write_bytes(os.urandom(200_000))
    tracker = MlflowTracker()
    destination = tracker.start()
    spool = Spool(workdir / "spool")
    record = CheckpointRecord(
        name="m-e0001",
        epoch=1,
        step=1,
        monitor="loss",
        mode="min",
        is_best=False,
        sha256="0" * 64,  # what was hashed at save time; the bytes on disk are not those
        size_bytes=200_000,
        format="weights.h5",
        filepath=str(workdir / "m.weights.h5"),
        keras_version="3",
        backend="tensorflow",
        storage="incremental",
    )
    entry = SpoolEntry(spool.new_id(), record, spool.stage(str(workdir / "m.weights.h5")), {"mlflow": destination})
    spool.write(entry)
    publisher = Publisher({"mlflow": tracker}, spool, asynchronous=False)
    publisher.submit(entry)
    report = publisher.close(timeout=60)  # a retried error would leave it pending, not failed
    tracker.finish()

    ((failed, message),) = report.failed
    assert "ChecksumError" in message and "no longer matches the sha256" in message and "\n" not in message
    assert spool.is_parked(failed)  # kept for `tracked-ckpt sync --retry-failed`, not retried forever
    assert logged_models(destination["run_id"]) == []


class CrashingUploads(IncrementalUploads):
    """The first attempt dies once its packs are up and its LoggedModel exists, before the manifest."""

    def __init__(self):
        super().__init__()
        self.crashed = False

    def write_manifest(self, stored, folder):
        if not self.crashed:
            self.crashed = True
            raise ConnectionError("killed mid-upload")
        super().write_manifest(stored, folder)


class CrashesBeforeTheManifest(MlflowTracker):
    incremental_uploads = CrashingUploads


def test_a_first_attempt_that_died_before_its_manifest_is_completed_by_the_retry(store, workdir, tmp_path):
    from tracked_ckpt.publisher import Publisher
    from tracked_ckpt.spool import Spool

    (workdir / "m.weights.h5").write_bytes(os.urandom(300_000))
    tracker = CrashesBeforeTheManifest()
    destination = tracker.start()
    spool = Spool(workdir / "spool")
    entry = entry_for(spool, str(workdir / "m.weights.h5"), 1)
    entry.record = dataclasses.replace(entry.record, storage="incremental", format="weights.h5")
    entry.destinations = {"mlflow": destination}
    spool.write(entry)
    publisher = Publisher({"mlflow": tracker}, spool, asynchronous=False, initial_backoff=0.01)
    publisher.submit(entry)  # the first attempt leaves its packs and a PENDING model behind
    assert entry.attempts == 1 and not entry.done
    assert [str(m.status) for m in logged_models(destination["run_id"])] == ["PENDING"]
    packs_before = pack_sizes(destination["experiment_id"])
    report = publisher.close(timeout=60)  # the retry finds that model and completes it
    tracker.finish()

    assert report.ok
    (model,) = logged_models(destination["run_id"])
    assert (model.model_id, str(model.status)) == (report.logged[0].ref, "READY")
    assert holds_no_copy(model)
    assert model.tags[DESCRIPTION_TAG] == "incremental: 300.0 KB new of 300.0 KB"  # what the first attempt sent
    assert pack_sizes(destination["experiment_id"]) == packs_before  # the retry found its packs: none again
    manifest = manifest_of(model, tmp_path)
    assert restored(model, manifest, tmp_path) == sha256(workdir / "m.weights.h5") == model.tags["tracked_ckpt.sha256"]
