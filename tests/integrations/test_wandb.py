"""The W&B tracker.

Two layers:

* the real wandb SDK in offline mode, driven by real Keras training: after each
  fit, the test reads back the artifact and history records the SDK wrote into
  the offline run's transaction log (`wandb_records`) and checks every
  checkpoint, alias and metadata value against the files Keras wrote. No mocks.
* the remote side (searching a run's versions, downloading one with its sha256
  checked) through `WandbTracker` and the registry helper against
  `wandb_fake.FakeServer`, an in-memory W&B that follows W&B's versioning and
  alias rules (checked here too); a contract test keeps the fake's surface
  identical to the real `wandb.Api` / `wandb.Artifact`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import inspect
import json
import os
import threading

import keras
import numpy as np
import pytest
import wandb
import wandb.apis.public
import wandb.errors
from support.wandb_fake import FakeApi, FakeArtifact, FakeCollection, FakeRun, FakeServer
from support.wandb_records import history_rows, logged_artifacts, run_dirs

import tracked_ckpt
from tracked_ckpt import SCHEMA_KEYS, CheckpointRecord, TrackedModelCheckpoint
from tracked_ckpt.files import sha256_file
from tracked_ckpt.integrations import wandb_schema as wb
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.tracker import ChecksumError, Tracker, resolve_tracker

REGISTRY = "wandb-registry-model"

# Scripted val_loss per epoch: epoch 2 does not improve, so `best` goes to epochs 1 and 3.
VAL_LOSSES = [0.5, 0.7, 0.4]


class ScriptedValLoss(keras.callbacks.Callback):
    """Overwrites val_loss in the epoch logs (shared with later callbacks) with `VAL_LOSSES`."""

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = VAL_LOSSES[epoch]


def tiny_model() -> keras.Model:
    """The W&B tests' model, "tiny": 4 inputs, 4 relu units, 1 output; every random seed set first."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(1)], name="tiny"
    )
    model.compile(optimizer="adam", loss="mse")
    return model


def train(filepath: str, epochs: int = 3, **kwargs) -> TrackedModelCheckpoint:
    """Fit a tiny model (48 training samples, 3 batches per epoch) with a TrackedModelCheckpoint."""
    model = tiny_model()
    x, y = np.random.rand(64, 4), np.random.rand(64, 1)
    kwargs.setdefault("tracker", "wandb")
    checkpoint = TrackedModelCheckpoint(filepath, log_git=False, **kwargs)
    model.fit(
        x,
        y,
        validation_split=0.25,
        batch_size=16,
        epochs=epochs,
        callbacks=[ScriptedValLoss(), checkpoint],
        verbose=0,
    )
    return checkpoint


def checkpoint_files(root) -> list[str]:
    return sorted(name for name in os.listdir(root / "ckpt") if not name.startswith("."))


def the_run_dir(root) -> str:
    (run_dir,) = run_dirs(str(root / "wandb_dir"))
    return run_dir


def assert_logged_as_schema(artifacts, checkpoint: TrackedModelCheckpoint, run_dir: str):
    """Every logged version: one file, right collection, metadata == the record, file == its sha256."""
    records = [entry.record for entry, tracker, _ in checkpoint.last_report.logged if tracker == "wandb"]
    assert len(artifacts) == len(records)
    run_id = os.path.basename(run_dir).rsplit("-", 1)[1]
    for artifact, record in zip(artifacts, records):
        assert artifact.name == f"tiny-{run_id}"
        assert artifact.type == "model"
        assert artifact.metadata == wb.artifact_metadata(record, run_id)
        assert set(artifact.metadata) <= {*SCHEMA_KEYS, "run_id", "batch", "metrics"}
        assert artifact.metadata["metrics"] == pytest.approx(dict(record.metrics))
        (logged_file,) = artifact.files
        assert logged_file.path == os.path.basename(record.filepath)
        # The file the record points at is inside the run dir (syncable) and is the checkpoint.
        assert logged_file.local_path.startswith(run_dir + os.sep)
        assert sha256_file(logged_file.local_path) == (record.sha256, record.size_bytes)
        with open(logged_file.local_path, "rb") as f:
            md5 = base64.b64encode(hashlib.md5(f.read()).digest()).decode()
        assert logged_file.md5_b64 == md5
    return records


# -- real SDK, offline, real training -----------------------------------------------------


