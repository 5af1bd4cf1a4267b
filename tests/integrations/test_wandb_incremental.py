"""Incremental checkpoints on W&B: a manifest and content-addressed packs per version.

The real wandb SDK in offline mode logs the versions (read back from the offline run's
transaction log: what `wandb sync` would upload), then the run is synced into the fake W&B,
which stores a file once per collection while its digest is unchanged, as W&B does, and
counts the bytes sent each way. Loading goes through the registry helper against the fake.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil

import keras
import numpy as np
import pytest
from support.wandb_fake import FakeServer
from support.wandb_records import logged_artifacts, run_dirs

import tracked_ckpt
from tracked_ckpt import CheckpointRecord, settings
from tracked_ckpt.errors import ChunkStoreError
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.integrations.wandb_chunks import CHUNKS_DIR, MANIFEST_FILE
from tracked_ckpt.pack_cache import default_pack_cache

pytest.importorskip("pyfastcdc")

BASE = 3_000_000  # a frozen part, the same in every version
HEAD = 200_000  # what changes between versions


def content(epoch: int) -> bytes:
    """A checkpoint's bytes: the same base, then a head of its own."""
    return np.random.default_rng(0).bytes(BASE) + np.random.default_rng(epoch).bytes(HEAD)


def record_for(path: str, epoch: int, data: bytes) -> CheckpointRecord:
    return CheckpointRecord(
        name=f"tiny-e{epoch:04d}",
        epoch=epoch,
        step=10 * epoch,
        monitor="val_loss",
        mode="min",
        is_best=True,
        value=1.0 / epoch,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        format="keras",
        filepath=path,
        keras_version=keras.__version__,
        backend=keras.backend.backend(),
        metrics={"val_loss": 1.0 / epoch},
        storage="incremental",
    )


def log_epochs(root, contents: dict[int, bytes]) -> tuple[str, dict[int, CheckpointRecord]]:
    """Log one incremental version per epoch into an offline run; its run dir and the records."""
    tracker = WandbTracker()
    destination = tracker.start()
    records = {}
    for epoch, data in contents.items():
        path = os.path.join(root, f"m-{epoch:02d}.keras")
        with open(path, "wb") as f:
            f.write(data)
        records[epoch] = record_for(path, epoch, data)
        tracker.log_checkpoint(records[epoch], path, destination)
    tracker.finish()
    (run_dir,) = run_dirs(os.path.join(root, "wandb_dir"))
    return run_dir, records


def packs_of(artifact) -> dict[str, str]:
    """A logged version's packs: name -> W&B digest."""
    return {f.path: f.md5_b64 for f in artifact.files if f.path.startswith("packs/")}


def synced(run_dir: str) -> tuple[FakeServer, WandbTracker]:
    server = FakeServer(entity="team", project="tracked-ckpt-test")
    server.sync(run_dir)
    return server, WandbTracker(api=server.api(), mode="online")  # reads the server, not the offline folder


def drop_pack_cache() -> None:
    """Empty this machine's pack cache (the writer kept its packs there): loads must download."""
    shutil.rmtree(os.path.join(settings.cache_dir(), "chunks"))


def test_offline_versions_share_their_unchanged_packs(wandb_env):
    run_dir, records = log_epochs(wandb_env, {epoch: content(epoch) for epoch in (1, 2, 3)})

    artifacts = logged_artifacts(run_dir)
    assert [a.metadata["epoch"] for a in artifacts] == [1, 2, 3]
    for artifact, record in zip(artifacts, records.values()):
        assert artifact.metadata["storage"] == "incremental"
        assert artifact.metadata["sha256"] == record.sha256
        names = {f.path for f in artifact.files}
        assert MANIFEST_FILE in names and names - {MANIFEST_FILE} == set(packs_of(artifact))
        for logged in artifact.files:  # kept in the run dir for `wandb sync`, with W&B's digest
            assert logged.local_path.startswith(run_dir + os.sep)
            with open(logged.local_path, "rb") as f:
                data = f.read()
            assert len(data) == logged.size
            assert logged.md5_b64 == base64.b64encode(hashlib.md5(data).digest()).decode()
    first, second, third = (packs_of(a) for a in artifacts)
    # Each later version lists the base's pack unchanged (same name, same digest) and one of its own
    # (an epoch's head is not in the next epoch's file: that version does not list it).
    assert len(first) == 1 and first.items() < second.items() and first.items() < third.items()
    assert len(second) == len(third) == 2 and second != third
    # The description says what each version added: all of it, then about its head.
    assert artifacts[0].description == "incremental: 3.2 MB new of 3.2 MB"
    for later in artifacts[1:]:
        assert re.fullmatch(r"incremental: \d+\.\d KB new of 3\.2 MB", later.description), later.description
    # On disk: one copy of each pack for the whole run; W&B made no staging or cache copy.
    local = {f.local_path for a in artifacts for f in a.files if f.path.startswith("packs/")}
    assert len(local) == 3
    assert sum(os.path.getsize(p) for p in local) < BASE + 4 * HEAD
    assert not (wandb_env / "wandb_data" / "artifacts").exists()
    assert not (wandb_env / "wandb_cache" / "artifacts").exists()


