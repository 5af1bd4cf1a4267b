"""Incremental checkpoints on MLflow, read back: rebuilt from their manifest, made whole when promoted,
and kept alive by garbage collection.

An incremental checkpoint (tag `tracked_ckpt.storage=incremental`) is a LoggedModel like any other
whose artifacts hold `checkpoint.manifest.json` (`tracked_ckpt.packs.Manifest`) instead of the
file; the file's chunks are in the experiment's chunk store (`mlflow_chunks`). Here:

- `restore_checkpoint` rebuilds the byte-identical file from the manifest, through this machine's
  pack cache (`tracked_ckpt.pack_cache.default_pack_cache`), so only the packs it lacks are
  downloaded (their chunks checked), and the file is verified against its sha256
  (`tracked_ckpt.pack_reader`). It is what the registry's `fetch` does for such a checkpoint, so
  `load_model`, `download_checkpoint`, `tracked-ckpt pull` and resume by job key all go through it.
- `materialize` writes the complete MLflow model (the keras flavor's folder, as `mlflow_model`
  builds it for a full checkpoint) into the same LoggedModel before it is registered, once, so
  that `models:/NAME@alias` is a normal model for `mlflow.pyfunc`, `mlflow.keras` and
  `mlflow models serve`.
- `collect_experiment_garbage` runs `tracked_ckpt.packgc.collect_garbage` on an experiment's chunk
  store with every incremental LoggedModel that is not deleted (PENDING ones too) as live.

Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed MLflow first.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.tracking import MlflowClient

from tracked_ckpt.errors import ChunkStoreError
from tracked_ckpt.files import safe_file_name
from tracked_ckpt.integrations.mlflow_chunks import MANIFEST_ARTIFACT, experiment_chunk_store
from tracked_ckpt.integrations.mlflow_model import KERAS_DATA_DIR, build_model_folder
from tracked_ckpt.integrations.mlflow_store import (
    artifact_repository,
    pages,
    quote,
    relocated,
    without_progress_bar,
)
from tracked_ckpt.pack_cache import PackCache, default_pack_cache
from tracked_ckpt.pack_reader import restore_file
from tracked_ckpt.packgc import StoreCollected, collect_garbage
from tracked_ckpt.packs import PACKS, Manifest
from tracked_ckpt.record import STORAGE_INCREMENTAL, TAG_PREFIX, CheckpointRecord
from tracked_ckpt.tracker import LoggedCheckpoint, TrackerError

logger = logging.getLogger("tracked_ckpt")

#: The file of the MLflow model that says a LoggedModel is one (`mlflow_model.build_model_folder`).
MLMODEL_FILE = "MLmodel"


def is_incremental(record: CheckpointRecord) -> bool:
    """Whether the checkpoint's LoggedModel holds a manifest rather than the file."""
    return record.storage == STORAGE_INCREMENTAL


def model_file_artifact(record: CheckpointRecord) -> str:
    """Where a LoggedModel of the full layout holds the checkpoint file (`build_model_folder`'s path)."""
    return f"{KERAS_DATA_DIR}/model.keras" if record.format == "keras" else os.path.basename(record.filepath)


def read_manifest(
    repository: ArtifactRepository, what: str, *, cache: PackCache | None = None, final_id: str | None = None
) -> Manifest | None:
    """The manifest a LoggedModel's artifacts hold, or None if it holds none (yet).

    Args:
        repository: the LoggedModel's artifact repository.
        what: names the checkpoint in errors.
        cache: with `final_id`, keeps the manifest in this local cache, and reads it from there next time.
        final_id: the LoggedModel's id, given only when its manifest can no longer change (READY).

    Raises:
        ChunkStoreError: the manifest is there but cannot be read as one (one line naming `what`).
        MlflowException, OSError: the store failed to answer (it is not taken for "no manifest").
    """
    if cache is not None and final_id:
        cached = cache.manifest(final_id)
        if cached is not None:
            try:
                return Manifest.from_bytes(cached)
            except (ValueError, KeyError, TypeError, IndexError):
                cache.forget_manifest(final_id)  # a damaged local copy: read the tracker's again
    with tempfile.TemporaryDirectory(prefix="tracked-ckpt-manifest-") as tmp:
        try:
            with without_progress_bar():
                path = repository.download_artifacts(MANIFEST_ARTIFACT, dst_path=tmp)
        except (MlflowException, OSError):
            if not any(posixpath.basename(e.path) == MANIFEST_ARTIFACT for e in repository.list_artifacts(None)):
                return None
            raise
        data = Path(path).read_bytes()
    if cache is not None and final_id:
        cache.keep_manifest(final_id, data)
    try:
        return Manifest.from_bytes(data)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ChunkStoreError(
            f"{what} cannot be rebuilt: its {MANIFEST_ARTIFACT} is unreadable ({exc}); load another "
            "version of this checkpoint, or log it again"
        ) from exc


def restore_checkpoint(client: MlflowClient, checkpoint: LoggedCheckpoint, directory: str) -> str:
    """Rebuild an incremental checkpoint's file in `directory` from its chunks; return its path.

    Two requests besides the packs the pack cache lacks (three when `checkpoint` does not know
    its LoggedModel's location and experiment): the experiment, the manifest.

    Raises:
        ChunkStoreError: the manifest is missing or unreadable, a pack is missing from the chunk
            store or a chunk is corrupt there (one line naming the checkpoint and what to do; a
            bad chunk is never kept in the cache).
    """
    location, experiment_id = checkpoint.location, checkpoint.extra.get("experiment_id")
    if not location or not experiment_id:
        model = client.get_logged_model(checkpoint.id)
        location, experiment_id = model.artifact_location, model.experiment_id
    return str(_restore(client, checkpoint, location, str(experiment_id), directory))


