"""Incremental checkpoints read back from MLflow: rebuilt byte for byte, promoted as complete models,
collected without losing a shared chunk (issue 25, the read side).

The checkpoints are logged by `support.incremental.log_incremental`, through the product's
`MlflowTracker.log_checkpoint` with a record saying `storage="incremental"`. Real Keras files, the
real `mlflow server` and the embedded store; a second process logging while `gc` runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import keras
import mlflow
import numpy as np
import pytest
from mlflow.entities import LoggedModelStatus
from support.helpers import child, make_data, make_model, sha256
from support.incremental import incremental_record, log_incremental
from support.tcp_proxy import TcpProxy

import tracked_ckpt
from tracked_ckpt import ChunkStoreError, TrackerError, cli
from tracked_ckpt.integrations.mlflow import JOB_KEY_TAG, MlflowTracker
from tracked_ckpt.integrations.mlflow_chunks import experiment_chunk_store
from tracked_ckpt.integrations.mlflow_manifests import materialize
from tracked_ckpt.pack_cache import PackCache, default_pack_cache
from tracked_ckpt.packs import CONDEMNED, PACKS

X = np.random.default_rng(3).random((5, 64), dtype=np.float32)
KINDS = ("keras", "h5", "weights.h5")


def frozen_base_model() -> keras.Model:
    """4.4 MB of frozen Dense kernels under a small trainable head (Adam): most bytes stay the same."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(1024, activation="relu", trainable=False)(inputs)
    hidden = keras.layers.Dense(1024, activation="relu", trainable=False)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(hidden), name="frozen")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


@pytest.fixture(scope="module")
def epochs(tmp_path_factory) -> dict[str, list[Path]]:
    """Three epochs of the frozen-base model, saved in each format."""
    folder = tmp_path_factory.mktemp("epochs")
    model = frozen_base_model()
    x = np.random.default_rng(0).random((32, 64), dtype=np.float32)
    y = np.arange(32) % 4
    files: dict[str, list[Path]] = {kind: [] for kind in KINDS}
    for epoch in range(3):
        model.fit(x, y, epochs=1, verbose=0)
        for kind in KINDS:
            files[kind].append(folder / f"epoch{epoch}.{kind}")
        model.save(files["keras"][-1])
        model.save_weights(files["weights.h5"][-1])
        legacy = keras.models.clone_model(model)  # the legacy `.h5` save needs its own compiled copy
        legacy.set_weights(model.get_weights())
        legacy.compile("adam", "sparse_categorical_crossentropy")
        legacy.save(files["h5"][-1])
    return files


def new_run(client: mlflow.MlflowClient, experiment: str) -> tuple[str, str]:
    """A run in `experiment` (created if needed): (experiment id, run id)."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    return experiment_id, client.create_run(experiment_id).info.run_id


def log(client, run_id: str, path: Path, epoch: int, writer_cache: PackCache, **kwargs) -> str:
    """Log one epoch's file as an incremental checkpoint; its model id."""
    record = incremental_record(str(path), epoch=epoch + 1, loss=1.0 / (epoch + 1), **kwargs)
    return log_incremental(client, run_id, str(path), record, writer_cache)


def checkpoint(run_id: str, model_id: str) -> tracked_ckpt.LoggedCheckpoint:
    (found,) = [c for c in tracked_ckpt.list_checkpoints(run_id=run_id) if c.id == model_id]
    assert found.record.storage == "incremental"
    return found


def manifest_packs(client: mlflow.MlflowClient, model_id: str, folder: Path) -> set[str]:
    """The packs the manifest of LoggedModel `model_id` references, read from the store."""
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{client.get_logged_model(model_id).artifact_location}/checkpoint.manifest.json",
        dst_path=str(folder / model_id),
    )
    return set(json.loads(Path(path).read_text())["packs"])


def predictions(model: keras.Model) -> np.ndarray:
    return np.asarray(model.predict(X, verbose=0))


def cached_pack(pack: str) -> Path:
    """Where this machine's pack cache keeps `pack`."""
    return Path(default_pack_cache().root, "packs", pack)


def cached_packs() -> set[str]:
    """The packs this machine's pack cache holds (what the store served it)."""
    return {path.name for path in (Path(default_pack_cache().root) / "packs").iterdir()}