def test_tracker_is_resolved_by_name(wandb_env):
    tracker = resolve_tracker("wandb")
    assert isinstance(tracker, WandbTracker) and isinstance(tracker, Tracker)
    assert (tracker.name, tracker.display_name) == ("wandb", "W&B")


def test_per_epoch_saves_one_version_each_with_epoch_and_best_aliases(wandb_env):
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"))

    run_dir = the_run_dir(wandb_env)
    artifacts = logged_artifacts(run_dir)
    records = assert_logged_as_schema(artifacts, checkpoint, run_dir)
    assert [a.metadata["epoch"] for a in artifacts] == [1, 2, 3]
    assert [a.metadata["value"] for a in artifacts] == pytest.approx(VAL_LOSSES)
    assert [a.metadata["is_best"] for a in artifacts] == [True, False, True]
    assert [sorted(a.aliases) for a in artifacts] == [
        ["best", "epoch-1", "latest"],
        ["epoch-2", "latest"],
        ["best", "epoch-3", "latest"],
    ]
    for artifact, record in zip(artifacts, records):
        assert artifact.metadata["format"] == "keras"
        assert artifact.metadata["step"] == 3 * artifact.metadata["epoch"]
        # The file Keras wrote for that epoch is the file that was logged.
        assert sha256_file(record.filepath)[0] == artifact.metadata["sha256"]
        assert artifact.files[0].path == f"m-{record.epoch:02d}.keras"
    # The epoch logs went to the history, on their own x-axis.
    rows = [r for r in history_rows(run_dir) if "checkpoint/epoch" in r]
    assert [r["checkpoint/epoch"] for r in rows] == [1, 2, 3]
    assert [r["checkpoint/val_loss"] for r in rows] == pytest.approx(VAL_LOSSES)
    assert [r["checkpoint/step"] for r in rows] == [3, 6, 9]
    # Offline references name the version by its epoch alias; nothing is left to upload.
    assert [ref for _, _, ref in checkpoint.last_report.logged] == [
        f"tracked-ckpt-test/{artifacts[0].name}:epoch-{n}" for n in (1, 2, 3)
    ]
    assert checkpoint.last_report.ok
    assert wandb.run is None  # the tracker started the run, so it finished it


def test_a_fit_with_incremental_storage_logs_manifests_and_loads_back_offline(wandb_env):
    """storage="incremental" through a real fit: each version a manifest and packs; loaded from the run's folder."""
    pytest.importorskip("pyfastcdc")  # the `incremental` extra
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"), storage="incremental")

    run_dir = the_run_dir(wandb_env)
    run_id = os.path.basename(run_dir).rsplit("-", 1)[1]
    artifacts = logged_artifacts(run_dir)
    records = [entry.record for entry, _, _ in checkpoint.last_report.logged]
    assert [r.storage for r in records] == ["incremental"] * 3
    for artifact, record in zip(artifacts, records, strict=True):
        assert artifact.metadata == wb.artifact_metadata(record, run_id)
        assert "checkpoint.manifest.json" in {f.path for f in artifact.files}
        assert artifact.description.startswith("incremental: ")
    listed = tracked_ckpt.list_checkpoints(tracker="wandb", run_id=run_dir)
    assert [c.record.storage for c in listed] == ["incremental"] * 3
    for record, listed_one in zip(records, listed, strict=True):
        path = tracked_ckpt.download_checkpoint(checkpoint=listed_one, tracker="wandb", cache_dir=wandb_env / "dl")
        assert sha256_file(path) == (record.sha256, record.size_bytes)


def test_batch_saves_get_step_aliases(wandb_env):
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}-{batch:02d}.keras"), monitor="loss", save_freq=2)

    run_dir = the_run_dir(wandb_env)
    artifacts = logged_artifacts(run_dir)
    records = assert_logged_as_schema(artifacts, checkpoint, run_dir)
    # 3 batches per epoch, 9 in all, a save every 2 batches: global steps 2, 4, 6, 8.
    assert [a.metadata["step"] for a in artifacts] == [2, 4, 6, 8]
    assert [a.metadata["epoch"] for a in artifacts] == [1, 2, 2, 3]
    best_so_far = float("inf")
    for artifact, record in zip(artifacts, records):
        assert record.batch is not None
        is_best = artifact.metadata["value"] < best_so_far
        best_so_far = min(best_so_far, artifact.metadata["value"])
        assert artifact.metadata["is_best"] is is_best
        expected = {f"epoch-{record.epoch}", f"step-{record.step}", "latest"} | ({"best"} if is_best else set())
        assert set(artifact.aliases) == expected
        assert artifact.files[0].path == os.path.basename(record.filepath)


