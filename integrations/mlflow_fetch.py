"""A checkpoint's files fetched from its MLflow LoggedModel: the checkpoint file and the logged code.

`MlflowFetch` is the part of `MlflowRegistry` that downloads (`TrackerRegistry.fetch` and
`fetch_code`, used by `load_model`, `download_checkpoint`, `tracked-ckpt pull` and resume by
job key): just the checkpoint file of a LoggedModel (the keras flavor's `model.keras`, or the
file itself), rebuilt from its chunks when it is stored incrementally
(`mlflow_manifests.restore_checkpoint`); and the model's `code/` folder without its pyfunc loader.

Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed MLflow first.
"""

from __future__ import annotations

import os
import sys

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

import mlflow

from tracked_ckpt.files import safe_file_name
from tracked_ckpt.integrations.mlflow_manifests import is_incremental, restore_checkpoint
from tracked_ckpt.integrations.mlflow_model import CODE_DIR, CODE_LOADER, KERAS_DATA_DIR
from tracked_ckpt.integrations.mlflow_reads import MlflowReads
from tracked_ckpt.integrations.mlflow_store import check_readable, relocated, without_progress_bar
from tracked_ckpt.tracker import LoggedCheckpoint


class MlflowFetch(MlflowReads):
    """Downloads of `MlflowTracker`'s registry: a checkpoint's file and its logged code."""

    @override
    def fetch(self, checkpoint: LoggedCheckpoint, directory: str) -> str:
        """Download just the checkpoint file of a LoggedModel into `directory` (rebuilt from its chunks
        when it is stored incrementally: `mlflow_manifests.restore_checkpoint`)."""
        if is_incremental(checkpoint.record):
            tracking_uri = checkpoint.extra.get("tracking_uri") or self.tracking_uri or mlflow.get_tracking_uri()
            check_readable(tracking_uri)
            return restore_checkpoint(self.client(tracking_uri), checkpoint, directory)
        relative = (
            f"{KERAS_DATA_DIR}/model.keras"
            if checkpoint.record.format == "keras"
            else safe_file_name(os.path.basename(checkpoint.record.filepath))
        )
        return self._download(*self._artifacts_of(checkpoint), relative, directory)

    @override
    def fetch_code(self, checkpoint: LoggedCheckpoint, directory: str) -> str | None:
        """The model's `code/` folder (`code_paths`) without its pyfunc loader, or None: one listing, one download."""
        if checkpoint.record.format != "keras":
            return None  # only a keras-flavor model folder carries code
        tracking_uri, location = self._artifacts_of(checkpoint)
        if not mlflow.artifacts.list_artifacts(artifact_uri=f"{location}/{CODE_DIR}", tracking_uri=tracking_uri):
            return None
        folder = self._download(tracking_uri, location, CODE_DIR, directory)
        # The loader is for mlflow.pyfunc; what it would import is imported by the caller.
        os.remove(os.path.join(folder, CODE_LOADER + ".py"))
        return folder

    def _artifacts_of(self, checkpoint: LoggedCheckpoint) -> tuple[str, str]:
        """(tracking URI, artifact location) of a checkpoint's LoggedModel, checked readable."""
        tracking_uri = checkpoint.extra.get("tracking_uri") or self.tracking_uri or mlflow.get_tracking_uri()
        check_readable(tracking_uri)
        location = checkpoint.location or self.client(tracking_uri).get_logged_model(checkpoint.id).artifact_location
        return tracking_uri, relocated(location, tracking_uri).rstrip("/")

    @staticmethod
    def _download(tracking_uri: str, location: str, relative: str, directory: str) -> str:
        """Download a file or folder of the LoggedModel at `location` into `directory`; return its path."""
        with without_progress_bar():
            return mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/{relative}", dst_path=directory, tracking_uri=tracking_uri
            )
