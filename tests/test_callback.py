"""TrackedModelCheckpoint against a real MLflow server and the embedded sqlite store."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import InjectMetric, fit, git, head, make_data, make_model, make_repo, sha256
from support.mlflow_runs import logged_models

from tracked_ckpt import SCHEMA_KEYS, TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker


def only_run_id() -> str:
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "Default")
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0].info.run_id


def downloaded_checkpoint(model, tmp_path) -> str:
    """Download a LoggedModel's artifacts and return the checkpoint file in them."""
    dst = tmp_path / f"dl-{model.model_id}"
    local = mlflow.artifacts.download_artifacts(artifact_uri=model.artifact_location, dst_path=str(dst))
    fmt = model.tags["tracked_ckpt.format"]
    if fmt == "keras":
        return os.path.join(local, "data", "model.keras")
    return os.path.join(local, os.path.basename(model.tags["tracked_ckpt.filepath"]))


def test_each_epoch_is_one_logged_model_with_the_schema(store, workdir):
    callback = TrackedModelCheckpoint("ckpt/tiny-{epoch:02d}.keras", upload="async")
    _, history = fit(callback)
    run_id = only_run_id()
    models = logged_models(run_id)
    assert [m.name for m in models] == ["tiny-e0001", "tiny-e0002", "tiny-e0003"]
    best = None
    for epoch, model in enumerate(models, start=1):
        tags = {k.removeprefix("tracked_ckpt."): v for k, v in model.tags.items() if k.startswith("tracked_ckpt.")}
        assert set(tags) <= set(SCHEMA_KEYS)
        assert tags["epoch"] == str(epoch)
        assert tags["step"] == str(epoch * 4)  # 30 training samples / batch 8 -> 4 batches an epoch
        assert tags["monitor"] == "val_loss" and tags["mode"] == "min"
        value = history.history["val_loss"][epoch - 1]
        assert float(tags["value"]) == pytest.approx(value, rel=1e-6)
        is_best = best is None or value < best
        best = value if is_best else best
        assert tags["is_best"] == ("true" if is_best else "false")
        local = workdir / "ckpt" / f"tiny-{epoch:02d}.keras"
        assert tags["sha256"] == sha256(local)
        assert tags["size_bytes"] == str(local.stat().st_size)
        assert tags["format"] == "keras"
        assert tags["filepath"] == str(local)
        assert tags["keras_version"] == keras.__version__ and tags["backend"] == keras.backend.backend()
        assert sha256(downloaded_checkpoint(model, workdir)) == tags["sha256"]
        metrics = {m.key: (m.value, m.step) for m in model.metrics}
        assert metrics["val_loss"] == (pytest.approx(value, rel=1e-6), epoch)
        assert metrics["loss"][0] == pytest.approx(history.history["loss"][epoch - 1], rel=1e-6)
        assert str(model.status) == "READY"
    # The run was started by the callback and ended by it.
    assert mlflow.get_run(run_id).info.status == "FINISHED"
    assert callback.last_report.ok and len(callback.last_report.logged) == 3
    # Nothing is left in the spool once everything is confirmed, and the spool itself is gone.
    assert not os.path.exists(callback.spool.directory)
    assert sorted(os.listdir(workdir / "ckpt")) == ["tiny-01.keras", "tiny-02.keras", "tiny-03.keras"]


def test_fixed_filepath_logs_each_epochs_own_content(store, workdir):
    callback = TrackedModelCheckpoint("ckpt/last.keras")
    fit(callback, epochs=4)
    models = logged_models(only_run_id())
    assert len(models) == 4
    hashes = [m.tags["tracked_ckpt.sha256"] for m in models]
    assert len(set(hashes)) == 4, "each epoch's upload must carry that epoch's bytes"
    for model in models:
        assert sha256(downloaded_checkpoint(model, workdir)) == model.tags["tracked_ckpt.sha256"]
    assert hashes[-1] == sha256(workdir / "ckpt" / "last.keras")


class HeldUpload(MlflowTracker):
    """The real MLflow tracker, except that epoch 1's upload starts only once `go` is set."""

    def __init__(self, go: threading.Event):
        super().__init__()
        self.go = go

    def log_checkpoint(self, record, path, destination, *, first_attempt=False):
        if record.epoch == 1:
            assert self.go.wait(60), "epoch 2 was never saved"
        return super().log_checkpoint(record, path, destination, first_attempt=first_attempt)


class RewriteWitness(keras.callbacks.Callback):
    """After the checkpoint callback: keeps epoch 1's bytes, then lets epoch 1's upload go once epoch 2
    rewrote the file."""

    def __init__(self, path, go: threading.Event):
        super().__init__()
        self.path, self.go, self.first = path, go, None

    def on_epoch_end(self, epoch, logs=None):
        with open(self.path, "rb") as f:
            data = f.read()
        if epoch == 0:
            self.first = data
        elif epoch == 1:
            assert data != self.first  # Keras rewrote the fixed path while epoch 1 still waited to upload
            self.go.set()