def test_save_best_only_logs_only_improving_epochs(wandb_env):
    checkpoint = train(str(wandb_env / "ckpt" / "best-{epoch:02d}.keras"), save_best_only=True)

    run_dir = the_run_dir(wandb_env)
    artifacts = logged_artifacts(run_dir)
    assert_logged_as_schema(artifacts, checkpoint, run_dir)
    assert [a.metadata["epoch"] for a in artifacts] == [1, 3]  # epoch 2 was not written, not logged
    assert all(a.metadata["is_best"] and "best" in a.aliases for a in artifacts)
    assert checkpoint_files(wandb_env) == ["best-01.keras", "best-03.keras"]


def test_weights_only_checkpoints(wandb_env):
    checkpoint = train(str(wandb_env / "ckpt" / "w-{epoch:02d}.weights.h5"), save_weights_only=True)

    run_dir = the_run_dir(wandb_env)
    artifacts = logged_artifacts(run_dir)
    assert_logged_as_schema(artifacts, checkpoint, run_dir)
    assert [a.metadata["format"] for a in artifacts] == ["weights.h5"] * 3
    assert [a.files[0].path for a in artifacts] == ["w-01.weights.h5", "w-02.weights.h5", "w-03.weights.h5"]
    assert all(a.type == "model" for a in artifacts)


def test_fixed_filepath_logs_every_rewrite_as_its_own_version(wandb_env):
    checkpoint = train(str(wandb_env / "ckpt" / "model.keras"))

    run_dir = the_run_dir(wandb_env)
    artifacts = logged_artifacts(run_dir)
    assert_logged_as_schema(artifacts, checkpoint, run_dir)
    assert [a.files[0].path for a in artifacts] == ["model.keras"] * 3
    # Each version keeps the bytes of its own epoch, although Keras overwrote the path.
    assert len({a.metadata["sha256"] for a in artifacts}) == 3
    assert len({a.digest for a in artifacts}) == 3
    assert sha256_file(str(wandb_env / "ckpt" / "model.keras"))[0] == artifacts[-1].metadata["sha256"]


def test_attaches_to_the_active_run_and_leaves_it_open(wandb_env):
    run = wandb.init(project="mine")
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"), epochs=1)
    assert wandb.run is run  # not finished by the tracker
    assert checkpoint.session.destinations["wandb"]["run_id"] == run.id
    run.log({"after": 1.0})
    run.finish()
    artifacts = logged_artifacts(the_run_dir(wandb_env))
    assert [(a.name, a.project) for a in artifacts] == [(f"tiny-{run.id}", "mine")]


def test_log_checkpoint_from_another_thread_is_idempotent(wandb_env, tmp_path):
    tracker = WandbTracker(project="direct")
    destination = tracker.start()
    record, path = make_record(tmp_path, epoch=1)
    refs = []
    for _ in range(2):  # the same record twice, each from a fresh background thread
        worker = threading.Thread(target=lambda: refs.append(tracker.log_checkpoint(record, path, destination)))
        worker.start()
        worker.join()
    tracker.finish()

    artifacts = logged_artifacts(the_run_dir(wandb_env))
    assert len(artifacts) == 1 and refs[0] == refs[1]
    assert artifacts[0].metadata == wb.artifact_metadata(record, destination["run_id"])
    assert len([r for r in history_rows(the_run_dir(wandb_env)) if "checkpoint/epoch" in r]) == 1


def test_another_tracker_resumes_the_run_to_log_leftovers(wandb_env, tmp_path):
    """What `tracked-ckpt sync` does: a fresh tracker gets the spooled destination of a finished run."""
    first = WandbTracker()
    destination = first.start()
    first.finish()
    record, path = make_record(tmp_path, epoch=4)

    later = WandbTracker()
    ref = later.log_checkpoint(record, path, destination)
    later.finish()

    original, resumed = run_dirs(str(wandb_env / "wandb_dir"))
    assert logged_artifacts(original) == []
    (artifact,) = logged_artifacts(resumed)
    assert artifact.run_id == destination["run_id"]
    assert artifact.name == f"tiny-{destination['run_id']}"
    assert ref.endswith(":epoch-4")