def test_after_sync_each_version_costs_its_new_packs_and_loads_byte_identical(wandb_env):
    contents = {epoch: content(epoch) for epoch in (1, 2, 3)}
    run_dir, _ = log_epochs(wandb_env, contents)
    server, tracker = synced(run_dir)

    # The wire: the first version sends everything, the next ones their head (and a manifest).
    assert BASE < server.uploaded_bytes < BASE + 3 * HEAD + 3 * 100_000
    run_id = os.path.basename(run_dir).rsplit("-", 1)[1]
    listed = tracker.search_checkpoints(tracker.scope(run_id, "team/tracked-ckpt-test"))
    assert [c.record.storage for c in listed] == ["incremental"] * 3

    drop_pack_cache()
    for checkpoint in reversed(listed):
        before = server.downloaded_bytes
        path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint, tracker=tracker, cache_dir=wandb_env / "dl")
        with open(path, "rb") as f:
            assert f.read() == contents[checkpoint.record.epoch]
        fetched = server.downloaded_bytes - before
        if checkpoint.record.epoch == 3:  # cold: every pack
            assert fetched > BASE
        else:  # warm: the manifest and the packs the pack cache lacks
            assert fetched < 2 * HEAD


def test_promoted_incremental_version_loads_as_the_model(wandb_env):
    """A real `.keras` with a frozen base: after sync, promote and `load_model` predict like the file."""
    keras.utils.set_random_seed(0)
    base = keras.layers.Dense(1024, name="frozen")
    model = keras.Sequential([keras.Input((512,)), base, keras.layers.Dense(1, name="head")], name="tiny")
    base.trainable = False
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.rand(32, 512), np.random.rand(32, 1)
    contents = {}
    for epoch in (1, 2):
        model.fit(x, y, epochs=1, verbose=0)
        path = wandb_env / f"saved-{epoch}.keras"
        model.save(path)
        contents[epoch] = path.read_bytes()
    run_dir, _ = log_epochs(wandb_env, contents)
    first, second = (packs_of(a) for a in logged_artifacts(run_dir))
    assert first.items() < second.items()  # the frozen kernel's chunks: the first version's pack
    server, tracker = synced(run_dir)
    assert server.uploaded_bytes < 1.5 * len(contents[1])
    run_id = os.path.basename(run_dir).rsplit("-", 1)[1]

    tracked_ckpt.promote_best("tiny-clf", tracker=tracker, run_id=f"tracked-ckpt-test/{run_id}")
    drop_pack_cache()
    loaded = tracked_ckpt.load_model("tiny-clf", tracker=tracker, cache_dir=wandb_env / "dl")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


def test_a_missing_or_corrupt_pack_fails_in_one_line_and_never_poisons_the_cache(wandb_env):
    contents = {epoch: content(epoch) for epoch in (1, 2)}
    run_dir, _ = log_epochs(wandb_env, contents)
    server, tracker = synced(run_dir)
    run_id = os.path.basename(run_dir).rsplit("-", 1)[1]
    first, second = tracker.search_checkpoints(tracker.scope(run_id, "team/tracked-ckpt-test"))
    drop_pack_cache()
    files = server.resolve(second.id).files
    shared = next(name for name in files if name in server.resolve(first.id).files and name != MANIFEST_FILE)

    data = files[shared]
    files[shared] = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    with pytest.raises(ChunkStoreError) as corrupt:
        tracked_ckpt.download_checkpoint(checkpoint=second, tracker=tracker, cache_dir=wandb_env / "bad")
    message = str(corrupt.value)
    assert "\n" not in message and second.id in message and "corrupt" in message

    del files[shared]
    with pytest.raises(ChunkStoreError) as missing:
        tracked_ckpt.download_checkpoint(checkpoint=second, tracker=tracker, cache_dir=wandb_env / "bad")
    message = str(missing.value)
    assert "\n" not in message and second.id in message and shared.removeprefix("packs/") in message

    # The bad pack was not kept, and the intact version holding the same pack loads byte-identical.
    assert not default_pack_cache().has(shared.removeprefix("packs/"))
    path = tracked_ckpt.download_checkpoint(checkpoint=first, tracker=tracker, cache_dir=wandb_env / "good")
    with open(path, "rb") as f:
        assert f.read() == contents[1]
    files[shared] = data
    path = tracked_ckpt.download_checkpoint(checkpoint=second, tracker=tracker, cache_dir=wandb_env / "good")
    with open(path, "rb") as f:
        assert f.read() == contents[2]