@pytest.mark.parametrize("spool_on", ["same filesystem", "another filesystem"])
def test_a_fixed_path_rewritten_while_its_previous_version_uploads(embedded_store, workdir, spool_on):
    spool_dir = None
    if spool_on == "another filesystem":  # no hard link possible: the spool copies, hashing as it copies
        if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(workdir).st_dev:
            pytest.skip("no second filesystem (/dev/shm) here")
        spool_dir = tempfile.mkdtemp(prefix="tracked-ckpt-spool-", dir="/dev/shm")
    try:
        go = threading.Event()
        path = str(workdir / "ckpt" / "last.keras")
        witness = RewriteWitness(path, go)
        callback = TrackedModelCheckpoint(path, tracker=HeldUpload(go), spool_dir=spool_dir)
        model = make_model()
        x, y = make_data()
        model.fit(x, y, validation_split=0.25, epochs=2, batch_size=8, verbose=0, callbacks=[callback, witness])
        assert callback.last_report.ok
        first, second = logged_models(only_run_id())
        expected = hashlib.sha256(witness.first).hexdigest()
        assert first.tags["tracked_ckpt.sha256"] == expected != second.tags["tracked_ckpt.sha256"]
        with open(downloaded_checkpoint(first, workdir), "rb") as f:
            assert f.read() == witness.first  # epoch 1's bytes, not half of epoch 2's
        assert first.tags["tracked_ckpt.size_bytes"] == str(len(witness.first))
        assert second.tags["tracked_ckpt.sha256"] == sha256(path)
    finally:
        if spool_dir is not None:
            shutil.rmtree(spool_dir, ignore_errors=True)


def test_save_best_only_logs_only_the_epochs_keras_saved(embedded_store, workdir):
    scores = [0.5, 0.7, 0.4, 0.6, 0.3]
    callback = TrackedModelCheckpoint("ckpt/best.keras", monitor="score", mode="min", save_best_only=True)
    fit(callback, epochs=5, extra=[InjectMetric("score", scores)])
    models = logged_models(only_run_id())
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == [1, 3, 5]
    assert [float(m.tags["tracked_ckpt.value"]) for m in models] == [0.5, 0.4, 0.3]
    assert all(m.tags["tracked_ckpt.is_best"] == "true" for m in models)


def test_best_flag_follows_max_mode_and_missing_metric(embedded_store, workdir):
    scores = [0.2, None, 0.9, 0.5]
    callback = TrackedModelCheckpoint("ckpt/e{epoch}.keras", monitor="score", mode="max")
    fit(callback, epochs=4, extra=[InjectMetric("score", scores)])
    models = logged_models(only_run_id())
    assert [m.tags["tracked_ckpt.is_best"] for m in models] == ["true", "false", "true", "false"]
    assert "tracked_ckpt.value" not in models[1].tags  # absent, not an empty string
    assert models[2].tags["tracked_ckpt.mode"] == "max"


def test_integer_save_freq_logs_batch_saves(store, workdir):
    callback = TrackedModelCheckpoint("ckpt/b-{epoch}-{batch}.keras", save_freq=3)
    fit(callback, epochs=2)  # 4 batches an epoch -> saves after global batches 3 and 6
    models = logged_models(only_run_id())
    assert [m.name for m in models] == ["tiny-e0001-b000003", "tiny-e0002-b000002"]
    assert [m.tags["tracked_ckpt.step"] for m in models] == ["3", "6"]
    assert sorted(os.listdir(workdir / "ckpt")) == ["b-1-3.keras", "b-2-2.keras"]


def test_save_best_only_with_integer_save_freq_does_not_crash(embedded_store, workdir):
    # keras 3.15's own ModelCheckpoint raises TypeError here (monitor_op is None until epoch end).
    callback = TrackedModelCheckpoint("ckpt/b.keras", monitor="loss", save_best_only=True, save_freq=1)
    fit(callback, epochs=2, validation=False)
    models = logged_models(only_run_id())
    values = [float(m.tags["tracked_ckpt.value"]) for m in models]
    assert len(models) >= 1
    assert values == sorted(values, reverse=True)  # each save improved on the one before
    assert all(m.tags["tracked_ckpt.is_best"] == "true" for m in models)