@pytest.mark.parametrize("kind", KINDS)
def test_each_format_is_rebuilt_byte_identical_and_loads_like_the_file(store, workdir, epochs, kind):
    client = mlflow.MlflowClient()
    _, run_id = new_run(client, f"incremental-{kind}")
    path = epochs[kind][0]
    model_id = log(client, run_id, path, 0, PackCache(workdir / "writer-cache"))
    found = checkpoint(run_id, model_id)
    # The LoggedModel holds the manifest (and the model folder's small files), not the file.
    location = client.get_logged_model(model_id).artifact_location
    held = [a.path for a in client.list_logged_model_artifacts(model_id)]
    assert "checkpoint.manifest.json" in held and "data" not in held, location
    assert not any(name.endswith((".keras", ".h5")) for name in held), location

    downloaded = tracked_ckpt.download_checkpoint(checkpoint=found)
    assert sha256(downloaded) == sha256(path) and os.path.getsize(downloaded) == os.path.getsize(path)
    assert Path(downloaded).name == path.name

    if kind == "weights.h5":
        loaded = tracked_ckpt.load_model(checkpoint=found, model=frozen_base_model())
        original = frozen_base_model()
        original.load_weights(path)
    else:
        loaded = tracked_ckpt.load_model(checkpoint=found)
        original = keras.saving.load_model(path)
    np.testing.assert_allclose(predictions(loaded), predictions(original), rtol=1e-6)


def test_a_second_version_of_the_run_downloads_only_its_new_packs(server_store, workdir, epochs):
    client = mlflow.MlflowClient()
    _, run_id = new_run(client, "incremental-versions")
    writer_cache = PackCache(workdir / "writer-cache")
    first, second = (log(client, run_id, epochs["keras"][e], e, writer_cache) for e in (0, 1))
    store = experiment_chunk_store(client, client.get_run(run_id).info.experiment_id)
    packs = {model_id: manifest_packs(client, model_id, workdir) for model_id in (first, second)}
    shared, new = packs[second] & packs[first], packs[second] - packs[first]
    assert shared and new, packs  # the second version shares the frozen base's chunks

    assert cached_packs() == set()
    tracked_ckpt.download_checkpoint(checkpoint=checkpoint(run_id, first))
    assert cached_packs() == packs[first]
    downloaded = {pack: cached_pack(pack).stat().st_ino for pack in packs[first]}  # a new download is a new file
    path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint(run_id, second))
    assert sha256(path) == sha256(epochs["keras"][1])
    # The store served the second version its new packs only, far fewer bytes than the file.
    assert cached_packs() - packs[first] == new
    assert {pack: cached_pack(pack).stat().st_ino for pack in packs[first]} == downloaded
    new_bytes = sum(cached_pack(pack).stat().st_size for pack in new)
    assert new_bytes < os.path.getsize(epochs["keras"][1]) / 4
    assert {name.removeprefix(PACKS) for name in store.list(PACKS)} == packs[first] | new


def test_a_corrupt_or_missing_pack_fails_in_one_line_and_never_poisons_the_cache(embedded_store, workdir, epochs):
    client = mlflow.MlflowClient()
    experiment_id, run_id = new_run(client, "incremental-damage")
    model_id = log(client, run_id, epochs["keras"][0], 0, PackCache(workdir / "writer-cache"))
    found = checkpoint(run_id, model_id)
    store = experiment_chunk_store(client, experiment_id)
    (pack,) = (name.removeprefix(PACKS) for name in store.list(PACKS))
    on_disk = Path(store.label, "packs", pack)
    intact = on_disk.read_bytes()

    on_disk.write_bytes(intact[:1000] + bytes([intact[1000] ^ 0xFF]) + intact[1001:])
    with pytest.raises(ChunkStoreError) as failed:
        tracked_ckpt.load_model(checkpoint=found)
    message = str(failed.value)
    assert "\n" not in message and found.record.name in message and model_id in message
    assert "corrupt" in message and "load another version" in message
    assert not default_pack_cache().has(pack)  # the bad bytes were not kept

    on_disk.write_bytes(intact)
    np.testing.assert_allclose(
        predictions(tracked_ckpt.load_model(checkpoint=found)),
        predictions(keras.saving.load_model(epochs["keras"][0])),
        rtol=1e-6,
    )

    on_disk.unlink()  # gone from the store: the cache (and the download cache) still serve it
    tracked_ckpt.load_model(checkpoint=found)
    for item in Path(os.environ["TRACKED_CKPT_CACHE"]).iterdir():  # the download cache, not the pack cache
        if item.name != "chunks":
            shutil.rmtree(item)
    default_pack_cache().discard(pack)
    with pytest.raises(
        ChunkStoreError, match=rf"^{found.record.name} \({model_id}\) cannot be rebuilt: pack {pack} is"
    ):
        tracked_ckpt.load_model(checkpoint=found)

    # An unreadable manifest: loading says so in one line, and gc stops before it condemns anything.
    on_disk.write_bytes(intact)
    location = client.get_logged_model(model_id).artifact_location.removeprefix("file://")
    Path(location, "checkpoint.manifest.json").write_text("{}")
    with pytest.raises(ChunkStoreError, match=r"checkpoint.manifest.json is unreadable \(not a tracked-ckpt chunk"):
        tracked_ckpt.load_model(checkpoint=found)
    with pytest.raises(TrackerError, match=rf"stopped before deleting anything: .* of {found.record.name} "):
        tracked_ckpt.collect_garbage(experiment="incremental-damage", grace_seconds=0)
    assert store.list(CONDEMNED) == [] and store.list(PACKS) == [PACKS + pack]


