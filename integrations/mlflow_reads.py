"""What the MLflow registry's reads share: the tracker's state they use, and LoggedModels read back as checkpoints.

`MlflowReads` is the base of `MlflowRegistry`'s parts (`mlflow_registry`, `mlflow_fetch`,
`mlflow_versions`, `mlflow_jobs`): it declares what `MlflowTracker`
(`tracked_ckpt.integrations.mlflow`) holds that they use (its configuration, clients and runs),
picks the store a read goes to and the client of a store a read may use, and turns a tracked
LoggedModel into a `LoggedCheckpoint` (its run's name looked up in bulk).

Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed MLflow first.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

import mlflow
from mlflow.entities import LoggedModel
from mlflow.tracking import MlflowClient

from tracked_ckpt.integrations.mlflow_model import schema_from_tags
from tracked_ckpt.integrations.mlflow_store import check_readable, pages, quote
from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.tracker import LoggedCheckpoint, TrackerRegistry


class MlflowReads(TrackerRegistry):
    """The base of `MlflowRegistry`'s parts: the tracker's state and the checkpoint of a LoggedModel."""

    # What the tracker holds (its configuration and, `_scope_uri`, its runtime).
    name: str
    tracking_uri: str | None
    experiment: str | None
    run_id: str | None
    pip_requirements: list[str] | None
    _scope_uri: str | None

    @abc.abstractmethod
    def client(self, uri: str) -> MlflowClient:
        """The tracker's client for a tracking URI."""

    @abc.abstractmethod
    def _resolve(self, destination: Mapping[str, Any]) -> Mapping[str, Any]:
        """The concrete run of a destination (a deferred start's, created once)."""

    @abc.abstractmethod
    def _experiment_id(self, client: MlflowClient) -> str:
        """The id of the experiment the tracker's new runs go to."""

    @abc.abstractmethod
    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """A link to a run in the MLflow UI (`tracked_ckpt.tracker.Tracker.run_url`)."""

    def _read_client(self, uri: str) -> MlflowClient:
        """The client of a store a read may use: one that answers and exists (see `check_readable`)."""
        check_readable(uri)
        return self.client(uri)

    def _registry_uri(self) -> str:
        """This tracker's URI, else the store `scope()` last looked in, else MLflow's default."""
        return self.tracking_uri or self._scope_uri or mlflow.get_tracking_uri()

    @staticmethod
    def _experiment_ids(client: MlflowClient) -> list[str]:
        """The ids of every (active) experiment of the store."""
        return [e.experiment_id for page in pages(client.search_experiments) for e in page]

    def _checkpoint(self, model: LoggedModel, tracking_uri: str | None = None) -> LoggedCheckpoint:
        """A tracked LoggedModel as a checkpoint: its record from the tags, each metric's latest value."""
        metadata = schema_from_tags(model.tags)
        metrics: dict[str, float] = {}
        for metric in sorted(model.metrics or [], key=lambda m: (m.step, m.timestamp)):
            metrics[metric.key] = metric.value  # the latest value wins, as in MLflow's ordering
        record = CheckpointRecord.from_metadata(metadata, name=model.name, metrics=metrics)
        uri = tracking_uri or self.tracking_uri or mlflow.get_tracking_uri()
        run_id = model.source_run_id or ""
        return LoggedCheckpoint(
            id=model.model_id,
            run_id=run_id,
            record=record,
            tracker=self.name,
            location=model.artifact_location,
            extra={
                "tracking_uri": uri,
                "status": str(model.status),
                "experiment_id": model.experiment_id,
                "created": model.creation_timestamp,
                "run_url": self.run_url({"tracking_uri": uri, "experiment_id": model.experiment_id, "run_id": run_id})
                if run_id
                else None,
            },
        )

    @staticmethod
    def _with_run_names(client: MlflowClient, checkpoints: list[LoggedCheckpoint]) -> list[LoggedCheckpoint]:
        """The checkpoints with their run's name in `extra["run_name"]`: one request per 100 runs."""
        experiments = {c.run_id: str(c.extra.get("experiment_id", "")) for c in checkpoints if c.run_id}
        run_ids = sorted(experiments)
        names: dict[str, str] = {}
        for start in range(0, len(run_ids), 100):
            part = run_ids[start : start + 100]
            for run in client.search_runs(
                sorted({experiments[r] for r in part}),
                filter_string="attributes.run_id IN (" + ", ".join(f"'{quote(r)}'" for r in part) + ")",
                max_results=len(part),
            ):
                names[run.info.run_id] = run.info.run_name or ""
        return [dataclasses.replace(c, extra={**c.extra, "run_name": names.get(c.run_id, "")}) for c in checkpoints]