def test_start_with_resume_logs_into_the_earlier_run(wandb_env, tmp_path):
    """A restarted job (`TrackedModelCheckpoint(resume=True)`) passes the saved destination back."""
    first = WandbTracker(project="resumable")
    destination = first.start()
    first.finish(success=False)

    later = WandbTracker()
    again = later.start(resume=destination)
    record, path = make_record(tmp_path, epoch=2)
    later.log_checkpoint(record, path, again)
    later.finish()

    assert again == destination
    _, resumed = run_dirs(str(wandb_env / "wandb_dir"))
    (artifact,) = logged_artifacts(resumed)
    assert (artifact.run_id, artifact.project) == (destination["run_id"], "resumable")


class OnlineRunStub:
    """Stands in for an online `wandb.Run` (no W&B server can run here): `log_artifact` returns
    a version that is committed, as `v<N>`, only when `wait()` is called."""

    offline, disabled, id, project, entity = False, False, "onl1ne", "proj", "team"

    def __init__(self):
        self.logged, self.rows = [], []

    def log_artifact(self, artifact, aliases=None):
        self.logged.append((artifact, aliases))
        run, index = self, len(self.logged) - 1

        class Pending:
            committed = False

            def wait(self, timeout=None):
                self.committed = True
                return self

            @property
            def qualified_name(self):
                assert self.committed, "read before wait()"
                return f"{run.entity}/{run.project}/{artifact.name}:v{index}"

        return Pending()

    def log(self, data):
        self.rows.append(data)