def test_weights_only_checkpoint_carries_the_weights_file(store, workdir):
    callback = TrackedModelCheckpoint("ckpt/w-{epoch}.weights.h5", save_weights_only=True)
    model, _ = fit(callback, epochs=2)
    models = logged_models(only_run_id())
    assert len(models) == 2
    client = mlflow.MlflowClient()
    files = {a.path for a in client.list_logged_model_artifacts(models[1].model_id)}
    assert files == {"w-2.weights.h5", "tracked_ckpt.json"}
    local = downloaded_checkpoint(models[1], workdir)
    assert sha256(local) == sha256(workdir / "ckpt" / "w-2.weights.h5")
    fresh = make_model()
    fresh.load_weights(local)
    x, _ = make_data()
    np.testing.assert_allclose(fresh.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_logged_keras_checkpoint_loads_with_mlflow_and_predicts_like_the_file(store, workdir):
    callback = TrackedModelCheckpoint("ckpt/m-{epoch}.keras")
    fit(callback, epochs=2)
    last = logged_models(only_run_id())[-1]
    loaded = mlflow.keras.load_model(f"models:/{last.model_id}")
    local = keras.saving.load_model(workdir / "ckpt" / "m-2.keras")
    x, _ = make_data()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-6)
    # The optimizer state travels too, so training can resume from it.
    assert int(loaded.optimizer.iterations.numpy()) == 8


def test_async_and_sync_give_the_same_records(embedded_store, workdir):
    records = {}
    for upload in ("async", "sync"):
        with mlflow.start_run() as run:
            callback = TrackedModelCheckpoint(f"ckpt/{upload}-{{epoch}}.keras", upload=upload)
            fit(callback, epochs=2)
        records[upload] = [
            {
                k: v
                for k, v in m.tags.items()
                if k.startswith("tracked_ckpt.")
                and k not in ("tracked_ckpt.filepath", "tracked_ckpt.sha256", "tracked_ckpt.size_bytes")
            }
            | {"name": m.name, "metrics": sorted((x.key, x.step) for x in m.metrics)}
            for m in logged_models(run.info.run_id)
        ]
    assert records["async"] == records["sync"]
    assert len(records["sync"]) == 2


def test_uses_the_active_run_and_leaves_it_open(store, workdir):
    with mlflow.start_run() as run:
        callback = TrackedModelCheckpoint("ckpt/a-{epoch}.keras")
        fit(callback, epochs=1)
        assert mlflow.active_run().info.run_id == run.info.run_id
        assert mlflow.get_run(run.info.run_id).info.status == "RUNNING"
    assert len(logged_models(run.info.run_id)) == 1


def test_legacy_h5_full_model_is_logged_as_a_file(embedded_store, workdir):
    callback = TrackedModelCheckpoint("ckpt/full-{epoch}.h5")
    fit(callback, epochs=1)
    (model,) = logged_models(only_run_id())
    assert model.tags["tracked_ckpt.format"] == "h5"
    assert sha256(downloaded_checkpoint(model, workdir)) == sha256(workdir / "ckpt" / "full-1.h5")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tracker": "nosuch"}, "Unknown tracker 'nosuch'"),
        ({"mode": "biggest"}, "Invalid mode 'biggest'"),
        ({"upload": "later"}, "Invalid upload 'later'"),
        ({"name": "my.model/v1"}, "Invalid checkpoint name"),
    ],
)
def test_bad_arguments_fail_before_training(kwargs, message, workdir):
    with pytest.raises(ValueError, match=message):
        TrackedModelCheckpoint("ckpt/x.keras", **kwargs)


def test_bad_extension_fails_before_training(workdir):
    with pytest.raises(ValueError, match=r"\.keras"):
        TrackedModelCheckpoint("ckpt/x.pt")


def test_git_provenance_is_attached_without_credentials(embedded_store, workdir):
    make_repo(workdir)
    git(workdir, "remote", "add", "origin", "https://ci-bot:tok_PLANTED_SECRET@example.com/org/repo.git")
    (workdir / "train.py").write_text("print('changed')\n")  # dirty
    commit = head(workdir)
    callback = TrackedModelCheckpoint("ckpt/g-{epoch}.keras")
    fit(callback, epochs=1)
    (model,) = logged_models(only_run_id())
    assert model.tags["tracked_ckpt.git_commit"] == commit
    assert model.tags["mlflow.source.git.commit"] == commit
    assert model.tags["tracked_ckpt.git_branch"] == "main"
    assert model.tags["tracked_ckpt.git_dirty"] == "true"
    assert model.tags["tracked_ckpt.git_remote"] == "https://example.com/org/repo.git"
    assert not any("PLANTED_SECRET" in v for v in model.tags.values())


def test_verbose_prints_one_line_per_logged_checkpoint_and_a_summary(server_store, workdir, capsys):
    callback = TrackedModelCheckpoint("ckpt/v-{epoch}.keras", verbose=1)
    fit(callback, epochs=3)
    out = capsys.readouterr().out
    run_id = only_run_id()
    models = logged_models(run_id)
    for model in models:
        epoch = model.tags["tracked_ckpt.epoch"]
        assert f"Epoch {epoch}: logged {model.name} to MLflow ({model.model_id})" in out
    summary = [line for line in out.splitlines() if line.startswith("tracked-ckpt: logged 3 checkpoint(s)")]
    assert len(summary) == 1
    best = min(models, key=lambda m: float(m.tags["tracked_ckpt.value"]))
    assert f"best {best.name} (val_loss=" in summary[0]
    assert f"{server_store}/#/experiments/" in summary[0] and run_id in summary[0]
