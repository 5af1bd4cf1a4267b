"""The MLflow registry's look-ups for the verbs: a checkpoint by id, registered versions, their runs.

`MlflowVersions` is the part of `MlflowRegistry` that `tracked_ckpt.verbs` and `lookup.py` use:
the tracked LoggedModel with an id (`m-…`), the checkpoints a registered model's versions point
at (a constant number of requests), the registered versions of a checkpoint and their deletion
(`unregister`, before `delete_checkpoint` deletes it), the params of the run that logged a
checkpoint (to compare two) and that run as a destination (to delete through).

Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed MLflow first.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from mlflow.entities import LoggedModel, LoggedModelStatus
from mlflow.exceptions import MlflowException

from tracked_ckpt.integrations.mlflow_reads import MlflowReads
from tracked_ckpt.integrations.mlflow_store import ABSENT_CODES, model_id_from_source, pages, quote, read_failed
from tracked_ckpt.record import TAG_PREFIX
from tracked_ckpt.tracker import LoggedCheckpoint, Registration

logger = logging.getLogger("tracked_ckpt")


class MlflowVersions(MlflowReads):
    """`MlflowTracker`'s look-ups by id, of registered versions and of runs, and `unregister`."""

    @override
    def checkpoint_by_id(self, checkpoint_id: str) -> LoggedCheckpoint | None:
        """The finished tracked LoggedModel with this id (`m-…`), or None."""
        client = self._read_client(self._registry_uri())
        try:
            model = client.get_logged_model(checkpoint_id)
        except MlflowException as exc:
            if exc.error_code in ABSENT_CODES:
                return None
            raise read_failed(client.tracking_uri, exc) from exc
        if model.status != LoggedModelStatus.READY or f"{TAG_PREFIX}sha256" not in (model.tags or {}):
            return None
        return self._with_run_names(client, [self._checkpoint(model, tracking_uri=client.tracking_uri)])[0]

    @override
    def registered_versions(self, registered_name: str) -> list[LoggedCheckpoint]:
        """The tracked LoggedModels a registered model's versions point at, with version and aliases.

        A constant number of requests: the model (for its aliases), its versions, the store's
        experiments, then the LoggedModels and their runs' names, 100 at a time.
        """
        client = self._read_client(self._registry_uri())
        try:
            model = client.get_registered_model(registered_name)
            versions = [
                v
                for page in pages(client.search_model_versions, filter_string=f"name = '{quote(registered_name)}'")
                for v in page
            ]
        except MlflowException as exc:
            if exc.error_code not in ABSENT_CODES:
                raise read_failed(client.tracking_uri, exc) from exc
            raise LookupError(
                f"No registered model {registered_name!r} at {client.tracking_uri}: check the name "
                f"(promote_best({registered_name!r}) registers one)."
            ) from exc
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        by_model = {model_id_from_source(v.source): v for v in versions}
        by_model.pop(None, None)
        found: dict[str, LoggedModel] = {}
        model_ids = sorted(str(m) for m in by_model)
        experiment_ids = self._experiment_ids(client) if model_ids else []
        for start in range(0, len(model_ids), 100):
            part = ", ".join(f"'{quote(m)}'" for m in model_ids[start : start + 100])
            for page in pages(
                client.search_logged_models,
                experiment_ids=experiment_ids,
                filter_string=f"model_id IN ({part}) AND tags.`{TAG_PREFIX}sha256` LIKE '%'",
            ):
                found.update((m.model_id, m) for m in page if m.status == LoggedModelStatus.READY)
        listed = []
        for model_id, version in sorted(by_model.items(), key=lambda item: int(item[1].version)):
            if model_id not in found:
                logger.warning(
                    "%s version %s points at %s, which is not a finished tracked-ckpt checkpoint (deleted?).",
                    registered_name,
                    version.version,
                    version.source,
                )
                continue
            checkpoint = self._checkpoint(found[str(model_id)], tracking_uri=client.tracking_uri)
            listed.append(
                dataclasses.replace(
                    checkpoint,
                    aliases=tuple(sorted(aliases.get(str(version.version), []))),
                    extra={**checkpoint.extra, "version": str(version.version), "registered_name": registered_name},
                )
            )
        return self._with_run_names(client, listed)

    @override
    def registrations(self, checkpoint: LoggedCheckpoint) -> list[Registration]:
        """The registered model versions whose source is the checkpoint's LoggedModel, with their aliases.

        The same look-up `delete_checkpoint` makes (the versions of the checkpoint's run).
        """
        client = self._read_client(checkpoint.extra.get("tracking_uri") or self._registry_uri())
        versions = [
            v
            for v in client.search_model_versions(f"run_id = '{quote(checkpoint.run_id)}'")
            if v.source == f"models:/{checkpoint.id}"
        ]
        aliases: dict[tuple[str, str], list[str]] = {}
        for name in sorted({v.name for v in versions}):  # versions found by search carry no aliases
            for alias, version in (client.get_registered_model(name).aliases or {}).items():
                aliases.setdefault((name, str(version)), []).append(alias)
        return [
            Registration(v.name, str(v.version), tuple(sorted(aliases.get((v.name, str(v.version)), []))))
            for v in sorted(versions, key=lambda v: (v.name, int(v.version)))
        ]

    @override
    def unregister(self, checkpoint: LoggedCheckpoint) -> list[Registration]:
        """Delete the registered model versions pointing at the checkpoint (their aliases go with them)."""
        held = self.registrations(checkpoint)
        client = self.client(checkpoint.extra.get("tracking_uri") or self._registry_uri())
        for registration in held:
            client.delete_model_version(registration.registered_name, registration.version)
            logger.info("Deleted %s.", registration.text())
        return held

    @override
    def run_config(self, checkpoint: LoggedCheckpoint) -> dict[str, Any]:
        """The params of the checkpoint's run ({} if the run is gone)."""
        client = self._read_client(checkpoint.extra.get("tracking_uri") or self._registry_uri())
        try:
            return dict(client.get_run(checkpoint.run_id).data.params)
        except MlflowException as exc:
            if exc.error_code in ABSENT_CODES:
                return {}
            raise read_failed(client.tracking_uri, exc) from exc

    @override
    def destination_of(self, checkpoint: LoggedCheckpoint) -> dict[str, Any]:
        """The run that logged the checkpoint, as `start` names it."""
        destination = {"tracking_uri": checkpoint.extra.get("tracking_uri") or self._registry_uri()}
        if checkpoint.extra.get("experiment_id"):
            destination["experiment_id"] = checkpoint.extra["experiment_id"]
        return {**destination, "run_id": checkpoint.run_id}