def test_online_logging_uploads_the_spooled_file_and_waits_for_the_commit(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    run = OnlineRunStub()
    monkeypatch.setattr(wandb, "run", run)
    tracker = WandbTracker()
    destination = {"run_id": run.id, "project": "proj", "entity": "team", "mode": "online"}
    record, path = make_record(tmp_path, epoch=1)

    ref = tracker.log_checkpoint(record, path, destination)

    assert ref == "team/proj/tiny-onl1ne:v0"
    ((artifact, aliases),) = run.logged
    assert aliases == ["epoch-1", "best"] and artifact.metadata == wb.artifact_metadata(record, run.id)
    entry = artifact.manifest.entries["m-01.keras"]
    assert entry.local_path == path  # uploaded from the spool: no staging copy
    assert entry.skip_cache  # and no copy into W&B's cache afterwards
    assert not (tmp_path / "wandb_data").exists()
    assert run.rows == [{"checkpoint/val_loss": 1.0, "checkpoint/epoch": 1, "checkpoint/step": 10}]
    assert tracker.log_checkpoint(record, path, destination) == ref and len(run.logged) == 1


def test_disabled_mode_is_a_clean_no_op(wandb_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"), epochs=2)

    assert [ref for _, _, ref in checkpoint.last_report.logged] == ["disabled", "disabled"]
    assert checkpoint.last_report.ok
    assert not (wandb_env / "wandb_data" / "artifacts").exists()  # no staging copies
    for name in ("wandb_dir", "wandb_data", "wandb_cache", "artifacts", "home"):
        assert list((wandb_env / name).rglob("*")) == [], name
    assert not os.path.exists(os.path.join(os.path.expanduser("~"), ".local", "share", "wandb"))
    assert checkpoint_files(wandb_env) == ["m-01.keras", "m-02.keras"]
    assert sorted(p.name for p in (wandb_env / "ckpt").rglob("*.keras")) == [
        "m-01.keras",
        "m-02.keras",
    ]  # spool emptied


def test_offline_mode_makes_no_staging_or_cache_copies(wandb_env):
    train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"), epochs=1)
    assert not (wandb_env / "wandb_data" / "artifacts").exists()
    assert not (wandb_env / "wandb_cache" / "artifacts").exists()


def test_mlflow_and_wandb_each_get_each_checkpoint_once(wandb_env, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{wandb_env}/m.db")
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"), tracker=["mlflow", "wandb"])

    logged = checkpoint.last_report.logged
    assert sorted((entry.record.epoch, tracker) for entry, tracker, _ in logged) == [
        (epoch, tracker) for epoch in (1, 2, 3) for tracker in ("mlflow", "wandb")
    ]
    artifacts = logged_artifacts(the_run_dir(wandb_env))
    assert [a.metadata["epoch"] for a in artifacts] == [1, 2, 3]

    destination = checkpoint.session.destinations["mlflow"]
    client = mlflow.MlflowClient(destination["tracking_uri"])
    models = client.search_logged_models(experiment_ids=[destination["experiment_id"]])
    assert sorted(m.tags["tracked_ckpt.epoch"] for m in models) == ["1", "2", "3"]
    # The same record (same sha256) went to both.
    by_epoch = {int(m.tags["tracked_ckpt.epoch"]): m.tags["tracked_ckpt.sha256"] for m in models}
    assert by_epoch == {a.metadata["epoch"]: a.metadata["sha256"] for a in artifacts}


def test_names_and_aliases():
    record, _ = make_record(None, epoch=3, name="digits-e0003")
    assert wb.base_name(record) == "digits"
    assert wb.collection_name(record, "1a2b3c4d") == "digits-1a2b3c4d"
    assert wb.checkpoint_aliases(record) == ["epoch-3", "best"]
    batch = dataclasses.replace(record, name="digits-e0003-b000002", batch=2, step=42, is_best=False)
    assert wb.base_name(batch) == "digits"
    assert wb.checkpoint_aliases(batch) == ["epoch-3", "step-42"]
    long = dataclasses.replace(record, name="x" * 180 + "-e0003")
    assert len(wb.collection_name(long, "1a2b3c4d")) == 128
    # A run id with '-' in it (every job-key run has one) is read back from the metadata.
    run_id = wb.job_run_id("digits job")
    collection = wb.collection_name(record, run_id)
    assert wb.run_id_of(wb.artifact_metadata(record, run_id), collection) == run_id
    assert wb.base_of_collection(collection, run_id) == "digits"


# -- remote operations against the fake --------------------------------------------------


def make_record(directory, epoch: int, name: str | None = None, content: bytes | None = None):
    """A record for a small file written in `directory` (None: no file)."""
    data = content if content is not None else f"checkpoint {epoch}".encode()
    path = ""
    if directory is not None:
        path = os.path.join(str(directory), f"m-{epoch:02d}.keras")
        with open(path, "wb") as f:
            f.write(data)
    record = CheckpointRecord(
        name=name or f"tiny-e{epoch:04d}",
        epoch=epoch,
        step=10 * epoch,
        monitor="val_loss",
        mode="min",
        is_best=True,
        value=1.0 / epoch,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format="keras",
        filepath=path or f"/ckpt/m-{epoch:02d}.keras",
        keras_version=keras.__version__,
        backend="tensorflow",
        metrics={"val_loss": 1.0 / epoch},
    )
    return record, path


@pytest.fixture
def server():
    """A fake W&B holding one run's collection `tiny-r1` with versions v0..v2 (epochs 1-3)."""
    server = FakeServer(entity="team", project="proj")
    for epoch in (1, 2, 3):
        record, _ = make_record(None, epoch)
        record = dataclasses.replace(record, is_best=epoch != 2)
        server.log(
            wb.collection_name(record, "r1"),
            {os.path.basename(record.filepath): f"checkpoint {epoch}".encode()},
            wb.artifact_metadata(record, "r1"),
            wb.checkpoint_aliases(record),
            run_id="r1",
        )
    return server


def aliases_of(api, path):
    return sorted(api.artifact(path).aliases)


def test_fake_follows_wandb_alias_rules(server):
    api = server.api()
    assert aliases_of(api, "team/proj/tiny-r1:v0") == ["epoch-1"]
    assert aliases_of(api, "team/proj/tiny-r1:v2") == ["best", "epoch-3", "latest"]
    # Identical content is not a new version; it gets the aliases.
    again = server.log("tiny-r1", {"m-01.keras": b"checkpoint 1"}, {}, ["again"])
    assert again.version == "v0"
    assert aliases_of(api, "team/proj/tiny-r1:latest") == ["again", "epoch-1", "latest"]


def test_fake_moves_an_alias_off_its_previous_holder(server):
    api = server.api()
    moved = api.artifact("team/proj/tiny-r1:epoch-1")
    moved.aliases = [*moved.aliases, "best"]
    moved.save()
    assert aliases_of(api, "team/proj/tiny-r1:v0") == ["best", "epoch-1"]
    assert aliases_of(api, "team/proj/tiny-r1:v2") == ["epoch-3", "latest"]
    with pytest.raises(ValueError):
        moved.aliases = ["bad/alias"]


def test_fake_registry_links_have_their_own_versions_and_aliases(server):
    api = server.api()
    linked = api.artifact("team/proj/tiny-r1:best").link(f"{REGISTRY}/tiny-classifier", aliases=["staging"])
    assert linked.is_link and linked.qualified_name == "org/wandb-registry-model/tiny-classifier:v0"
    assert sorted(linked.aliases) == ["latest", "staging"]
    assert linked.metadata["epoch"] == 3
    # Promote epoch 1 to production: a second registry version; aliases of the run's collection unchanged.
    api.artifact("team/proj/tiny-r1:v0").link(f"{REGISTRY}/tiny-classifier", aliases=["production"])
    assert aliases_of(api, f"{REGISTRY}/tiny-classifier:v1") == ["latest", "production"]
    assert aliases_of(api, "team/proj/tiny-r1:v2") == ["best", "epoch-3", "latest"]
    # Linking the same source again reuses its link and moves the alias there.
    again = api.artifact("team/proj/tiny-r1:v2").link(f"{REGISTRY}/tiny-classifier", aliases=["production"])
    assert again.version == "v0"
    assert aliases_of(api, f"{REGISTRY}/tiny-classifier:production") == ["production", "staging"]


def test_fake_deletes_by_w_and_b_alias_rules(server):
    api = server.api()
    with pytest.raises(wandb.errors.CommError):
        api.artifact("team/proj/tiny-r1:v0").delete()  # holds epoch-1
    api.artifact("team/proj/tiny-r1:v0").delete(delete_aliases=True)
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [1, 2]
    api.artifact("team/proj/tiny-r1:v2").delete(delete_aliases=True)
    assert aliases_of(api, "team/proj/tiny-r1:latest") == ["epoch-2", "latest"]
    # Deleting a registry link only unlinks it.
    api.artifact("team/proj/tiny-r1:v1").link(f"{REGISTRY}/tiny-classifier", aliases=["staging"])
    api.artifact(f"{REGISTRY}/tiny-classifier:staging").delete()
    assert not api.artifact_exists(f"{REGISTRY}/tiny-classifier:staging")
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [1]


def test_search_checkpoints_by_metadata(server):
    tracker = WandbTracker(api=server.api())
    scope = tracker.scope("team/proj/r1", None)
    server.log("other", {"f.bin": b"x"}, {"note": "not ours"}, run_id="r1")  # skipped: not tracked-ckpt's

    def epochs(where):
        return [c.record.epoch for c in tracker.search_checkpoints(scope, where=where)]

    assert epochs(None) == [1, 2, 3]
    assert epochs({"is_best": True}) == [1, 3]
    assert epochs({"epoch": "2"}) == epochs({"epoch": 2.0}) == [2]
    assert epochs({"git_commit": "abc"}) == []
    (best,) = [c for c in tracker.search_checkpoints(scope) if "best" in c.aliases]
    assert best.id == "team/proj/tiny-r1:v2" and best.run_id == "r1"


def test_a_project_listing_reads_each_version_s_run(server):
    """Run ids come from the metadata (a job-key run id has '-' in it); older versions fall back to the name."""
    job_run = wb.job_run_id("digits job")
    record, _ = make_record(None, epoch=1, name="digits-e0001")
    server.log(
        wb.collection_name(record, job_run),
        {"m-01.keras": b"job checkpoint"},
        wb.artifact_metadata(record, job_run),
        wb.checkpoint_aliases(record),
        run_id=job_run,
    )
    legacy = {k: v for k, v in wb.artifact_metadata(record, "r2").items() if k != "run_id"}  # before run_id existed
    server.log(wb.collection_name(record, "r2"), {"m-01.keras": b"old checkpoint"}, legacy, run_id="r2")
    tracker = WandbTracker(api=server.api())
    listed = tracker.search_checkpoints(tracker.scope(None, "team/proj"), where={"name": "digits"})
    assert sorted((c.run_id, c.extra["base"], c.record.name) for c in listed) == [
        (job_run, "digits", "digits-e0001"),
        ("r2", "digits", "digits-e0001"),
    ]


def test_download_verifies_sha256(server, tmp_path):
    tracker = WandbTracker(api=server.api())
    first, _, third = tracker.search_checkpoints(tracker.scope("team/proj/r1", None))
    path = tracked_ckpt.download_checkpoint(checkpoint=third, tracker=tracker, cache_dir=tmp_path / "dl")
    with open(path, "rb") as f:
        assert f.read() == b"checkpoint 3"

    server.corrupt(first.id)
    with pytest.raises(ChecksumError):
        tracked_ckpt.download_checkpoint(checkpoint=first, tracker=tracker, cache_dir=tmp_path / "bad")


def test_offline_run_synced_into_the_fake_then_restored_by_alias(wandb_env):
    """From training to a loaded best model: what the SDK wrote, as W&B would store it after `wandb sync`."""
    checkpoint = train(str(wandb_env / "ckpt" / "model.keras"))
    run_id = checkpoint.session.destinations["wandb"]["run_id"]
    server = FakeServer(entity="team", project="tracked-ckpt-test")
    versions = server.sync(the_run_dir(wandb_env))
    api = server.api()
    collection = f"team/tracked-ckpt-test/tiny-{run_id}"

    assert [v.version for v in versions] == ["v0", "v1", "v2"]
    assert aliases_of(api, f"{collection}:v0") == ["epoch-1"]  # `best` moved on to epoch 3
    tracker = WandbTracker(api=api, mode="online")
    listed = tracker.search_checkpoints(tracker.scope(run_id, "team/tracked-ckpt-test"))
    (best,) = [c for c in listed if "best" in c.aliases]
    assert best.record.epoch == 3 and best.id == f"{collection}:v2" and best.run_id == run_id
    path = tracked_ckpt.download_checkpoint(checkpoint=best, tracker=tracker, cache_dir=wandb_env / "restore")
    restored = keras.saving.load_model(path)
    assert restored.name == "tiny"


# -- the fake cannot drift from W&B --------------------------------------------------------


@pytest.mark.parametrize(
    "fake, real",
    [
        (FakeApi, wandb.Api),
        (FakeArtifact, wandb.Artifact),
        (FakeRun, wandb.apis.public.Run),
        (FakeCollection, wandb.apis.public.ArtifactCollection),
    ],
)
def test_fake_matches_real_wandb_classes(fake, real):
    """Every public member of the fake exists on the real class, with the same parameters."""
    public = [name for name in vars(fake) if not name.startswith("_")]
    assert public
    for name in public:
        fake_attr = inspect.getattr_static(fake, name)
        assert hasattr(real, name), f"{real.__name__} has no {name!r}"
        real_attr = inspect.getattr_static(real, name)
        if isinstance(fake_attr, property):
            assert isinstance(real_attr, property), f"{real.__name__}.{name} is not a property"
            if fake_attr.fset is not None:
                assert real_attr.fset is not None, f"{real.__name__}.{name} cannot be set"
        else:
            fake_params = list(inspect.signature(fake_attr).parameters)
            real_params = list(inspect.signature(getattr(real, name)).parameters)
            assert fake_params == real_params, f"{name}: fake {fake_params} != real {real_params}"


class _ServiceKnowingOneEmptyProject:
    """A stand-in for the wandb-core service: its GraphQL knows project team/proj, and no run or artifact in it."""

    def feature_enabled(self, *args, **kwargs) -> bool:
        return False

    def execute_graphql(self, query, variables=None, parse=None, **kwargs):
        if (variables or {}).get("entity") == "team" and (variables or {}).get("project") == "proj":
            data = {"project": {"run": None, "artifactCollectionMembership": None}}
        else:
            data = {"project": None}
        return parse(json.dumps(data)) if parse else data


class _RealApiOnAStubService:
    """The real `wandb.Api` methods (W&B's own code and error wrapping) on `_ServiceKnowingOneEmptyProject`."""

    _service_api = _ServiceKnowingOneEmptyProject()
    settings = {"entity": "team", "project": "proj", "organization": None}
    default_entity = "team"
    api_key = None
    _runs: dict = {}
    _parse_path = wandb.Api._parse_path
    _parse_artifact_path = wandb.Api._parse_artifact_path
    _artifact = wandb.Api._artifact
    run = wandb.Api.run
    artifact = wandb.Api.artifact
    artifact_exists = wandb.Api.artifact_exists


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda api: api.run("team/proj/nope"), id="no such run"),
        pytest.param(lambda api: api.run("team/elsewhere/nope"), id="run in no such project"),
        pytest.param(lambda api: api.artifact("team/proj/nope:v0"), id="no such artifact"),
        pytest.param(lambda api: api.artifact("team/proj/nope:best"), id="no such alias"),
        pytest.param(lambda api: api.artifact("team/elsewhere/tiny-r1:v0"), id="artifact in no such project"),
        pytest.param(lambda api: api.artifact_exists("team/proj/nope:v0"), id="exists: no such artifact"),
    ],
)
def test_fake_raises_what_wandb_raises(server, call):
    """The fake's "not found" is W&B's: the same error types, inner error and message as the real Api."""
    real = _RealApiOnAStubService()
    try:
        expected = call(real)
    except wandb.errors.CommError as exc:
        with pytest.raises(wandb.errors.CommError) as fake:
            call(server.api())
        assert type(fake.value.exc) is type(exc.exc), (fake.value.exc, exc.exc)
        assert str(fake.value) == str(exc) and str(fake.value.exc) == str(exc.exc)
    else:
        assert expected is False  # artifact_exists
        assert call(server.api()) is False


