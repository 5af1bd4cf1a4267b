"""The registry side of the MLflow tracker: list, promote and resolve checkpoints; composed of its parts.

`MlflowRegistry` answers the registry helper and the CLI (`TrackerRegistry`:
`list_checkpoints`, `promote_best`, `load_model`, ...) and resume by job key
(`TrackerJobKeys`): checkpoints are read back from tracked LoggedModels
(`search_logged_models`, ordered by a metric on the server) and promoted as
versions of MLflow's Model Registry, whose tags copy the schema so that loading
resolves in one request. Here: scopes and listing, promotion and resolving. Its
parts, one concern each: fetching files and logged code (`mlflow_fetch`), the
verbs' look-ups (`mlflow_versions`), job keys (`mlflow_jobs`), on the reads they
share (`mlflow_reads`); a failed read is one line naming the store (`mlflow_store`).

A base class of `MlflowTracker` (`tracked_ckpt.integrations.mlflow`), which holds the
configuration, the clients and the runs it reads (declared in `mlflow_reads.MlflowReads`).
Imported through that module, which checks the installed MLflow first.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

import mlflow
from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tracked_ckpt.integrations.mlflow_fetch import MlflowFetch
from tracked_ckpt.integrations.mlflow_jobs import JOB_KEY_TAG, JOB_TAGS, MlflowJobKeys
from tracked_ckpt.integrations.mlflow_manifests import is_incremental, materialize
from tracked_ckpt.integrations.mlflow_model import schema_from_tags
from tracked_ckpt.integrations.mlflow_store import (
    ABSENT_CODES,
    check_readable,
    model_id_from_source,
    pages,
    quote,
    read_failed,
    reading,
)
from tracked_ckpt.integrations.mlflow_versions import MlflowVersions
from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord, format_value
from tracked_ckpt.tracker import LoggedCheckpoint

__all__ = ["ALL_EXPERIMENTS", "JOB_KEY_TAG", "JOB_TAGS", "MlflowRegistry"]  # the job tags live in mlflow_jobs

logger = logging.getLogger("tracked_ckpt")

ALL_EXPERIMENTS = "*"  # experiment= that scopes a read to every experiment of the store


class MlflowRegistry(MlflowFetch, MlflowVersions, MlflowJobKeys):
    """The registry and job-key side of `MlflowTracker`: checkpoints read back from the MLflow store."""

    # -- scopes and listing (TrackerRegistry, for tracked_ckpt.registry) --------------------

    @override
    def scope(
        self, run_id: str | None, experiment: str | None, *, last: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A run or a whole experiment; default: `last`, the run the last `fit` in this process logged
        to, else the run that logged the store's most recent checkpoint."""
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        with reading(uri):
            found = self._scope(uri, run_id, experiment, last)
        self._scope_uri = found["tracking_uri"]
        return found

    def _scope(
        self, uri: str, run_id: str | None, experiment: str | None, last: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        run_id = run_id or self.run_id
        experiment = experiment or self.experiment
        if not run_id and not experiment and last is not None and "run_id" in last:
            check_readable(last["tracking_uri"])
            return {
                "tracking_uri": last["tracking_uri"],
                "experiment_ids": [last["experiment_id"]],
                "run_id": last["run_id"],
            }
        client = self._read_client(uri)
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException as exc:
                if exc.error_code not in ABSENT_CODES:
                    raise
                raise LookupError(
                    f"MLflow run {run_id!r} not found at {uri}: check run_id= and MLFLOW_TRACKING_URI."
                ) from exc
            return {"tracking_uri": uri, "experiment_ids": [run.info.experiment_id], "run_id": run_id}
        if experiment == ALL_EXPERIMENTS:
            return {"tracking_uri": uri, "experiment_ids": self._experiment_ids(client)}
        if experiment:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise LookupError(
                    f"MLflow experiment {experiment!r} not found at {uri}: check the name or MLFLOW_TRACKING_URI."
                )
            return {"tracking_uri": uri, "experiment_ids": [found.experiment_id]}
        if last is not None:
            raise LookupError(
                "The last fit could not reach MLflow, so its checkpoints wait in the spool: run "
                "`tracked-ckpt sync`, then pass run_id= or experiment=."
            )
        latest = self._latest_checkpoint_run(client)
        if latest is None:
            raise LookupError(
                f"No checkpoints logged at {uri}: train with TrackedModelCheckpoint first, or pass run_id= or "
                "experiment= (and check MLFLOW_TRACKING_URI)."
            )
        logger.info("Looking in run %s, the most recent run with checkpoints at %s.", latest, uri)
        return self._scope(uri, latest, None)

    @classmethod
    def _latest_checkpoint_run(cls, client: MlflowClient) -> str | None:
        """The run that logged the store's most recent tracked checkpoint (two requests, for up to 1000 experiments)."""
        experiment_ids = cls._experiment_ids(client)
        if not experiment_ids:
            return None
        found = client.search_logged_models(
            experiment_ids=experiment_ids,
            filter_string=f"tags.`{TAG_PREFIX}sha256` LIKE '%'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
            max_results=1,
        )
        return found[0].source_run_id if found else None

    @override
    def search_checkpoints(
        self,
        scope: Mapping[str, Any],
        *,
        where: Mapping[str, Any] | None = None,
        order_by: tuple[str, str] | None = None,
        max_results: int | None = None,
    ) -> list[LoggedCheckpoint]:
        """Tracked LoggedModels of a scope; ordering by a metric happens on the server."""
        client = self.client(scope["tracking_uri"])
        # Only finished checkpoints: a LoggedModel a killed upload left PENDING is not offered
        # (nor promoted) until `tracked-ckpt sync` completes it. The store compares the status
        # column, which holds the enum's number.
        clauses = [f"tags.`{TAG_PREFIX}sha256` LIKE '%'", f"status = '{LoggedModelStatus.READY.to_int()}'"]
        if scope.get("run_id"):
            clauses.append(f"source_run_id = '{quote(scope['run_id'])}'")
        for key, value in (where or {}).items():
            if key == "name":
                clauses.append(f"name LIKE '{quote(str(value))}-e%'")
            else:
                clauses.append(f"tags.`{TAG_PREFIX}{key}` = '{quote(format_value(value))}'")
        order = None
        if order_by is not None:
            metric, mode = order_by
            # Ties go to the earliest checkpoint, the one that first reached the value (as is_best does).
            order = [
                {"field_name": f"metrics.{metric}", "ascending": mode == "min"},
                {"field_name": "creation_timestamp", "ascending": True},
            ]
        found: list[LoggedModel] = []
        with reading(scope["tracking_uri"]):  # e.g. a URL that is no MLflow server: one line, not MLflow's dump
            for page in pages(
                client.search_logged_models,
                experiment_ids=list(scope["experiment_ids"]),
                filter_string=" AND ".join(clauses),
                order_by=order,
                max_results=max_results or 1000,
            ):
                found.extend(m for m in page if m.status == LoggedModelStatus.READY)
                if max_results is not None and len(found) >= max_results:
                    break
            return self._with_run_names(
                client, [self._checkpoint(m, tracking_uri=scope["tracking_uri"]) for m in found[: max_results or None]]
            )

    # -- promotion and resolving (registered versions of the Model Registry) -------------------

    @override
    def alias_holder(self, registered_name: str, alias: str) -> LoggedCheckpoint | None:
        """The checkpoint `registered_name@alias` points at, or None."""
        client = self._read_client(self._registry_uri())
        try:
            version = client.get_model_version_by_alias(registered_name, alias)
        except MlflowException as exc:
            if exc.error_code in ABSENT_CODES:
                return None
            raise read_failed(client.tracking_uri, exc) from exc
        return self._version_checkpoint(client, version)

    @override
    def register(self, registered_name: str, checkpoint: LoggedCheckpoint, alias: str) -> str:
        """Register the checkpoint's LoggedModel (once) and move `alias` onto that version."""
        # In the registry of the store the checkpoint lives in (the last fit's server, say).
        client = self._read_client(checkpoint.extra.get("tracking_uri") or self._registry_uri())
        source = f"models:/{checkpoint.id}"
        try:
            client.create_registered_model(registered_name, description="Promoted by tracked-ckpt")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = [
            v
            for v in client.search_model_versions(
                f"name = '{quote(registered_name)}' AND run_id = '{quote(checkpoint.run_id)}'"
            )
            if v.source == source
        ]
        if existing:
            version = str(min(int(v.version) for v in existing))
        else:
            if is_incremental(checkpoint.record):  # a registered version is a complete model
                materialize(client, checkpoint, self.pip_requirements)
            tags = {TAG_PREFIX + k: v for k, v in checkpoint.record.string_metadata().items()}
            tags[TAG_PREFIX + "name"] = checkpoint.record.name
            created = client.create_model_version(
                registered_name,
                source=source,
                run_id=checkpoint.run_id,
                tags=tags,
                model_id=checkpoint.id,
                description=checkpoint.record.summary(),  # the tags are for machines; this line is for people
            )
            version = str(created.version)
        try:
            client.set_registered_model_alias(registered_name, alias, version)
        except MlflowException:
            # MLflow's SQL store sets an alias by look-up-then-insert: when jobs of a sweep
            # promote at the same moment, all but one insert a duplicate and fail. The alias
            # exists now, so a second call updates it.
            client.set_registered_model_alias(registered_name, alias, version)
        return version

    @override
    def resolve(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """The checkpoint behind `registered_name@alias` or `registered_name/version`."""
        client = self._read_client(self._registry_uri())
        try:
            if alias is not None:
                mv = client.get_model_version_by_alias(registered_name, alias)
            elif version is not None:
                mv = client.get_model_version(registered_name, str(version))
            else:
                raise ValueError("Pass alias= or version=.")
        except MlflowException as exc:
            if exc.error_code not in ABSENT_CODES:
                raise read_failed(client.tracking_uri, exc) from exc
            what = f"alias {alias!r}" if alias is not None else f"version {version}"
            raise LookupError(
                f"Registered model {registered_name!r} has no {what} at {client.tracking_uri}: "
                f"promote a checkpoint first (promote_best({registered_name!r})) or check the name."
            ) from exc
        found = self._version_checkpoint(client, mv)
        if found is None:
            raise LookupError(
                f"{registered_name} version {mv.version} was not registered by tracked-ckpt "
                f"(source {mv.source}): load it with mlflow.keras.load_model instead."
            )
        return found

    @override
    def resolve_for_load(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """`resolve` in one request, for loading: the record from the registered version's tags.

        `register()` copied the schema there; the LoggedModel (metrics, location)
        is read only on a cache miss, by `fetch`. The downloaded bytes are still
        checked against the recorded sha256.
        """
        client = self._read_client(self._registry_uri())
        try:
            mv = (
                client.get_model_version_by_alias(registered_name, alias)
                if alias is not None
                else client.get_model_version(registered_name, str(version))
                if version is not None
                else None
            )
        except MlflowException:
            mv = None  # resolve() says what is missing
        model_id = model_id_from_source(getattr(mv, "source", None))
        tags = getattr(mv, "tags", None) or {}
        if mv is None or model_id is None or TAG_PREFIX + "sha256" not in tags:
            return self.resolve(registered_name, alias=alias, version=version)
        metadata = schema_from_tags(tags)
        name = metadata.pop("name", "")
        return LoggedCheckpoint(
            id=model_id,
            run_id=mv.run_id or "",
            record=CheckpointRecord.from_metadata(metadata, name=name),
            tracker=self.name,
            location="",
            aliases=tuple(mv.aliases or ()),
            extra={"tracking_uri": client.tracking_uri, "version": str(mv.version), "registered_name": mv.name},
        )

    def _version_checkpoint(self, client: MlflowClient, version: ModelVersion) -> LoggedCheckpoint | None:
        """The checkpoint a registered version points at, with its version, aliases and run's name; None
        if the version's source is no LoggedModel of this store."""
        model_id = model_id_from_source(version.source)
        if model_id is None:
            return None
        try:
            model = client.get_logged_model(model_id)
        except MlflowException:
            return None
        found = self._checkpoint(model, tracking_uri=client.tracking_uri)
        try:
            run_name = client.get_run(found.run_id).info.run_name or "" if found.run_id else ""
        except MlflowException:
            run_name = ""  # the run was deleted: the checkpoint still loads
        return dataclasses.replace(
            found,
            aliases=tuple(version.aliases or ()),
            extra={
                **found.extra,
                "version": str(version.version),
                "registered_name": version.name,
                "run_name": run_name,
            },
        )