def test_a_resumed_offline_run_shares_the_packs_an_earlier_process_logged(wandb_env):
    """`tracked-ckpt sync` after a crash resumes the run in a new run dir: its versions still share the base."""
    first_dir, _ = log_epochs(wandb_env, {1: content(1)})
    destination = {"run_id": os.path.basename(first_dir).rsplit("-", 1)[1], "project": "", "entity": ""}
    destination["mode"] = "offline"
    path = wandb_env / "m-02.keras"
    path.write_bytes(content(2))
    later = WandbTracker()  # another process: nothing in memory
    later.log_checkpoint(record_for(str(path), 2, content(2)), str(path), destination)
    later.finish()

    first_run, resumed_run = run_dirs(str(wandb_env / "wandb_dir"))
    (first,) = logged_artifacts(first_run)
    (resumed,) = logged_artifacts(resumed_run)
    assert packs_of(first).items() < packs_of(resumed).items()
    assert all(f.local_path.startswith(resumed_run + os.sep) for f in resumed.files)  # syncable alone
    assert re.fullmatch(r"incremental: \d+\.\d KB new of 3\.2 MB", resumed.description), resumed.description
    server, tracker = synced(first_run)
    sent = server.uploaded_bytes
    server.sync(resumed_run)
    assert server.uploaded_bytes - sent < 2 * HEAD
    (checkpoint,) = [
        c for c in tracker.search_checkpoints(tracker.scope(destination["run_id"], None)) if c.record.epoch == 2
    ]
    drop_pack_cache()
    path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint, tracker=tracker, cache_dir=wandb_env / "dl")
    with open(path, "rb") as f:
        assert f.read() == content(2)


def test_online_run_folder_keeps_only_the_newest_version_s_packs(wandb_env, monkeypatch):
    """Online, once a version is committed, the packs only older versions list leave the run's folder."""
    from tracked_ckpt.integrations.wandb_chunks import IncrementalWriter, PackFolder

    class OnlineRun:
        id = "r1"
        offline = False

        class settings:
            sync_dir = str(wandb_env / "run-online")

    import wandb

    writer = IncrementalWriter()
    folder_root = wandb_env / "run-online" / CHUNKS_DIR / "tiny-r1"
    kept = []
    for epoch in (1, 2):
        data = np.random.default_rng(epoch).bytes(BASE // 4)  # nothing shared: the old pack goes
        path = wandb_env / f"f{epoch}"
        path.write_bytes(data)
        artifact = wandb.Artifact("tiny-r1", type="model")
        folder, stored = writer.build(OnlineRun, "tiny-r1", artifact, str(path), record_for("m.keras", epoch, data))
        writer.committed(OnlineRun, folder, stored.manifest)
        kept.append(sorted(PackFolder(folder_root).list("packs/")))
        assert kept[-1] == [f"packs/{p}" for p in stored.manifest.packs]
    assert not set(kept[0]) & set(kept[1])
    writer.finish()
    assert not folder_root.exists()


def test_an_offline_runs_incremental_versions_load_from_its_folder(wandb_env):
    contents = {epoch: content(epoch) for epoch in (1, 2)}
    run_dir, _ = log_epochs(wandb_env, contents)
    drop_pack_cache()  # rebuilt from the packs the run's folder holds, not the writer's cache

    listed = tracked_ckpt.list_checkpoints(tracker="wandb", run_id=run_dir)
    assert [(c.record.epoch, c.record.storage) for c in listed] == [(1, "incremental"), (2, "incremental")]
    for checkpoint in listed:
        path = tracked_ckpt.download_checkpoint(checkpoint=checkpoint, tracker="wandb", cache_dir=wandb_env / "dl")
        with open(path, "rb") as f:
            assert f.read() == contents[checkpoint.record.epoch]

    # A pack gone from the run's folder: one line naming the checkpoint, nothing served.
    pack = next(p for p in listed[0].extra["local_files"] if p.startswith("packs/"))
    os.remove(listed[0].extra["local_files"][pack])
    drop_pack_cache()
    with pytest.raises(ChunkStoreError) as failed:
        tracked_ckpt.download_checkpoint(checkpoint=listed[0], tracker="wandb", cache_dir=wandb_env / "dl2")
    assert "\n" not in str(failed.value) and listed[0].record.name in str(failed.value)
