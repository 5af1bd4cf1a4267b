"""The registry side of the W&B tracker: list, promote, resolve and fetch checkpoints; job keys.

`WandbRegistry` answers the registry helper (`promote_best`,
`list_checkpoints`, `load_model`, ...; `tracker="wandb"`): a checkpoint's id is
its version's full name `entity/project/collection:vN`; promoting links that
version into the Registry collection `wandb-registry-model/<registered name>`
(once; promoting it again only moves the alias) with the alias, e.g.
`champion`. An offline run's checkpoints are listed, ranked and loaded from its
folder (`wandb_offline`); promoting one needs the server, so it must be `wandb
sync`ed first.

Composed of one concern per module: `wandb_listing.WandbListing` (the `wandb.Api`,
scopes, and the checkpoints listed and ranked in them), `wandb_jobs.WandbJobKeys`
(resume by job key: `TrackerJobKeys`), and here promotion, resolving, fetching and
what the verbs ask. Every remote read fails in one line and never
passes an error off as "does not exist" (`wandb_reads`).

Remote reads and edits go through the public `wandb.Api` only, the one given
as `api=` (another client with its surface, e.g. a test double) or one made
from the environment (`WandbRegistry.api`, which `delete_checkpoint` uses too).

A mixin of `WandbTracker` (`tracked_ckpt.integrations.wandb`), which holds the
configuration, the lock and the live runs (the names `WandbListing` declares).
Imported through that module, which checks the installed W&B first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import sys
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.integrations import wandb_offline
from tracked_ckpt.integrations.wandb_chunks import fetch_incremental
from tracked_ckpt.integrations.wandb_jobs import JOB_SUMMARY_KEYS, WandbJobKeys
from tracked_ckpt.integrations.wandb_listing import REGISTRY_PREFIX
from tracked_ckpt.integrations.wandb_reads import (
    READ_ERRORS,
    artifact_or_none,
    cause_of,
    links_of,
    no_answer,
    reading,
    run_or_none,
)
from tracked_ckpt.integrations.wandb_schema import ARTIFACT_TYPE, ROUTINE_ALIAS_RE, version_number, version_ref
from tracked_ckpt.record import STORAGE_INCREMENTAL
from tracked_ckpt.tracker import LoggedCheckpoint, Registration

logger = logging.getLogger("tracked_ckpt")

# The aliases W&B keeps on a Registry link for itself (every other one was given by a promotion).
_LINK_BOOKKEEPING_RE = re.compile(r"latest|v\d+")

__all__ = ["JOB_SUMMARY_KEYS", "REGISTRY_PREFIX", "WandbRegistry"]


class WandbRegistry(WandbJobKeys):
    """The registry and job-key side of `WandbTracker`: checkpoints read back through `wandb.Api`."""

    # -- promoting, resolving, fetching (TrackerRegistry, for tracked_ckpt.registry) ----------

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

    @staticmethod
    def _owner_of(checkpoint: LoggedCheckpoint) -> tuple[str, str]:
        """The entity and project of a checkpoint's version, from its id `entity/project/collection:vN`."""
        *owner, _collection = checkpoint.id.split("/")
        entity, project = ["", "", *owner][-2:]
        return entity, project
