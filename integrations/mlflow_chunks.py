"""The chunk store of an MLflow experiment: packs and index files under its artifact root.

Incremental checkpoints (`storage="incremental"`) keep a manifest in their LoggedModel and their
bytes in one chunk store per experiment, `<experiment artifact location>/tracked-ckpt-chunks/`,
written and read through MLflow's own artifact repositories. So it works wherever the
experiment's artifacts do: a proxied server (`mlflow-artifacts:`), a server started with
`--no-serve-artifacts` (the client writes to the artifact store itself), S3, or the embedded
store's local folder; and every checkpoint of the experiment (every run, every trial of a sweep)
shares it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import sys
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.tracking import MlflowClient

from tracked_ckpt.blobstore import BlobStore
from tracked_ckpt.errors import BlobNotFoundError
from tracked_ckpt.integrations.mlflow_store import artifact_repository, relocated, without_progress_bar

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

#: The chunk store's folder under an experiment's artifact location.
CHUNKS_FOLDER = "tracked-ckpt-chunks"
#: The artifact an incremental checkpoint's LoggedModel holds in place of the file.
MANIFEST_ARTIFACT = "checkpoint.manifest.json"


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
