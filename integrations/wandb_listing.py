"""Which W&B runs or project a read looks in, and the tracked checkpoints listed there.

`WandbListing` is the base of the W&B registry side (`wandb_registry.WandbRegistry`):
the `wandb.Api` every remote read goes through (the one given as `api=`, or one
made from the environment), `scope` (a run, a project, or offline runs' folders,
`wandb_offline`) and `search_checkpoints` over it, and how a version or a
Registry link reads back as a `LoggedCheckpoint`. W&B has no server-side search
or ordering over metadata, so a scope's versions are fetched once and ranked here.

It declares what the tracker holds (`WandbTracker`: its configuration, the lock and
the Api). Imported through `tracked_ckpt.integrations.wandb`, which checks the
installed W&B first.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import threading
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

import wandb
import wandb.errors

from tracked_ckpt.integrations import wandb_offline
from tracked_ckpt.integrations.wandb_reads import (
    READ_ERRORS,
    cause_of,
    no_answer,
    page_url,
    reading,
    run_not_found,
    run_or_none,
)
from tracked_ckpt.integrations.wandb_schema import (
    ARTIFACT_TYPE,
    base_of_collection,
    is_tracked,
    metadata_matches,
    record_from_metadata,
    run_id_of,
    version_number,
)
from tracked_ckpt.record import best_first
from tracked_ckpt.tracker import LoggedCheckpoint, TrackerError, TrackerRegistry

#: Registry projects are named `wandb-registry-<registry>`.
REGISTRY_PREFIX = "wandb-registry-"


class WandbListing(TrackerRegistry):
    """The base of `WandbRegistry`: the Api, scopes, and the checkpoints listed in them."""

    # What the tracker holds (its configuration and, `_api` and `_lock`, its runtime).
    name: str
    project: str | None
    entity: str | None
    run_id: str | None
    mode: str | None
    dir: str | None
    registry: str
    _api: Any
    _lock: threading.RLock

    # -- listing (TrackerRegistry, for tracked_ckpt.registry) -------------------------------
    #
    # W&B has no server-side search over artifact metadata and no ordering by a metadata
    # value, so a scope's versions are fetched once and filtered and ranked here. A run
    # scope costs two calls (the run, then its logged versions, 100 per page) whatever the
    # number of checkpoints; a project scope costs one call per "model" collection.

    @property
    def api(self) -> Any:
        """The `wandb.Api` for remote operations (the one passed in, else `wandb.Api()` on first use).

        Raises:
            TrackerError: W&B is in offline or disabled mode, or no API key is configured.
        """
        with self._lock:
            if self._api is None:
                self._api = self._new_api()
            return self._api

    @override
    def scope(
        self, run_id: str | None, experiment: str | None, *, last: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A run's checkpoints or a whole project's, on the W&B server or in offline runs' folders.

        Args:
            run_id: a run id (its project from `experiment`, the tracker's `project`,
                the last fit's destination or `WANDB_PROJECT`), or "project/run id",
                or "entity/project/run id"; or an offline run's folder.
            experiment: a W&B project ("project" or "entity/project"): alone, every
                tracked-ckpt checkpoint of the project's "model" collections; or a
                folder of offline runs (`wandb/`, or the folder holding it): all of them.

        Default: the tracker's `run_id`, else the run the last `fit` in this process
        logged to, else the whole project (the tracker's `project`, else `WANDB_PROJECT`).
        In offline mode (`mode="offline"` or `WANDB_MODE=offline`) the runs are
        those W&B wrote under `dir` (`WANDB_DIR`, else the working directory), the
        newest by default; so are those of a last fit that logged offline.

        Raises:
            LookupError: nothing names a run or project, or no offline run matches.
            TrackerError: the last fit ran with W&B disabled, or logged offline
                into a folder that is not here.
        """
        if run_id and wandb_offline.is_runs_folder(run_id):
            return wandb_offline.offline_scope(run_id)
        if experiment and wandb_offline.is_runs_folder(experiment):
            return wandb_offline.offline_scope(experiment, run_id=run_id)
        if self._offline_mode():
            return wandb_offline.default_scope(self._wandb_dir(), run_id or self.run_id, experiment, last)
        if run_id:
            return self._run_scope(run_id, experiment, last)
        if experiment:
            return self._project_scope(experiment)
        if self.run_id:
            return self._run_scope(self.run_id, self.project, last)
        if last is not None:
            mode = last.get("mode")
            if mode == "offline":
                if last.get("runs_folder") and os.path.isdir(last["runs_folder"]):
                    return wandb_offline.last_fit_scope(last)
                pattern = os.path.join(self._wandb_dir(), "wandb", f"offline-run-*-{last['run_id']}")
                raise TrackerError(
                    f"The last fit logged to W&B offline (run {last['run_id']}), so the W&B server does "
                    f"not have its checkpoints yet: run `wandb sync {pattern}` first and use online mode, "
                    f"then pass run_id='{last.get('project') or '<project>'}/{last['run_id']}'."
                )
            if mode == "disabled":
                raise TrackerError(
                    "The last fit ran with W&B disabled (WANDB_MODE=disabled), so nothing was logged: "
                    "train in online mode, or pass run_id= / experiment= for a logged run."
                )
            scope = {"project": last.get("project") or "", "run_id": last["run_id"]}
            if last.get("entity"):
                scope = {"entity": last["entity"], **scope}
            return scope
        project = self.project or os.environ.get("WANDB_PROJECT")
        if project:
            return self._project_scope(project)
        raise LookupError(
            "No W&B run to look in: pass run_id= (e.g. 'my-project/1a2b3c4d') or experiment='my-project', "
            "or set WANDB_PROJECT (no fit has logged to W&B in this process)."
        )

    @override
    def search_checkpoints(
        self,
        scope: Mapping[str, Any],
        *,
        where: Mapping[str, Any] | None = None,
        order_by: tuple[str, str] | None = None,
        max_results: int | None = None,
    ) -> list[LoggedCheckpoint]:
        """Tracked checkpoints of a scope matching `where`, oldest first or best first by `order_by`.

        W&B cannot filter or order versions by metadata on the server, so this
        fetches the scope's versions once (a run: two calls; a project: one per
        "model" collection) and filters and ranks them here. Checkpoints without
        the metric rank last.
        """
        wanted = dict(where or {})
        base = wanted.pop("name", None)
        found = [
            checkpoint
            for checkpoint, metadata in self._scope_checkpoints(scope, base)
            if (base is None or checkpoint.extra["base"] == base)
            and all(metadata_matches(metadata.get(k), v) for k, v in wanted.items())
        ]
        found.sort(key=lambda c: (c.run_id, c.record.step, version_number(c.id.rpartition(":")[2])))
        if order_by is not None:
            metric, mode = order_by
            # Stable: among equal values the order above stands (the ranking's step tie-break is per run).
            found.sort(key=lambda c: best_first(c.record, metric, mode)[:2])
        return found if max_results is None else found[:max_results]

    def _scope_checkpoints(
        self, scope: Mapping[str, Any], base: str | None
    ) -> list[tuple[LoggedCheckpoint, Mapping[str, Any]]]:
        """The tracked checkpoints of a scope, each with its version's metadata, named by their runs."""
        if wandb_offline.SCOPE_KEY in scope:
            return wandb_offline.checkpoints(wandb_offline.scope_runs(scope), self.name)
        versions, run_names = self._scope_versions(scope, base)
        found = []
        for artifact in versions:
            if getattr(artifact, "state", "COMMITTED") != "COMMITTED":
                continue  # still uploading (or deleted): never offered as a checkpoint
            checkpoint = self._checkpoint(artifact, scope.get("run_id"))
            if checkpoint is not None:
                found.append((checkpoint, artifact.metadata))
        if run_names is None:
            run_names = self._run_names(scope, {c.run_id for c, _ in found})
        return [
            (dataclasses.replace(c, extra={**c.extra, "run_name": run_names.get(c.run_id, "")}), m) for c, m in found
        ]

    def _run_names(self, scope: Mapping[str, Any], run_ids: set[str]) -> dict[str, str]:
        """The display names of a project's runs: one call per 100 runs."""
        where = "/".join(p for p in (scope.get("entity"), scope["project"]) if p)
        names: dict[str, str] = {}
        ids = sorted(run_ids)
        with reading(f"the runs of project {where}"):
            for start in range(0, len(ids), 100):
                part = ids[start : start + 100]
                for run in self.api.runs(where, filters={"name": {"$in": part}}, per_page=len(part)):
                    names[run.id] = run.name or ""
        return names

    # -- helpers: the Api, scopes, versions as checkpoints ----------------------------------

    def _mode(self) -> str:
        return self.mode or os.environ.get("WANDB_MODE") or "online"

    def _offline_mode(self) -> bool:
        return self._mode() in ("offline", "dryrun")

    def _wandb_dir(self) -> str:
        """Where W&B writes run folders (into its `wandb/` folder)."""
        return self.dir or os.environ.get("WANDB_DIR") or "."

    def _new_api(self) -> Any:
        mode = self._mode()
        if mode in ("offline", "dryrun", "disabled"):
            raise TrackerError(
                f"W&B is in {mode} mode (WANDB_MODE or mode=), and promoting, loading a registered model or "
                "deleting checkpoints needs the W&B server: run `wandb sync <offline run dir>` first "
                "and use online mode (unset WANDB_MODE or pass WandbTracker(mode='online'))."
            )
        overrides = {k: v for k, v in (("entity", self.entity), ("project", self.project)) if v}
        try:
            return wandb.Api(overrides=overrides)
        except wandb.errors.UsageError as exc:
            raise TrackerError(f"Cannot use the W&B API: {exc} (or set WANDB_API_KEY).") from exc

    def _run_scope(self, run_id: str, project: str | None, last: Mapping[str, Any] | None = None) -> dict[str, Any]:
        parts = run_id.strip("/").split("/")
        if len(parts) > 3 or not all(parts):
            raise ValueError(f"Invalid W&B run {run_id!r}: use 'run id', 'project/run id' or 'entity/project/run id'.")
        run = parts[-1]
        last = last or {}
        same_run = last.get("run_id") == run
        if len(parts) >= 2:
            project = parts[-2]
        project_entity = ""
        if project and "/" in project:
            project_entity, _, project = project.rpartition("/")
        project = (
            project or self.project or (last.get("project") if same_run else None) or os.environ.get("WANDB_PROJECT")
        )
        if not project:
            raise LookupError(f"W&B run ids are per project: pass run_id='<project>/{run}' or experiment='<project>'.")
        entity = (
            (parts[0] if len(parts) == 3 else "")
            or project_entity
            or self.entity
            or (last.get("entity") if same_run else None)
            or os.environ.get("WANDB_ENTITY")
            or ""
        )
        scope = {"project": project, "run_id": run}
        return {"entity": entity, **scope} if entity else scope

    def _project_scope(self, experiment: str) -> dict[str, Any]:
        entity, _, project = experiment.strip("/").rpartition("/")
        entity = entity or self.entity or os.environ.get("WANDB_ENTITY") or ""
        return {"entity": entity, "project": project} if entity else {"project": project}

    def _scope_versions(self, scope: Mapping[str, Any], base: str | None) -> tuple[list[Any], dict[str, str] | None]:
        """The versions of a scope, and for a run scope its name ({run id: name}; None: to be read)."""
        api = self.api
        where = "/".join(p for p in (scope.get("entity"), scope["project"]) if p)
        if scope.get("run_id"):
            path = f"{where}/{scope['run_id']}"
            try:
                run = api.run(path)
            except READ_ERRORS as exc:
                if not run_not_found(exc):  # a server that is down is not a missing run
                    raise no_answer(f"run {path}", exc) from exc
                raise LookupError(
                    f"W&B run {path} not found ({exc}): check run_id, the project (experiment=) and "
                    "WANDB_ENTITY; an offline run needs `wandb sync` first."
                ) from exc
            with reading(f"run {path}"):  # the listing asks W&B while it is iterated
                return [a for a in run.logged_artifacts() if a.type == ARTIFACT_TYPE], {run.id: run.name or ""}
        try:
            collections = [
                c
                for c in api.artifact_collections(where, ARTIFACT_TYPE)
                if base is None or c.name.startswith(base + "-")
            ]
        except READ_ERRORS as exc:  # raised while the listing is iterated, unwrapped
            # A ValueError is W&B's answer "no such project" (or no collection to parse); else it did not answer.
            if not isinstance(cause_of(exc), ValueError):
                raise no_answer(f"project {where}", exc) from exc
            raise LookupError(
                f"W&B project {where} has no {ARTIFACT_TYPE!r} artifacts ({exc}): check the project "
                "name and WANDB_ENTITY."
            ) from exc
        versions = []
        with reading(f"project {where}"):
            for collection in collections:
                path = f"{collection.entity}/{collection.project}/{collection.name}"
                versions.extend(api.artifacts(ARTIFACT_TYPE, path))
        return versions, None

    def _checkpoint(self, artifact: Any, run_id: str | None = None) -> LoggedCheckpoint | None:
        """A logged version (or a Registry link, mapped to its source) as a checkpoint; None if not ours."""
        metadata = artifact.metadata or {}
        if not is_tracked(metadata):
            return None
        collection = artifact.source_name.split(":")[0]
        run_id = run_id or run_id_of(metadata, collection)
        base = base_of_collection(collection, run_id)
        try:
            record = record_from_metadata(metadata, base)
        except (TypeError, ValueError):
            return None
        source = artifact.source_qualified_name
        return LoggedCheckpoint(
            id=source,
            run_id=run_id,
            record=record,
            tracker=self.name,
            location=source,
            aliases=tuple(a for a in artifact.aliases if not re.fullmatch(r"v\d+", a)),
            # A link's page (the Registry's) costs a call: `_linked_checkpoint` asks for it when shown.
            extra={
                "base": base,
                "collection": source.split(":")[0],
                "url": "" if getattr(artifact, "is_link", False) else page_url(artifact),
            },
        )

    def _linked_checkpoint(
        self, linked: Any, registered_name: str, *, described: bool = False
    ) -> LoggedCheckpoint | None:
        """A Registry link as its source's checkpoint; `described`: with its run's name and its Registry page
        (two more calls, for people)."""
        found = self._checkpoint(linked)
        if found is None:
            return None
        extra = {
            **found.extra,
            "version": linked.version,
            "registered_name": registered_name,
            "registry_path": f"{self._registry_collection(registered_name)}:{linked.version}",
        }
        if described:
            path = f"{linked.source_entity}/{linked.source_project}/{found.run_id}"
            run = run_or_none(self.api, path)
            extra["run_name"] = "" if run is None else run.name or ""  # None: deleted, its checkpoint still loads
            extra["url"] = page_url(linked)
        return dataclasses.replace(found, extra=extra)

    def _registry_collection(self, registered_name: str) -> str:
        if not registered_name or any(c in registered_name for c in "/:"):
            raise ValueError(
                f"Invalid registered model name {registered_name!r}: a W&B Registry collection name "
                "has no '/' or ':' (e.g. 'digits-classifier')."
            )
        return f"{REGISTRY_PREFIX}{self.registry}/{registered_name}"
