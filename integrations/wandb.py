"""W&B tracker: each checkpoint is one version of a run's "model" artifact.

Every checkpoint of a run goes into one artifact collection,
`{name}-{run id}` (e.g. `digits-1a2b3c4d`), as a new version holding the file
under its Keras file name. The version's metadata is the record schema as-is
(`CheckpointRecord.metadata()`, typed values) plus the run id, the batch of a
batch-level save and the save's metrics (`wandb_schema.artifact_metadata`), and its aliases are
`epoch-{N}` (1-based), `step-{S}` for batch-level saves, and `best` while it
is the best checkpoint so far; W&B adds `latest` and moves an alias to the
newest version that claims it, so `best` always names the best checkpoint.
The save's logs also go to the run history under `checkpoint/` keys, plotted
against `checkpoint/epoch`.

Logging runs on the publisher's background thread. `wandb.Run.log_artifact`
is safe there (the run only hands records to the wandb-core service), and the
run object is kept from `start`, so nothing depends on `wandb.run` or other
thread-bound state. Files are added with `policy="immutable"`, so W&B makes no
staging copy: online, `log_checkpoint` waits until the version is committed
before the spool may drop the file; offline, the file is first linked (or
copied) into the offline run's own directory, so `wandb sync <run dir>`
uploads it later. With `WANDB_MODE=disabled` nothing is copied or logged.
An incremental record (`storage="incremental"`) becomes a version holding a manifest and the
content-addressed packs it references, which W&B stores once per collection (`wandb_chunks`).

How a record is named, aliased and described on W&B is in `wandb_schema`.
The registry side (list, promote, load, job keys, all through `wandb.Api`) is
`wandb_registry.WandbRegistry`, a base class of the tracker.
`delete_checkpoint` (for retention) deletes a version unless an alias a person
gave it or a Registry link protects it.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import threading
from collections.abc import Mapping
from typing import Any, Literal

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.versions import check_supported

check_supported("wandb", extra="wandb")  # before importing it

import wandb

from tracked_ckpt.files import link_or_copy
from tracked_ckpt.integrations.wandb_chunks import IncrementalWriter
from tracked_ckpt.integrations.wandb_reads import artifact_or_none, links_of
from tracked_ckpt.integrations.wandb_registry import JOB_SUMMARY_KEYS, REGISTRY_PREFIX, WandbRegistry
from tracked_ckpt.integrations.wandb_schema import (
    ARTIFACT_TYPE,
    HISTORY_PREFIX,
    HISTORY_STEP_KEY,
    ROUTINE_ALIAS_RE,
    artifact_metadata,
    checkpoint_aliases,
    collection_name,
    history_row,
    identifying_alias,
)
from tracked_ckpt.record import STORAGE_INCREMENTAL, CheckpointRecord
from tracked_ckpt.tracker import Tracker

__all__ = ["JOB_SUMMARY_KEYS", "OFFLINE_FILES_DIR", "REGISTRY_PREFIX", "WandbTracker"]

logger = logging.getLogger("tracked_ckpt")

#: Where an offline run keeps the checkpoint files its artifact records point at.
OFFLINE_FILES_DIR = "tracked_ckpt"


# Ids of the runs trackers of this process started (and have not finished yet): never the user's run.
_STARTED: set[str] = set()
_STARTED_LOCK = threading.Lock()


class WandbTracker(Tracker, WandbRegistry):
    """Log checkpoints to Weights & Biases as versions of a "model" artifact.

    Attaches to `wandb.run` when a run is active; otherwise starts one from the
    arguments and W&B's usual environment (`WANDB_PROJECT`, `WANDB_ENTITY`,
    `WANDB_MODE`, `WANDB_DIR`, ...) and finishes it in `finish`. A run it did not
    start is never finished.

    Args:
        project: project of the run this tracker starts (default: W&B's,
            i.e. `WANDB_PROJECT`, else "uncategorized").
        entity: entity (user or team) of that run (default: `WANDB_ENTITY` or
            the API key's default entity).
        run_id: log into this run: the active run if it has this id, else the
            run is resumed (`resume="allow"`) and finished at `finish`.
        run_name: display name of the run this tracker starts.
        mode: "online", "offline" or "disabled" for the run this tracker
            starts (default: `WANDB_MODE`, else online).
        dir: where W&B writes the run's local files (default: `WANDB_DIR`, else the CWD).
        settings: extra `wandb.Settings` (or a dict of them) for the run this tracker starts.
        upload_timeout: online, seconds to wait for one version to be committed
            before the attempt counts as failed and is retried (None: no limit).
        cache: also copy each uploaded file into W&B's local artifact cache
            (`WANDB_CACHE_DIR`); off by default, since the checkpoint is on disk already.
        log_metrics: also write each save's logs to the run history under `checkpoint/`.
        registry: the W&B Registry that `promote_best` links into
            (`wandb-registry-{registry}`, default "model").
        api: the `wandb.Api` used by the registry helper, `delete_checkpoint` and
            resume by job key (or another client with its surface, e.g. a test double); default:
            `wandb.Api()` from the environment, created on first use.

    Example:

    ```python
    from tracked_ckpt import TrackedModelCheckpoint
    from tracked_ckpt.integrations.wandb import WandbTracker

    tracker = WandbTracker(project="digits", mode="offline")
    checkpoint = TrackedModelCheckpoint("ckpt/{epoch:02d}.keras", tracker=tracker)
    # model.fit(..., callbacks=[checkpoint]) logs digits-<run id>:v0, v1, ... with
    # aliases epoch-1, epoch-2, ..., best and latest; then `wandb sync wandb/offline-run-*`.

    # Online (or once synced): link the best version into the Registry as "champion", load it.
    import tracked_ckpt

    tracked_ckpt.promote_best("digits-classifier", tracker="wandb", run_id="digits/<run id>")
    model = tracked_ckpt.load_model("digits-classifier", alias="champion", tracker="wandb")
    ```
    """

    name = "wandb"
    stores_incremental = True  # a manifest and content-addressed packs per version (`wandb_chunks`)
    display_name = "W&B"

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        mode: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        settings: wandb.Settings | Mapping[str, Any] | None = None,
        upload_timeout: float | None = 600.0,
        cache: bool = False,
        log_metrics: bool = True,
        registry: str = "model",
        api: Any = None,
    ):
        if mode not in (None, "online", "offline", "disabled", "shared"):
            raise ValueError(f"Invalid mode {mode!r}: use 'online', 'offline' or 'disabled'.")
        self.project = project
        self.entity = entity
        self.run_id = run_id
        self.run_name = run_name
        self.mode = mode
        self.dir = None if dir is None else os.fspath(dir)
        self.settings = settings
        self.upload_timeout = upload_timeout
        self.cache = cache
        self.log_metrics = log_metrics
        self.registry = registry
        self._given_api = api
        self._reset_runtime()

    #: What a tracker holds while it serves one fit; never copied (see `__deepcopy__`).
    _RUNTIME = ("_api", "_runs", "_owned", "_logged", "_history", "_lock", "_chunks")

    def _reset_runtime(self) -> None:
        self._api = self._given_api
        self._runs: dict[str, Any] = {}  # run id -> live run object
        self._owned: list[Any] = []  # runs this tracker started or resumed, finished by `finish`
        self._logged: dict[tuple[str, str], str] = {}  # (run id, record key) -> version ref
        self._history: set[tuple[str, str]] = set()  # (run id, record key) whose logs are in history
        self._lock = threading.RLock()
        self._chunks = IncrementalWriter()

    # A copy is the configuration (a subclass's attributes too): no run, no lock. KerasTuner deep-copies
    # callbacks per trial, Ray pickles them; the values are shared, never mutated, and so is the `api`
    # passed in (a client of one server), except by pickle: an unpickled tracker makes its own.
    def __getstate__(self) -> dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items() if key not in self._RUNTIME}
        state["_given_api"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def __deepcopy__(self, memo: dict[int, Any]) -> WandbTracker:
        clone = copy.copy(self)
        clone._given_api = clone._api = self._given_api
        return clone

    # -- run lifecycle (training thread) ------------------------------------------------

    @override
    def start(self, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach to the active run (or `run_id`, or the resumed one), or start a run; return the destination.

        Args:
            resume: a destination an earlier `start` returned: log into that run again
                (the active run if it is that one, else it is resumed with `resume="allow"`).

        The destination holds the run's id, project, entity and mode, and its URL when online.
        """
        resume = resume or {}
        run_id = self.run_id or resume.get("run_id")
        active = wandb.run
        if active is not None and active.id in _STARTED and active.id != run_id:
            # Started by an earlier fit whose end has not finished yet (blocking=False, a fit that raised):
            # not the user's run, so this fit gets one of its own.
            active = None
        if active is not None and (run_id is None or active.id == run_id):
            run = active
        else:
            if active is not None:
                logger.warning("Logging to W&B run %s (resumed), not to the active run %s.", run_id, active.id)
            run = self._init_run(
                run_id=run_id,
                name=self.run_name,
                project=resume.get("project") or None,
                entity=resume.get("entity") or None,
                # Never end the user's (or an earlier fit's) active run to start or resume another one.
                reinit="create_new" if wandb.run is not None else None,
            )
        if not run.disabled:
            # Checkpoint logs get their own x-axis, so they never shift the user's `_step` charts.
            run.define_metric(HISTORY_PREFIX + "*", step_metric=HISTORY_STEP_KEY)
        with self._lock:
            self._runs[run.id] = run
        return _destination(run)

    @override
    def finish(self, success: bool = True) -> None:
        """Finish the runs this tracker started or resumed (waits for their uploads)."""
        self._finish_owned(exit_code=0 if success else 1)

    @override
    def finish_preempted(self, exit_code: int) -> None:
        """Mark the runs preempting (`Run.mark_preempting`), then finish the ones this tracker started.

        W&B uses the mark to tell a preemption from a crash; the exit code is the one the
        process is about to end with (143 for SIGTERM).
        """
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            run.mark_preempting()
        self._finish_owned(exit_code=exit_code)

    def _finish_owned(self, exit_code: int) -> None:
        with self._lock:
            owned, self._owned = self._owned, []
            for run in owned:
                self._runs.pop(run.id, None)
        for run in owned:
            run.finish(exit_code=exit_code)
            with _STARTED_LOCK:
                _STARTED.discard(run.id)
        self._chunks.finish()

    @override
    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """The run's page in the W&B app (online runs only)."""
        return destination.get("url") or None

    # -- logging (publisher thread) -----------------------------------------------------

    @override
    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any], *, first_attempt: bool = False
    ) -> str:
        """Log the file at `path` as a new version of the run's collection; return its reference.

        Online the reference is `entity/project/collection:vN`, read back once
        the version is committed; offline it is `project/collection:<alias>`
        (`step-S` for batch saves, else `epoch-N`), which resolves after
        `wandb sync`; disabled it is "disabled". Logging the same record (run,
        epoch, step, sha256) again in this process returns the first reference
        and logs nothing; across processes W&B itself keeps identical content as
        one version of the collection.
        """
        if destination.get("mode") == "disabled":
            return "disabled"
        run_id = destination["run_id"]
        key = (run_id, record.key)
        with self._lock:
            ref = self._logged.get(key)
            run = None if ref is not None else self._run_for(destination)
        if ref is None:
            ref = self._log_artifact(run, record, path, destination)
            with self._lock:
                self._logged[key] = ref
        if self.log_metrics and record.metrics and key not in self._history:
            run = run or self._run_for(destination)
            run.log(history_row(record))
            with self._lock:
                self._history.add(key)
        return ref

    def _log_artifact(self, run: Any, record: CheckpointRecord, path: str, destination: Mapping[str, Any]) -> str:
        collection = collection_name(record, run.id)
        artifact = wandb.Artifact(collection, type=ARTIFACT_TYPE, metadata=artifact_metadata(record, run.id))
        incremental = None
        if record.storage == STORAGE_INCREMENTAL:
            # A manifest and the packs it references, kept in the run's directory (`wandb_chunks`).
            incremental = self._chunks.build(run, collection, artifact, path, record)
        else:
            if run.offline:
                # The artifact record points at this file until `wandb sync`; keep it with the run.
                path = _keep_for_sync(path, run.settings.sync_dir, record)
            artifact.add_file(
                path,
                name=os.path.basename(record.filepath),
                policy="immutable",  # no staging copy: the spool (or the run dir) holds the file
                skip_cache=not self.cache,
            )
        aliases = checkpoint_aliases(record)
        logged = run.log_artifact(artifact, aliases=aliases)
        if run.offline:
            # Nothing to wait for: the record is in the run's transaction log and `wandb sync`
            # uploads it. Name the version by its own alias, which resolves once synced.
            where = "/".join(p for p in (destination.get("project") or run.project, collection) if p)
            return f"{where}:{identifying_alias(record)}"
        # Online: return only once W&B committed the version, so the spool may drop the file.
        logged.wait(timeout=self.upload_timeout)
        if incremental is not None:
            folder, stored = incremental
            self._chunks.committed(run, folder, stored.manifest)
        return str(logged.qualified_name)

    # -- retention ----------------------------------------------------------------------

    @override
    def delete_checkpoint(self, ref: str, destination: Mapping[str, Any]) -> bool:
        """Delete a logged checkpoint's version unless it is protected; return whether it is gone.

        Protected (kept, returns False): a version holding an alias other than
        `latest`, `best`, `epoch-N` and `step-S` (e.g. one a person gave it), a
        version linked into a Registry, and a Registry link itself. Offline and
        disabled runs return False (logged at debug level): the version is not on
        a server to delete. A version that no longer exists counts as gone (True).

        Args:
            ref: what `log_checkpoint` returned, e.g. "team/digits/digits-1a2b3c4d:v3".
            destination: the run's destination, as `start` returned it.

        Raises:
            TrackerError: W&B did not answer (an error is never taken for "already deleted").
        """
        mode = destination.get("mode")
        if mode != "online" or not ref or ref == "disabled":
            logger.debug("Not deleting W&B checkpoint %s: its run is %s, so no server holds it.", ref, mode)
            return False
        artifact = artifact_or_none(self.api, ref)  # an error is not "already deleted"
        if artifact is None:
            logger.debug("W&B checkpoint %s is already deleted.", ref)
            return True
        if artifact.is_link:
            logger.debug("Keeping %s: it is a Registry link.", ref)
            return False
        kept = [a for a in artifact.aliases if not ROUTINE_ALIAS_RE.fullmatch(a)]
        if kept:
            logger.debug("Keeping W&B checkpoint %s: it holds the alias(es) %s.", ref, kept)
            return False
        links = links_of(artifact)
        if links:
            logger.debug(
                "Keeping W&B checkpoint %s: it is linked into %s.", ref, [f"{a.project}/{a.name}" for a in links]
            )
            return False
        artifact.delete(delete_aliases=True)
        logger.debug("Deleted W&B checkpoint %s.", ref)
        return True

    # -- helpers --------------------------------------------------------------------------

    @override
    def _run_for(self, destination: Mapping[str, Any]) -> Any:
        """The live run for a destination: the one from `start`, the active one, or resumed."""
        run_id = destination["run_id"]
        run = self._runs.get(run_id)
        if run is not None and not getattr(run, "_is_finished", False):
            return run
        active = wandb.run
        if active is not None and active.id == run_id:
            self._runs[run_id] = active
            return active
        # Another process (e.g. `tracked-ckpt sync`) or a run that already finished: resume it.
        logger.info("Resuming W&B run %s to log checkpoints left in the spool.", run_id)
        run = self._init_run(
            run_id=run_id,
            project=destination.get("project") or None,
            entity=destination.get("entity") or None,
            mode=destination.get("mode") or None,
            reinit="create_new",
            console="off",
        )
        if not run.disabled:
            run.define_metric(HISTORY_PREFIX + "*", step_metric=HISTORY_STEP_KEY)
        return run

    def _init_run(
        self,
        run_id: str | None,
        name: str | None = None,
        project: str | None = None,
        entity: str | None = None,
        mode: str | None = None,
        reinit: Literal["create_new"] | None = None,
        console: Literal["off"] | None = None,
    ) -> Any:
        if isinstance(self.settings, wandb.Settings):
            settings = self.settings.model_copy()
        else:
            settings = wandb.Settings(**dict(self.settings or {}))
        if console is not None:
            settings.console = console
        run = wandb.init(
            project=project or self.project,
            entity=entity or self.entity,
            id=run_id,
            name=name,
            mode=mode or self.mode,  # type: ignore[arg-type]  # the user's string (`mode=`); W&B checks it
            dir=self.dir,
            settings=settings,
            resume="allow" if run_id else None,
            reinit=reinit,
        )
        with self._lock:
            self._owned.append(run)
            self._runs[run.id] = run
        with _STARTED_LOCK:
            _STARTED.add(run.id)
        return run


# -- helpers ------------------------------------------------------------------------------


def _destination(run: Any) -> dict[str, Any]:
    if run.disabled:
        mode = "disabled"
    elif run.offline:
        mode = "offline"
    else:
        mode = "online"
    destination: dict[str, Any] = {
        "run_id": run.id,
        "project": run.project or "",
        "entity": run.entity or "",
        "mode": mode,
    }
    if mode == "online":
        destination["url"] = run.url
    elif mode == "offline":
        # The folder of the run's folders (one per start): where the registry reads it back (`wandb_offline`).
        destination["runs_folder"] = os.path.dirname(run.settings.sync_dir)
    return destination


def _keep_for_sync(path: str, sync_dir: str, record: CheckpointRecord) -> str:
    """Link (or copy) a checkpoint into the offline run's directory; return the kept path."""
    folder = os.path.join(sync_dir, OFFLINE_FILES_DIR, record.key)
    os.makedirs(folder, exist_ok=True)
    kept = os.path.join(folder, os.path.basename(record.filepath))
    tmp = kept + ".tmp"
    link_or_copy(path, tmp)
    os.replace(tmp, kept)
    return kept
