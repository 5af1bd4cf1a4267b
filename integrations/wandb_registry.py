"""The registry side of the W&B tracker: list, promote, resolve and fetch checkpoints; job keys.

`WandbRegistry` answers the registry helper (`promote_best`,
`list_checkpoints`, `load_model`, ...; `tracker="wandb"`): a checkpoint's id is
its version's full name `entity/project/collection:vN`; promoting links that
version into the Registry collection `wandb-registry-model/<registered name>`
(once; promoting it again only moves the alias) with the alias, e.g.
`champion`. W&B has no server-side search or ordering over metadata, so a
scope's versions are fetched once and ranked here: a run costs two calls
whatever its number of checkpoints, a project one call per collection (and one
per 100 runs for their names). An offline run's checkpoints are listed, ranked
and loaded from its folder (`wandb_offline`); promoting one needs the server,
so it must be `wandb sync`ed first.

It also answers resume by job key (`TrackerJobKeys`): a job's run id derives
from its key, and the key and its lease live in the run's summary.

Remote reads and edits go through the public `wandb.Api` only, the one given
as `api=` (another client with its surface, e.g. a test double) or one made
from the environment (`WandbRegistry.api`, which `delete_checkpoint` uses too),
and fail in one line, never passing an error off as "does not exist" (`wandb_reads`).

A mixin of `WandbTracker` (`tracked_ckpt.integrations.wandb`), which holds the
configuration, the lock and the live runs: the names declared below. Imported
through that module, which checks the installed W&B first.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
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
from tracked_ckpt.integrations.wandb_chunks import fetch_incremental
from tracked_ckpt.integrations.wandb_reads import (
    READ_ERRORS,
    artifact_or_none,
    cause_of,
    links_of,
    no_answer,
    page_url,
    reading,
    run_not_found,
    run_or_none,
)
from tracked_ckpt.integrations.wandb_schema import (
    ARTIFACT_TYPE,
    ROUTINE_ALIAS_RE,
    base_of_collection,
    is_tracked,
    job_run_id,
    metadata_matches,
    record_from_metadata,
    run_id_of,
    version_number,
    version_ref,
)
from tracked_ckpt.record import STORAGE_INCREMENTAL, best_first
from tracked_ckpt.tracker import LoggedCheckpoint, Registration, TrackerError, TrackerJobKeys, TrackerRegistry

logger = logging.getLogger("tracked_ckpt")

# The aliases W&B keeps on a Registry link for itself (every other one was given by a promotion).
_LINK_BOOKKEEPING_RE = re.compile(r"latest|v\d+")

#: Registry projects are named `wandb-registry-<registry>`.
REGISTRY_PREFIX = "wandb-registry-"
JOB_SUMMARY_KEYS = {"key": "tracked_ckpt_job_key", "lease": "tracked_ckpt_job_lease"}  # tracked_ckpt.resume


class WandbRegistry(TrackerRegistry, TrackerJobKeys):
    """The registry and job-key side of `WandbTracker`: checkpoints read back through `wandb.Api`."""

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

    @abc.abstractmethod
    def _run_for(self, destination: Mapping[str, Any]) -> Any:
        """The live run for a destination (the one from `start`, the active one, or resumed)."""

    # -- registry (TrackerRegistry, for tracked_ckpt.registry) ------------------------------
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

    @override
    def check_registrable(self, checkpoint: LoggedCheckpoint) -> None:
        """Refuse a checkpoint of an offline run in one line: the W&B server does not have it yet."""
        if checkpoint.extra.get("offline_run_dir"):
            raise wandb_offline.not_registrable(checkpoint)

    @override
    def alias_holder(self, registered_name: str, alias: str) -> LoggedCheckpoint | None:
        """The checkpoint `wandb-registry-{registry}/{registered_name}:{alias}` links to, or None."""
        linked = artifact_or_none(self.api, f"{self._registry_collection(registered_name)}:{alias}")
        return None if linked is None else self._linked_checkpoint(linked, registered_name, described=True)

    @override
    def register(self, registered_name: str, checkpoint: LoggedCheckpoint, alias: str) -> str:
        """Link the checkpoint's version into the Registry collection (once) and move `alias` onto it.

        A version already linked into the collection is not linked again: the
        alias moves onto its existing link. Returns the Registry version, e.g. "v0".
        """
        api = self.api
        target = self._registry_collection(registered_name)
        with reading(f"artifact {checkpoint.id}"):
            source = api.artifact(checkpoint.id, type=ARTIFACT_TYPE)
            links = list(source.linked_artifacts)
        project = REGISTRY_PREFIX + self.registry
        existing = [link for link in links if link.project == project and link.name.split(":")[0] == registered_name]
        if existing:
            version = min((link.version for link in existing), key=version_number)
            with reading(f"artifact {target}:{version}"):
                linked = api.artifact(f"{target}:{version}", type=ARTIFACT_TYPE)
            if alias not in linked.aliases:
                # W&B takes the alias off the collection's version that held it.
                linked.aliases = [*linked.aliases, alias]
                linked.save()
            return str(version)
        return str(source.link(target, aliases=[alias]).version)

    @override
    def resolve(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """The checkpoint behind `registered_name` at `alias`, or at `version` ("v3", "3" or 3).

        Raises:
            LookupError: the Registry collection, alias or version does not exist, or
                its version was not logged by tracked-ckpt.
            TrackerError: W&B did not answer (an error is never taken for "does not exist").
        """
        return self._resolve(registered_name, alias, version, described=True)

    @override
    def resolve_for_load(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """`resolve` without the run's name and the Registry page: two calls fewer."""
        return self._resolve(registered_name, alias, version, described=False)

    def _resolve(
        self, registered_name: str, alias: str | None, version: str | None, *, described: bool
    ) -> LoggedCheckpoint:
        if alias is not None:
            ref, what = alias, f"alias {alias!r}"
        elif version is not None:
            ref, what = version_ref(version), f"version {version}"
        else:
            raise ValueError("Pass alias= or version=.")
        collection = self._registry_collection(registered_name)
        linked = artifact_or_none(self.api, f"{collection}:{ref}")
        if linked is None:
            raise LookupError(
                f"Registered model {registered_name!r} has no {what} in the W&B Registry ({collection}): "
                f"promote a checkpoint first (promote_best({registered_name!r}, tracker='wandb')) "
                "or check the name."
            )
        found = self._linked_checkpoint(linked, registered_name, described=described)
        if found is None:
            raise LookupError(
                f"{collection}:{ref} ({linked.source_qualified_name}) was not logged by tracked-ckpt: "
                "download it with wandb.Api().artifact(...).download() instead."
            )
        return found

    @override
    def fetch(self, checkpoint: LoggedCheckpoint, directory: str) -> str:
        """Download the checkpoint's file into `directory` (through its Registry link if it has one).

        An offline run's checkpoint is copied from the run's folder. An incremental version (a
        manifest and packs, `wandb_chunks`) is rebuilt from the packs the local pack cache lacks,
        every chunk and the whole file verified.
        """
        if checkpoint.extra.get("offline_run_dir"):
            return wandb_offline.copy_file(checkpoint, directory)
        ref = checkpoint.extra.get("registry_path") or checkpoint.id
        with reading(f"artifact {ref}"):
            artifact = self.api.artifact(ref, type=ARTIFACT_TYPE)
            if checkpoint.record.storage == STORAGE_INCREMENTAL:
                return fetch_incremental(artifact, f"W&B checkpoint {checkpoint.id}", directory)
        return str(os.fspath(artifact.file(directory)))

    # -- by id, registered versions, deleting (for tracked_ckpt.verbs) -------------------------

    @override
    def checkpoint_by_id(self, checkpoint_id: str) -> LoggedCheckpoint | None:
        """The tracked version `entity/project/collection:vN` (or a Registry link's source), or None."""
        artifact = artifact_or_none(self.api, checkpoint_id)
        if artifact is None or getattr(artifact, "state", "COMMITTED") != "COMMITTED":
            return None
        return self._checkpoint(artifact)

    @override
    def registered_versions(self, registered_name: str) -> list[LoggedCheckpoint]:
        """The versions linked into the Registry collection, oldest link first, with their aliases
        (one call, whatever the number of versions)."""
        collection = self._registry_collection(registered_name)
        try:
            links = list(self.api.artifacts(ARTIFACT_TYPE, collection))
        except READ_ERRORS as exc:  # raised while the listing is iterated, unwrapped
            if not isinstance(cause_of(exc), ValueError):
                raise no_answer(f"collection {collection}", exc) from exc
            raise LookupError(
                f"No Registry collection {collection} on W&B: check the name "
                f"(tracked-ckpt promote {registered_name} --tracker wandb registers one)."
            ) from exc
        listed = []
        for link in sorted(links, key=lambda a: version_number(a.version)):
            found = self._linked_checkpoint(link, registered_name)
            if found is not None:
                aliases = tuple(sorted(a for a in link.aliases if not _LINK_BOOKKEEPING_RE.fullmatch(a)))
                listed.append(dataclasses.replace(found, aliases=aliases))
        return listed

    @override
    def registrations(self, checkpoint: LoggedCheckpoint) -> list[Registration]:
        """The Registry links of the checkpoint's version, and the aliases a person gave the version itself:
        what makes `delete_checkpoint` keep it."""
        artifact = artifact_or_none(self.api, checkpoint.id)
        if artifact is None:
            return []
        held = []
        own = tuple(sorted(a for a in artifact.aliases if not ROUTINE_ALIAS_RE.fullmatch(a)))
        if own:
            held.append(Registration(artifact.source_name.split(":")[0], artifact.source_version, own))
        for link in links_of(artifact):
            aliases = tuple(sorted(a for a in link.aliases if not _LINK_BOOKKEEPING_RE.fullmatch(a)))
            held.append(Registration(f"{link.project}/{link.name.split(':')[0]}", link.version, aliases))
        return held

    @override
    def unregister(self, checkpoint: LoggedCheckpoint) -> list[Registration]:
        """Unlink the checkpoint's version from every Registry collection and take off the aliases a
        person gave it (the routine ones, `best`, `epoch-N`, go with the version)."""
        held = self.registrations(checkpoint)
        artifact = artifact_or_none(self.api, checkpoint.id)
        if artifact is None:
            return held
        for link in links_of(artifact):
            link.delete(delete_aliases=True)  # deleting a link only unlinks it
        own = [a for a in artifact.aliases if not ROUTINE_ALIAS_RE.fullmatch(a)]
        if own:
            artifact.aliases = [a for a in artifact.aliases if a not in own]
            artifact.save()
        for registration in held:
            logger.info("Removed %s.", registration.text())
        return held

    @override
    def run_config(self, checkpoint: LoggedCheckpoint) -> dict[str, Any]:
        """The config of the checkpoint's run, W&B's own keys (`_wandb`) left out ({} if the run is gone)."""
        path = "/".join(p for p in (*self._owner_of(checkpoint), checkpoint.run_id) if p)
        run = run_or_none(self.api, path)
        if run is None:
            return {}
        with reading(f"run {path}"):
            return {key: value for key, value in dict(run.config).items() if not key.startswith("_")}

    @override
    def destination_of(self, checkpoint: LoggedCheckpoint) -> dict[str, Any]:
        """The run that logged the checkpoint: its project and entity from the version's path."""
        entity, project = self._owner_of(checkpoint)
        destination = {"project": project, "run_id": checkpoint.run_id, "mode": "online"}
        return {"entity": entity, **destination} if entity else destination

    # -- job keys (TrackerJobKeys, for resume="<job key>") ----------------------------------
    #
    # A job's run id derives from its key, so a restarted job finds (or, the first time,
    # creates) its run with `wandb.init(id=..., resume="allow")`; the key and the lease live
    # in the run's summary. Reading them back, and the run's versions, needs the W&B server.

    @override
    def find_job(self, job_key: str) -> dict[str, Any]:
        """The destination of the job's run: id derived from the key (the run may not exist yet)."""
        mode = self.mode or os.environ.get("WANDB_MODE") or "online"
        return {
            "run_id": job_run_id(job_key),
            "project": self.project or os.environ.get("WANDB_PROJECT") or "",
            "entity": self.entity or os.environ.get("WANDB_ENTITY") or "",
            "mode": "offline" if mode == "dryrun" else mode,
        }

    @override
    def job_info(self, destination: Mapping[str, Any]) -> dict[str, str]:
        """The job key and lease in the run's summary on the server ({} offline, or before the run exists)."""
        run = self._server_run(destination)
        if run is None:
            return {}
        summary = run.summary
        return {name: str(summary[key]) for name, key in JOB_SUMMARY_KEYS.items() if summary.get(key) is not None}

    @override
    def set_job_info(self, destination: Mapping[str, Any], values: Mapping[str, str]) -> None:
        """Write the job key and lease into the live run's summary."""
        if destination.get("mode") == "disabled":
            return
        with self._lock:
            run = self._run_for(destination)
        run.summary.update({JOB_SUMMARY_KEYS[name]: value for name, value in values.items()})

    @override
    def job_checkpoints(self, destination: Mapping[str, Any], name: str | None) -> list[LoggedCheckpoint]:
        """The versions the run logged (its collection's; [] offline or before the run exists)."""
        if self._server_run(destination) is None:
            return []
        scope = self._run_scope(
            "/".join(p for p in (destination.get("entity"), destination.get("project"), destination["run_id"]) if p),
            None,
            destination,
        )
        return self.search_checkpoints(scope, where={"name": name} if name else None)

    def _server_run(self, destination: Mapping[str, Any]) -> Any:
        """The run as the W&B server has it now, or None (offline, disabled, not created yet)."""
        if destination.get("mode") != "online":
            logger.debug(
                "W&B run %s is %s: the server cannot be asked about it.",
                destination.get("run_id"),
                destination.get("mode"),
            )
            return None
        api = self.api
        api.flush()  # the Api caches runs; the lease must be read fresh
        path = "/".join(p for p in (destination.get("entity"), destination.get("project"), destination["run_id"]) if p)
        # Only "no such run" is None: taking an error for it would make a restarted job start over.
        return run_or_none(api, path)

    # -- helpers --------------------------------------------------------------------------

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

    @staticmethod
    def _owner_of(checkpoint: LoggedCheckpoint) -> tuple[str, str]:
        """The entity and project of a checkpoint's version, from its id `entity/project/collection:vN`."""
        *owner, _collection = checkpoint.id.split("/")
        entity, project = ["", "", *owner][-2:]
        return entity, project

    def _registry_collection(self, registered_name: str) -> str:
        if not registered_name or any(c in registered_name for c in "/:"):
            raise ValueError(
                f"Invalid registered model name {registered_name!r}: a W&B Registry collection name "
                "has no '/' or ':' (e.g. 'digits-classifier')."
            )
        return f"{REGISTRY_PREFIX}{self.registry}/{registered_name}"
