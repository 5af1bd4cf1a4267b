"""Resume by job key on W&B: a job's run derives from its key, and the key and lease live in its summary.

`WandbJobKeys` answers `tracked_ckpt.resume` (`TrackerJobKeys`): `find_job`
names the job's run (its id derived from the key, `wandb_schema.job_run_id`,
so a restarted job finds, or the first time creates, its run with
`wandb.init(id=..., resume="allow")`); `job_info` and `set_job_info` read and
write the key and its lease in the run's summary; `job_checkpoints` lists the
run's versions (`wandb_listing`). Reading them back needs the W&B server: an
offline or disabled run, or one not created yet, has none. Imported through
`tracked_ckpt.integrations.wandb`, which checks the installed W&B first.
"""

from __future__ import annotations

import abc
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.integrations.wandb_listing import WandbListing
from tracked_ckpt.integrations.wandb_reads import run_or_none
from tracked_ckpt.integrations.wandb_schema import job_run_id
from tracked_ckpt.tracker import LoggedCheckpoint, TrackerJobKeys

logger = logging.getLogger("tracked_ckpt")

JOB_SUMMARY_KEYS = {"key": "tracked_ckpt_job_key", "lease": "tracked_ckpt_job_lease"}  # tracked_ckpt.resume


class WandbJobKeys(WandbListing, TrackerJobKeys):
    """The job-key side of `WandbTracker`: a job's run, and its key and lease in the run's summary."""

    @abc.abstractmethod
    def _run_for(self, destination: Mapping[str, Any]) -> Any:
        """The live run for a destination (the one from `start`, the active one, or resumed)."""

    # -- job keys (TrackerJobKeys, for resume="<job key>") ----------------------------------

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