def _restore(
    client: MlflowClient, checkpoint: LoggedCheckpoint, location: str, experiment_id: str, folder: str
) -> Path:
    what = f"{checkpoint.record.name or 'The checkpoint'} ({checkpoint.id})"
    repository = artifact_repository(client, relocated(location, client.tracking_uri))
    manifest = read_manifest(repository, what)
    if manifest is None:
        raise ChunkStoreError(
            f"{what} cannot be rebuilt: its LoggedModel holds no {MANIFEST_ARTIFACT} (its upload never "
            "finished); run `tracked-ckpt sync` where it was trained, or load another version"
        )
    name = safe_file_name(os.path.basename(checkpoint.record.filepath) or manifest.name)
    store = experiment_chunk_store(client, experiment_id)
    return restore_file(manifest, store, default_pack_cache(), os.path.join(folder, name), label=what)


def materialize(client: MlflowClient, checkpoint: LoggedCheckpoint, pip_requirements: list[str] | None) -> bool:
    """Make an incremental checkpoint's LoggedModel a complete MLflow model, once; True if this call did.

    The file is rebuilt from its chunks and written with the model folder `build_model_folder`
    makes for a full checkpoint (keras flavor, requirements, and the signature and code the
    record carries) into the LoggedModel's own artifacts, beside the manifest: the model id, and
    so an alias on its registered version, stay the same. Files the LoggedModel already holds
    are kept (an `MLmodel` logged with the manifest describes the model better than the record
    read back from tags can: it was written where the model's code and inputs were known). The
    checkpoint file is uploaded last, so its presence at its recorded size says the work is done.
    """
    record = checkpoint.record
    model: LoggedModel = client.get_logged_model(checkpoint.id)
    repository = artifact_repository(client, relocated(model.artifact_location, client.tracking_uri))
    relative = model_file_artifact(record)
    folder = posixpath.dirname(relative)
    listed = {entry.path: entry for entry in repository.list_artifacts(folder or None)}
    held = listed.get(relative)
    if held is not None and held.file_size == record.size_bytes:
        return False
    root = listed if not folder else {entry.path: entry for entry in repository.list_artifacts(None)}
    with tempfile.TemporaryDirectory(prefix="tracked-ckpt-materialize-") as tmp:
        restored = _restore(client, checkpoint, model.artifact_location, model.experiment_id, os.path.join(tmp, "file"))
        out = os.path.join(tmp, "model")
        os.makedirs(out)
        build_model_folder(
            record,
            str(restored),
            out,
            model_id=model.model_id,
            run_id=model.source_run_id or checkpoint.run_id,
            artifact_uri=model.artifact_location,
            pip_requirements=pip_requirements,
        )
        last = os.path.join(tmp, "last", posixpath.basename(relative))
        os.makedirs(os.path.dirname(last))
        os.replace(os.path.join(out, *relative.split("/")), last)
        for name in os.listdir(out):
            if name in root:  # logged with the manifest: the writer's description wins
                path = os.path.join(out, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        if os.listdir(out):
            repository.log_artifacts(out)
        repository.log_artifact(last, artifact_path=folder or None)
    logger.info("Wrote the complete model of %s (%s) beside its manifest.", record.name, checkpoint.id)
    return True


def collect_experiment_garbage(client: MlflowClient, experiment_id: str, *, grace_seconds: float) -> StoreCollected:
    """One `packgc.collect_garbage` run over the chunk store of experiment `experiment_id`.

    Live: the manifest of every LoggedModel of the experiment tagged `storage=incremental` that
    is not deleted, whatever its status (a PENDING one may be an upload in progress, or one that
    `tracked-ckpt sync` will finish). One that holds no manifest yet references nothing; its
    packs are protected by the grace period. A manifest that cannot be read stops the run before
    anything is deleted.
    """
    store = experiment_chunk_store(client, experiment_id)
    try:
        sizes = {
            posixpath.basename(e.path): e.file_size or 0 for e in store.repository.list_artifacts(PACKS.strip("/"))
        }
    except (MlflowException, OSError):
        sizes = {}  # no chunk store yet: nothing to free
    found: list[int] = []
    cache = default_pack_cache()

    def live_manifests() -> list[Manifest]:
        manifests = []
        for page in pages(
            client.search_logged_models,
            experiment_ids=[experiment_id],
            filter_string=f"tags.`{TAG_PREFIX}storage` = '{quote(STORAGE_INCREMENTAL)}'",
            max_results=1000,
        ):
            for model in page:
                what = f"{model.name} ({model.model_id})"
                repository = artifact_repository(client, relocated(model.artifact_location, client.tracking_uri))
                # A READY model's manifest never changes: each is downloaded once, by the first run.
                final_id = model.model_id if model.status == LoggedModelStatus.READY else None
                try:
                    manifest = read_manifest(repository, what, cache=cache, final_id=final_id)
                except ChunkStoreError as exc:  # its packs are unknown: none may be deleted
                    raise TrackerError(
                        f"Garbage collection stopped before deleting anything: the {MANIFEST_ARTIFACT} of {what} "
                        "is unreadable; delete that checkpoint if it is lost, then run gc again"
                    ) from exc
                if manifest is None:
                    logger.info("chunk store gc: %s holds no manifest yet (%s)", what, model.status)
                    continue
                manifests.append(manifest)
        found.append(len(manifests))
        return manifests

    collected = collect_garbage(store, live_manifests, cache, grace_seconds=grace_seconds)
    return StoreCollected(
        store.label, found[0] if found else 0, collected, sum(sizes.get(pack, 0) for pack in collected.deleted)
    )
