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
scopes, and the checkpoints listed and ranked in them), `wandb_versions.WandbVersions`
(what the verbs ask: checkpoints by id, registered versions, registrations),
`wandb_jobs.WandbJobKeys` (resume by job key: `TrackerJobKeys`), and here
promotion, resolving and fetching. Every remote read fails in one line and
never passes an error off as "does not exist" (`wandb_reads`).

Remote reads and edits go through the public `wandb.Api` only, the one given
as `api=` (another client with its surface, e.g. a test double) or one made
from the environment (`WandbRegistry.api`, which `delete_checkpoint` uses too).

A mixin of `WandbTracker` (`tracked_ckpt.integrations.wandb`), which holds the
configuration, the lock and the live runs (the names `WandbListing` declares).
Imported through that module, which checks the installed W&B first.
"""

from __future__ import annotations

import os
import sys

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.integrations import wandb_offline
from tracked_ckpt.integrations.wandb_chunks import fetch_incremental
from tracked_ckpt.integrations.wandb_jobs import JOB_SUMMARY_KEYS, WandbJobKeys
from tracked_ckpt.integrations.wandb_listing import REGISTRY_PREFIX
from tracked_ckpt.integrations.wandb_reads import artifact_or_none, reading
from tracked_ckpt.integrations.wandb_schema import ARTIFACT_TYPE, version_number, version_ref
from tracked_ckpt.integrations.wandb_versions import WandbVersions
from tracked_ckpt.record import STORAGE_INCREMENTAL
from tracked_ckpt.tracker import LoggedCheckpoint

__all__ = ["JOB_SUMMARY_KEYS", "REGISTRY_PREFIX", "WandbRegistry"]


class WandbRegistry(WandbVersions, WandbJobKeys):
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
        the file verified against its sha256 (`pack_reader.restore_file`).
        """
        if checkpoint.extra.get("offline_run_dir"):
            return wandb_offline.copy_file(checkpoint, directory)
        ref = checkpoint.extra.get("registry_path") or checkpoint.id
        with reading(f"artifact {ref}"):
            artifact = self.api.artifact(ref, type=ARTIFACT_TYPE)
            if checkpoint.record.storage == STORAGE_INCREMENTAL:
                return fetch_incremental(artifact, f"W&B checkpoint {checkpoint.id}", directory)
        return str(os.fspath(artifact.file(directory)))