# -- promotion -------------------------------------------------------------------------------------

LAYERS = """
import keras


@keras.saving.register_keras_serializable(package="incremental")
class Halve(keras.layers.Layer):
    def call(self, x):
        return x * 0.5
"""


def pyfunc_in_a_fresh_process(model_uri: str, workdir: Path) -> np.ndarray:
    """`mlflow.pyfunc.load_model(model_uri).predict(X)` in another process and folder (no PYTHONPATH)."""
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="jax")  # a .keras file loads on either backend
    done = subprocess.run(
        child("pyfunc_predict", model_uri, json.dumps(X.tolist())),
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return np.array(json.loads(done.stdout.strip().splitlines()[-1]))


def artifact_sizes(client: mlflow.MlflowClient, model_id: str, folder: str | None = None) -> dict[str, int | None]:
    return {a.path: a.file_size for a in client.list_logged_model_artifacts(model_id, folder)}


def model_text(client: mlflow.MlflowClient, model_id: str, name: str) -> str:
    """The text of one file of a LoggedModel's artifacts."""
    location = client.get_logged_model(model_id).artifact_location
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{name}")).read_text()


def test_promotion_writes_the_complete_model_into_the_same_logged_model_once(server_store, workdir, epochs):
    client = mlflow.MlflowClient()
    _, run_id = new_run(client, "incremental-promote")
    path = epochs["keras"][1]
    model_id = log(client, run_id, path, 1, PackCache(workdir / "writer-cache"))

    result = tracked_ckpt.promote_best("incremental-clf", run_id=run_id)
    assert result.promoted and result.checkpoint.id == model_id
    version = client.get_model_version_by_alias("incremental-clf", "champion")
    assert version.source == f"models:/{model_id}"  # the same checkpoint, now a complete model
    assert {"MLmodel", "requirements.txt", "python_env.yaml", "checkpoint.manifest.json"} <= set(
        artifact_sizes(client, model_id)
    )
    assert artifact_sizes(client, model_id, "data") == {"data/model.keras": os.path.getsize(path)}
    mlmodel = model_text(client, model_id, "MLmodel")
    assert "keras:" in mlmodel and "storage: incremental" in mlmodel

    expected = predictions(keras.saving.load_model(path))
    np.testing.assert_allclose(
        predictions(mlflow.keras.load_model("models:/incremental-clf@champion")), expected, rtol=1e-6
    )
    np.testing.assert_allclose(
        pyfunc_in_a_fresh_process("models:/incremental-clf@champion", workdir), expected, rtol=1e-5
    )

    # Once: a second registration reuses the version, and the model is not written again.
    assert not materialize(client, checkpoint(run_id, model_id), None)
    again = tracked_ckpt.promote_best("incremental-clf", run_id=run_id, alias="staging")
    assert again.version == result.version
    # Loading by name still rebuilds from the chunks, verified (also through `tracked-ckpt pull`).
    assert cli.main(["pull", "incremental-clf", "-o", str(workdir / "pulled")]) == 0
    assert sha256(workdir / "pulled" / path.name) == sha256(path)


def test_a_checkpoint_logged_with_its_description_keeps_signature_and_code_when_promoted(
    embedded_store, workdir, monkeypatch
):
    src = workdir / "src"
    src.mkdir()
    (src / "incremental_layers.py").write_text(LAYERS)
    monkeypatch.syspath_prepend(str(src))
    import incremental_layers

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(3), incremental_layers.Halve(), keras.layers.Dense(1)]
    )
    model.compile("adam", "mse")
    path = workdir / "custom.keras"
    model.save(path)
    client = mlflow.MlflowClient()
    _, run_id = new_run(client, "incremental-described")
    record = incremental_record(str(path), base="custom", model=model, code_paths=(str(src / "incremental_layers.py"),))
    model_id = log_incremental(client, run_id, str(path), record, PackCache(workdir / "wc"))
    assert "data" not in artifact_sizes(client, model_id)  # the description, without the file

    tracked_ckpt.promote_best("incremental-custom", run_id=run_id)
    assert artifact_sizes(client, model_id, "data") == {"data/model.keras": os.path.getsize(path)}
    mlmodel = model_text(client, model_id, "MLmodel")
    assert "signature:" in mlmodel and "code: code" in mlmodel
    np.testing.assert_allclose(
        pyfunc_in_a_fresh_process("models:/incremental-custom@champion", workdir), predictions(model), rtol=1e-5
    )


