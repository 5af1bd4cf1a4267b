"""Resume by job key on MLflow: a job key and its lease are tags of the job's run.

`MlflowJobKeys` is `MlflowTracker`'s `TrackerJobKeys` (for `resume="<job key>"`,
`tracked_ckpt.resume` and `tracked_ckpt.lease`): the run of the tracker's experiment tagged with
a job key, the run's key and lease tags read and set, and the run's finished checkpoints (through
the registry's listing, `MlflowRegistry.search_checkpoints`).

Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed MLflow first.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

import mlflow
from mlflow.entities import LoggedModelStatus, RunTag

from tracked_ckpt.integrations.mlflow_reads import MlflowReads
from tracked_ckpt.integrations.mlflow_store import check_tracking_uri, quote, reachable, without_credentials
from tracked_ckpt.tracker import LoggedCheckpoint, TrackerError, TrackerJobKeys

JOB_KEY_TAG = "tracked_ckpt.job_key"  # run tags of resume="<job key>" (tracked_ckpt.resume)
JOB_TAGS = {"key": JOB_KEY_TAG, "lease": "tracked_ckpt.job_lease"}


class MlflowJobKeys(MlflowReads, TrackerJobKeys):
    """The job-key side of `MlflowTracker`: a job's run found by its key tag, its key and lease tags."""

    @override
    def find_job(self, job_key: str) -> dict[str, Any] | None:
        """The run of this tracker's experiment tagged with `job_key` (the earliest), as a destination."""
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        check_tracking_uri(uri)
        if not reachable(uri):
            raise TrackerError(f"MLflow at {without_credentials(uri)} is unreachable")
        client = self.client(uri)
        active = mlflow.active_run() if self.tracking_uri is None else None
        experiment_id = active.info.experiment_id if active is not None else self._experiment_id(client)
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`{JOB_KEY_TAG}` = '{quote(job_key)}'", max_results=100
        )
        if not runs:
            return None
        run = min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        return {"tracking_uri": uri, "experiment_id": run.info.experiment_id, "run_id": run.info.run_id, "owned": True}

    @override
    def job_info(self, destination: Mapping[str, Any]) -> dict[str, str]:
        """The run's job key and lease tags."""
        destination = self._resolve(destination)
        tags = self.client(destination["tracking_uri"]).get_run(destination["run_id"]).data.tags
        return {name: tags[tag] for name, tag in JOB_TAGS.items() if tag in tags}

    @override
    def set_job_info(self, destination: Mapping[str, Any], values: Mapping[str, str]) -> None:
        """Set the run's job key and lease tags (one call)."""
        destination = self._resolve(destination)
        self.client(destination["tracking_uri"]).log_batch(
            destination["run_id"], tags=[RunTag(JOB_TAGS[name], value) for name, value in values.items()]
        )

    @override
    def job_checkpoints(self, destination: Mapping[str, Any], name: str | None) -> list[LoggedCheckpoint]:
        """The run's READY LoggedModels (interrupted uploads stay PENDING and are skipped)."""
        destination = self._resolve(destination)
        scope = {
            "tracking_uri": destination["tracking_uri"],
            "experiment_ids": [destination["experiment_id"]],
            "run_id": destination["run_id"],
        }
        found = self.search_checkpoints(scope, where={"name": name} if name else None)
        return [c for c in found if c.extra.get("status") == str(LoggedModelStatus.READY)]