def test_fake_instances_hold_only_private_state(server):
    api = server.api()
    artifact = api.artifact("team/proj/tiny-r1:v0")
    for obj in (artifact, api, *api.artifact_collections("team/proj", "model")):
        assert all(name.startswith("_") for name in vars(obj)), type(obj).__name__


def test_a_fit_ended_by_an_exception_finishes_its_run_failed_and_the_next_fit_gets_its_own(wandb_env):
    from support.wandb_records import finished_records

    class Pruned(Exception):
        pass

    class PruneAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Pruned()

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)], name="tiny")
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.rand(32, 4), np.random.rand(32, 1)
    first = TrackedModelCheckpoint("ckpt/p-{epoch}.keras", monitor="loss", tracker="wandb", log_git=False)
    try:
        model.fit(x, y, epochs=3, verbose=0, callbacks=[first, PruneAfterFirstEpoch()])
    except Pruned:
        pass
    second = train("ckpt/q-{epoch}.keras", epochs=2)
    assert first.last_report.ok and second.last_report.ok
    assert wandb.run is None  # neither run is left as W&B's active run
    runs = run_dirs(str(wandb_env / "wandb_dir"))
    assert len(runs) == 2
    assert first.session.destinations["wandb"]["run_id"] != second.session.destinations["wandb"]["run_id"]
    exits = [[r.exit.exit_code for r in finished_records(d) if r.WhichOneof("record_type") == "exit"] for d in runs]
    assert sorted(exits) == [[0], [1]]
    assert [len(logged_artifacts(d)) for d in runs] in ([1, 2], [2, 1])