# -- garbage collection ------------------------------------------------------------------------------


def wait_for(path: Path, process: subprocess.Popen, log: Path) -> None:
    """Until `path` exists; fails if `process` ends first (or after 300 s)."""
    deadline = time.monotonic() + 300
    while not path.exists():
        assert process.poll() is None, f"the writer ended ({process.returncode}): {log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {path.name} after 300 s"
        time.sleep(0.05)


def test_deleting_keeps_shared_packs_and_gc_frees_the_rest_while_another_process_logs(server_store, workdir, epochs):
    client = mlflow.MlflowClient()
    experiment = "incremental-gc"
    experiment_id, run_id = new_run(client, experiment)
    writer_cache = PackCache(workdir / "writer-cache")
    ids = [log(client, run_id, epochs["keras"][e], e, writer_cache) for e in range(3)]
    packs = {model_id: manifest_packs(client, model_id, workdir) for model_id in ids}
    store = experiment_chunk_store(client, experiment_id)

    def in_store() -> set[str]:
        return {name.removeprefix(PACKS) for name in store.list(PACKS)}

    # keep_top_k's path: the two older checkpoints go, the packs stay (the newest shares some).
    destination = {"tracking_uri": server_store, "experiment_id": experiment_id, "run_id": run_id}
    for old in ids[:2]:
        assert MlflowTracker().delete_checkpoint(old, destination)
    kept = packs[ids[2]]
    orphans = (packs[ids[0]] | packs[ids[1]]) - kept
    assert orphans and kept & packs[ids[0]], packs
    assert in_store() == kept | orphans

    # A second process logs into the experiment: its packs are uploaded, its manifest not yet written.
    _, writer_run = new_run(client, experiment)
    markers = workdir / "writer"
    markers.mkdir()
    log_path = workdir / "writer.log"
    with open(log_path, "w") as log_file:
        writer = subprocess.Popen(
            child("incremental_writer", writer_run, markers), stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        wait_for(markers / "uploaded", writer, log_path)
        writing = set((markers / "uploaded").read_text().split())
        assert writing and not writing & (kept | orphans)

        (first,) = tracked_ckpt.collect_garbage(experiment=experiment, grace_seconds=3600)
        assert first.checkpoints == 1 and first.collected.live == len(kept)
        assert set(first.collected.condemned) == orphans | writing and not first.collected.deleted
        (second,) = tracked_ckpt.collect_garbage(experiment=experiment, grace_seconds=3600)
        assert not second.collected.condemned and not second.collected.deleted
        assert set(second.collected.waiting) == orphans | writing
        assert in_store() == kept | orphans | writing  # within the grace period nothing goes

        # The manifest is written, the LoggedModel still PENDING: it is live. With no grace left,
        # `tracked-ckpt gc` deletes the orphans and rescues the writer's packs.
        (markers / "go-manifest").touch()
        wait_for(markers / "manifest", writer, log_path)
        assert client.get_logged_model((markers / "manifest").read_text()).status == LoggedModelStatus.PENDING
        done = subprocess.run(
            [sys.executable, "-m", "tracked_ckpt.cli", "gc", "--experiment", experiment, "--grace", "0"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        line = done.stdout.strip()
        assert re.fullmatch(
            rf".*tracked-ckpt-chunks: 2 live checkpoint\(s\) keep {len(kept | writing)} pack\(s\); condemned 0, "
            rf"rescued {len(writing)}, deleted {len(orphans)} \(\d+(\.\d)? [KM]B freed\), "
            "0 waiting for the grace period",
            line,
        ), line
        assert in_store() == kept | writing

        (markers / "go-finish").touch()
        wait_for(markers / "done", writer, log_path)
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()

    (last,) = tracked_ckpt.collect_garbage(experiment=experiment, grace_seconds=0)
    assert not (last.collected.condemned or last.collected.deleted or last.collected.missing)
    # Every checkpoint left loads, verified.
    left = tracked_ckpt.list_checkpoints(experiment=experiment)
    assert sorted(c.record.name for c in left) == ["net-e0003", "writer-e0001"]
    for found in left:
        assert sha256(tracked_ckpt.download_checkpoint(checkpoint=found)) == found.record.sha256


def test_gc_downloads_a_ready_checkpoint_s_manifest_once(server_store, workdir, epochs, monkeypatch):
    """A READY LoggedModel's manifest never changes: gc keeps it in the local cache after its first run."""
    client = mlflow.MlflowClient()
    experiment = "incremental-gc-manifests"
    _, run_id = new_run(client, experiment)
    ids = [log(client, run_id, epochs["keras"][e], e, PackCache(workdir / "writer-cache")) for e in range(2)]
    manifest_downloads = []
    with TcpProxy(server_store) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        mlflow.set_tracking_uri(proxy.url)
        for _ in range(2):
            proxy.reset()
            (collected,) = tracked_ckpt.collect_garbage(experiment=experiment, grace_seconds=3600)
            assert collected.checkpoints == 2 and not collected.collected.condemned
            manifest_downloads.append(sum("checkpoint.manifest.json" in path for _, path in proxy.requests))

    mlflow.set_tracking_uri(server_store)
    assert manifest_downloads[0] >= len(ids) and manifest_downloads[1] == 0  # requests naming a manifest
    for model_id in ids:
        manifest_packs(client, model_id, workdir)  # downloads it into workdir/<model id>
        assert default_pack_cache().manifest(model_id) == (workdir / model_id / "checkpoint.manifest.json").read_bytes()
    # A damaged local copy (a crash while it was written) is read from the tracker again, not trusted.
    default_pack_cache().keep_manifest(ids[0], b"")
    (collected,) = tracked_ckpt.collect_garbage(experiment=experiment, grace_seconds=3600)
    assert collected.checkpoints == 2 and collected.collected.live > 0 and not collected.collected.condemned
    assert default_pack_cache().manifest(ids[0]) == (workdir / ids[0] / "checkpoint.manifest.json").read_bytes()


def test_resume_by_job_key_continues_from_an_incremental_checkpoint(embedded_store, workdir, monkeypatch):
    monkeypatch.setenv("TRACKED_CKPT_LEASE_SECONDS", "2")
    x, y = make_data()
    trained = make_model()
    trained.fit(x, y, epochs=2, batch_size=8, shuffle=False, verbose=0)
    path = workdir / "k-2.keras"
    trained.save(path)
    client = mlflow.MlflowClient()
    run_id = client.create_run("0", tags={JOB_KEY_TAG: "incremental-job"}).info.run_id
    record = dataclasses.replace(incremental_record(str(path), base="tiny", epoch=2), step=10)
    log_incremental(client, run_id, str(path), record, PackCache(workdir / "writer-cache"))

    (workdir / "new-machine").mkdir()
    monkeypatch.chdir(workdir / "new-machine")  # an empty disk: the job comes back from the tracker
    callback = tracked_ckpt.TrackedModelCheckpoint("ckpt/k-{epoch}.keras", monitor="loss", resume="incremental-job")
    model = make_model()
    history = model.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0, callbacks=[callback])
    assert history.epoch == [2, 3]  # epochs 1 and 2 came back from the chunks
    uninterrupted = make_model()
    uninterrupted.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0)
    for resumed, expected in zip(model.get_weights(), uninterrupted.get_weights(), strict=True):
        np.testing.assert_allclose(resumed, expected, rtol=1e-5, atol=1e-6)
