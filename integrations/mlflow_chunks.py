"""The chunk store of an MLflow experiment: packs and index files under its artifact root.

Incremental checkpoints (`storage="incremental"`) keep a manifest in their LoggedModel and their
bytes in one chunk store per experiment, `<experiment artifact location>/tracked-ckpt-chunks/`,
written and read through MLflow's own artifact repositories. So it works wherever the
experiment's artifacts do: a proxied server (`mlflow-artifacts:`), a server started with
`--no-serve-artifacts` (the client writes to the artifact store itself), S3, or the embedded
store's local folder; and every checkpoint of the experiment (every run, every trial of a sweep)
shares it.

`IncrementalUploads` is what an `MlflowTracker` does for such a checkpoint before its
LoggedModel exists: the chunks the store lacks uploaded in packs (`pack_writer.store_file`, which
reads only those when the publisher's pass over the file is remembered, and checks the sha256
against the record's). The LoggedModel then holds `MANIFEST_ARTIFACT` and the
description (`DESCRIPTION_TAG`, e.g. `incremental: 2.4 MB new of 1.5 GB`). A process killed
before the manifest is written leaves only packs no manifest references (`tracked_ckpt.packgc`);
the retry finds those the listing confirms and uploads the rest.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
import tempfile
import threading
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.tracking import MlflowClient

from tracked_ckpt.blobstore import BlobStore
from tracked_ckpt.errors import BlobNotFoundError
from tracked_ckpt.integrations.mlflow_store import artifact_repository, relocated, without_progress_bar
from tracked_ckpt.pack_cache import default_pack_cache
from tracked_ckpt.pack_writer import DEFAULT_PACK_SIZE, StoredFile, StoreListing, store_file
from tracked_ckpt.packs import Manifest
from tracked_ckpt.record import STORAGE_INCREMENTAL, CheckpointRecord, split_checkpoint_name

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

#: The chunk store's folder under an experiment's artifact location.
CHUNKS_FOLDER = "tracked-ckpt-chunks"
#: The artifact an incremental checkpoint's LoggedModel holds in place of the file.
MANIFEST_ARTIFACT = "checkpoint.manifest.json"
#: The LoggedModel tag MLflow's UI shows as the model's Description (MLflow 3's model page).
DESCRIPTION_TAG = "mlflow.note.content"


class ArtifactBlobStore(BlobStore):
    """A `BlobStore` on an MLflow artifact repository: blob `packs/ab…` is the artifact of that path.

    Args:
        repository: the artifact repository rooted at the store's folder.
        label: names the store in errors (its URI).
    """

    def __init__(self, repository: ArtifactRepository, label: str):
        self.repository = repository
        self.label = label

    @override
    def put(self, name: str, local_path: Path) -> None:
        folder, base = posixpath.split(_checked(name))
        # An artifact is named after its local file: give the bytes the blob's name, by a hard
        # link beside them when the file system allows (a pack is ~128 MiB), else by a copy.
        staging = Path(tempfile.mkdtemp(dir=Path(local_path).parent, prefix=".blob-"))
        try:
            named = staging / base
            try:
                os.link(local_path, named)
            except OSError:
                shutil.copyfile(local_path, named)
            self.repository.log_artifact(str(named), artifact_path=folder or None)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @override
    def get(self, name: str, local_path: Path) -> None:
        name = _checked(name)
        staging = Path(tempfile.mkdtemp(dir=Path(local_path).parent, prefix=".blob-"))
        try:
            try:
                with without_progress_bar():
                    fetched = self.repository.download_artifacts(name, dst_path=str(staging))
            except (MlflowException, OSError) as exc:
                folder = posixpath.dirname(name)
                if name not in self.list(folder + "/" if folder else ""):
                    raise BlobNotFoundError(f"{self.label}: no blob {name}") from exc
                raise
            os.replace(fetched, local_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @override
    def list(self, prefix: str) -> list[str]:
        found: list[str] = []
        folders = [prefix.strip("/")]
        while folders:
            folder = folders.pop()
            try:
                entries = self.repository.list_artifacts(folder or None)
            except (MlflowException, OSError):
                # A store nothing was written to yet has no folder; some repositories raise.
                if folder == prefix.strip("/") and not _exists(self.repository, folder):
                    return []
                raise
            for entry in entries:
                path = entry.path  # relative to the repository's root, in every MLflow repository
                if entry.is_dir:
                    folders.append(path)
                elif not posixpath.basename(path).startswith("."):
                    found.append(path)
        return sorted(found)

    @override
    def delete(self, name: str) -> None:
        name = _checked(name)
        try:
            self.repository.delete_artifacts(name)
        except (MlflowException, OSError, FileNotFoundError):
            folder = posixpath.dirname(name)
            if name in self.list(folder + "/" if folder else ""):
                raise


def experiment_chunk_store(client: MlflowClient, experiment_id: str) -> ArtifactBlobStore:
    """The chunk store every checkpoint of experiment `experiment_id` shares."""
    location = relocated(client.get_experiment(experiment_id).artifact_location, client.tracking_uri)
    root = location.rstrip("/") + "/" + CHUNKS_FOLDER
    return ArtifactBlobStore(artifact_repository(client, root), root)


class IncrementalUploads:
    """The chunk-store side of one MLflow tracker: its stores and each checkpoint name's last manifest.

    Part of the tracker's runtime (never copied); `store` runs on the upload thread.
    """

    #: Packs are uploaded in files of about this many bytes.
    pack_size = DEFAULT_PACK_SIZE

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stores: dict[tuple[str, str], BlobStore] = {}
        # Each store's listing, reused for a minute by the checkpoints of this tracker's fits.
        self._listings: dict[tuple[str, str], StoreListing] = {}
        # (experiment, base name) -> the manifest of its last checkpoint: the next one is cut the same way.
        self._previous: dict[tuple[str, str], Manifest] = {}

    def chunk_store(self, client: MlflowClient, experiment_id: str) -> BlobStore:
        """The chunk store of an experiment, looked up once per tracker."""
        key = (client.tracking_uri, experiment_id)
        with self._lock:
            found = self._stores.get(key)
        if found is None:
            found = experiment_chunk_store(client, experiment_id)
            with self._lock:
                self._stores[key] = found
        return found

    def store(self, client: MlflowClient, experiment_id: str, record: CheckpointRecord, path: str) -> StoredFile | None:
        """For an incremental record, upload the chunks of `path` the experiment's store lacks; else None.

        Returns:
            the manifest and what the upload cost.

        Raises:
            ChecksumError: the file's sha256 is not the record's (it changed since it was hashed).
        """
        if record.storage != STORAGE_INCREMENTAL:
            return None
        key = (experiment_id, split_checkpoint_name(record.name)[0])
        with self._lock:
            previous = self._previous.get(key)
            listing = self._listings.setdefault((client.tracking_uri, experiment_id), StoreListing())
        stored = store_file(
            path,
            self.chunk_store(client, experiment_id),
            default_pack_cache(),
            name=os.path.basename(record.filepath) or None,
            previous=previous,
            pack_size=self.pack_size,
            expected_sha256=record.sha256,
            label=record.name,
            listing=listing,
        )
        with self._lock:
            self._previous[key] = stored.manifest
        return stored

    def write_manifest(self, stored: StoredFile, folder: str) -> None:
        """Write an incremental checkpoint's artifact (its manifest) into `folder`."""
        Path(folder, MANIFEST_ARTIFACT).write_bytes(stored.manifest.to_bytes())


def description_tags(stored: StoredFile | None) -> dict[str, str]:
    """The LoggedModel's description of an incremental checkpoint (e.g. `incremental: 2.4 MB new of 1.5 GB`)."""
    return {} if stored is None else {DESCRIPTION_TAG: stored.describe()}


def _checked(name: str) -> str:
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"not a blob name: {name!r}")
    return name


def _exists(repository: ArtifactRepository, folder: str) -> bool:
    """Whether `folder` is listed by its parent (False for a store's folder nothing was written to)."""
    parent, base = posixpath.split(folder)
    try:
        return any(posixpath.basename(e.path) == base for e in repository.list_artifacts(parent or None))
    except (MlflowException, OSError):
        return False