def test_fits_that_need_not_wait_each_get_their_own_run(wandb_env):
    first = train("ckpt/a-{epoch}.keras", epochs=2, blocking=False)
    second = train("ckpt/b-{epoch}.keras", epochs=2, blocking=False)  # the first may still be ending
    assert tracked_ckpt.wait(timeout=120)
    assert first.last_report.ok and second.last_report.ok
    assert first.session.destinations["wandb"]["run_id"] != second.session.destinations["wandb"]["run_id"]
    assert len(run_dirs(str(wandb_env / "wandb_dir"))) == 2


class _FailingService(_ServiceKnowingOneEmptyProject):
    """A stand-in for the wandb-core service whose every request fails as the fake's `failure` makes it."""

    def __init__(self, server):
        self._server = server

    def execute_graphql(self, query, variables=None, parse=None, **kwargs):
        self._server.request()


@pytest.mark.parametrize("failure", ["http", "timeout"])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda api: api.run("team/proj/r1"), id="run"),
        pytest.param(lambda api: api.artifact("team/proj/tiny-r1:v0"), id="artifact"),
        pytest.param(lambda api: api.artifact_exists("team/proj/tiny-r1:v0"), id="artifact_exists"),
    ],
)
def test_fake_fails_as_wandb_fails(server, call, failure):
    """A failing server, through the real Api's own code and through the fake: the same answer or error."""
    real = _RealApiOnAStubService()
    real._service_api = _FailingService(server)
    server.failure = failure
    try:
        expected = call(real)
    except wandb.errors.CommError as exc:
        with pytest.raises(wandb.errors.CommError) as fake:
            call(server.api())
        assert type(fake.value.exc) is type(exc.exc) and str(fake.value) == str(exc)
    else:
        assert expected is False and failure == "http"  # artifact_exists: an HTTP error reads as absence
        assert call(server.api()) is False
