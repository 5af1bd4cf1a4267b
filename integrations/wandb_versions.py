"""What the verbs ask of W&B: checkpoints by id, registered versions, what holds a version, its run.

`WandbVersions` answers `tracked_ckpt.verbs` (`checkpoint_by_id`,
`registered_versions`, `registrations` and `unregister`, which undoes them,
`run_config`, `destination_of`) through the `wandb.Api` of its base,
`wandb_listing.WandbListing`.
A checkpoint's id is its version's full name `entity/project/collection:vN`; what
protects a version from `delete_checkpoint` is a Registry link or an alias a
person gave it (not the routine `best`, `epoch-N`, ...). Imported through
`tracked_ckpt.integrations.wandb`, which checks the installed W&B first.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.integrations.wandb_listing import WandbListing
from tracked_ckpt.integrations.wandb_reads import (
    READ_ERRORS,
    artifact_or_none,
    cause_of,
    links_of,
    no_answer,
    reading,
    run_or_none,
)
from tracked_ckpt.integrations.wandb_schema import ARTIFACT_TYPE, ROUTINE_ALIAS_RE, version_number
from tracked_ckpt.tracker import LoggedCheckpoint, Registration

logger = logging.getLogger("tracked_ckpt")

# The aliases W&B keeps on a Registry link for itself (every other one was given by a promotion).
_LINK_BOOKKEEPING_RE = re.compile(r"latest|v\d+")


class WandbVersions(WandbListing):
    """The verbs' side of `WandbTracker`: checkpoints by id, registered versions, and what holds them."""

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
                f"(promote_best({registered_name!r}, tracker='wandb') registers one)."
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
