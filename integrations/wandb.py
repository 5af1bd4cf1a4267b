"""W&B tracker: each checkpoint is one version of a run's "model" artifact.

Every checkpoint of a run goes into one artifact collection,
`{name}-{run id}` (e.g. `digits-1a2b3c4d`), as a new version holding the file
under its Keras file name. The version's metadata is the record schema as-is
(`CheckpointRecord.metadata()`, typed values), and its aliases are
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

Remote operations on logged versions (move an alias, link into the Registry,
find, download with a sha256 check, delete) are the module-level functions
below; they go through the public `wandb.Api` only and take an `api` argument
so another client (or a test double) can be passed in.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from typing import Any, Iterable, Mapping, Sequence

import wandb

from tracked_ckpt.record import CheckpointRecord
from tracked_ckpt.registry import ChecksumError
from tracked_ckpt.spool import sha256_file
from tracked_ckpt.tracker import TrackerError

logger = logging.getLogger("tracked_ckpt")

ARTIFACT_TYPE = "model"
#: Prefix of the run-history keys a checkpoint's logs are written under.
HISTORY_PREFIX = "checkpoint/"
#: The history key used as x-axis for `HISTORY_PREFIX` keys.
HISTORY_STEP_KEY = HISTORY_PREFIX + "epoch"
#: Aliases W&B sets itself or this module moves; `find_versions` and friends accept any alias.
BEST_ALIAS = "best"
LATEST_ALIAS = "latest"
#: Where an offline run keeps the checkpoint files its artifact records point at.
OFFLINE_FILES_DIR = "tracked_ckpt"

_NAME_MAXLEN = 128  # W&B's limit on artifact names
_SUFFIX_RE = re.compile(r"-e\d{4,}(?:-b\d{6,})?$")
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")


class WandbTracker:
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

    Example:

    ```python
    from tracked_ckpt import TrackedModelCheckpoint
    from tracked_ckpt.integrations.wandb import WandbTracker

    tracker = WandbTracker(project="digits", mode="offline")
    checkpoint = TrackedModelCheckpoint("ckpt/{epoch:02d}.keras", tracker=tracker)
    # model.fit(..., callbacks=[checkpoint]) logs digits-<run id>:v0, v1, ... with
    # aliases epoch-1, epoch-2, ..., best and latest; then `wandb sync wandb/offline-run-*`.
    ```
    """

    name = "wandb"
    display_name = "W&B"

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        mode: str | None = None,
        dir: str | os.PathLike[str] | None = None,
        settings: "wandb.Settings | Mapping[str, Any] | None" = None,
        upload_timeout: float | None = 600.0,
        cache: bool = False,
        log_metrics: bool = True,
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
        self._runs: dict[str, Any] = {}  # run id -> live run object
        self._owned: list[Any] = []  # runs this tracker started or resumed, finished by `finish`
        self._logged: dict[tuple[str, str], str] = {}  # (run id, record key) -> version ref
        self._history: set[tuple[str, str]] = set()  # (run id, record key) whose logs are in history
        self._lock = threading.RLock()

    # -- run lifecycle (training thread) ------------------------------------------------

    def start(self, run_name: str | None = None, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach to the active run (or `run_id`, or the resumed one), or start a run; return the destination.

        Args:
            run_name: display name if this starts a run (default: `run_name` given at construction).
            resume: a destination an earlier `start` returned: log into that run again
                (the active run if it is that one, else it is resumed with `resume="allow"`).

        The destination holds the run's id, project, entity and mode, and its URL when online.
        """
        resume = resume or {}
        run_id = self.run_id or resume.get("run_id")
        active = wandb.run
        if active is not None and (run_id is None or active.id == run_id):
            run = active
        else:
            if active is not None:
                logger.warning("Logging to W&B run %s (resumed), not to the active run %s.", run_id, active.id)
            run = self._init_run(
                run_id=run_id,
                name=run_name or self.run_name,
                project=resume.get("project") or None,
                entity=resume.get("entity") or None,
                # Never end the user's active run to resume another one.
                reinit="create_new" if active is not None else None,
            )
        if not run.disabled:
            # Checkpoint logs get their own x-axis, so they never shift the user's `_step` charts.
            run.define_metric(HISTORY_PREFIX + "*", step_metric=HISTORY_STEP_KEY)
        with self._lock:
            self._runs[run.id] = run
        return _destination(run)

    def finish(self, success: bool = True) -> None:
        """Finish the runs this tracker started or resumed (waits for their uploads)."""
        with self._lock:
            owned, self._owned = self._owned, []
            for run in owned:
                self._runs.pop(run.id, None)
        for run in owned:
            run.finish(exit_code=0 if success else 1)

    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """The run's page in the W&B app (online runs only)."""
        return destination.get("url") or None

    # -- logging (publisher thread) -----------------------------------------------------

    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any]
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

    def _log_artifact(
        self, run: Any, record: CheckpointRecord, path: str, destination: Mapping[str, Any]
    ) -> str:
        collection = collection_name(record, run.id)
        if run.offline:
            # The artifact record points at this file until `wandb sync`; keep it with the run.
            path = _keep_for_sync(path, run.settings.sync_dir, record)
        artifact = wandb.Artifact(collection, type=ARTIFACT_TYPE, metadata=record.metadata())
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
        return logged.qualified_name

    # -- helpers --------------------------------------------------------------------------

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
        reinit: str | None = None,
        console: str | None = None,
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
            mode=mode or self.mode,
            dir=self.dir,
            settings=settings,
            resume="allow" if run_id else None,
            reinit=reinit,
        )
        with self._lock:
            self._owned.append(run)
            self._runs[run.id] = run
        return run


# -- names, aliases, history ------------------------------------------------------------


def base_name(record: CheckpointRecord) -> str:
    """The checkpoint's base name: `record.name` without its `-eNNNN[-bNNNNNN]` suffix."""
    return _SUFFIX_RE.sub("", record.name) or record.name


def collection_name(record: CheckpointRecord, run_id: str) -> str:
    """The run's artifact collection for a record: `{base name}-{run id}`, within W&B's 128 characters.

    Example:

    ```python
    collection_name(record, "1a2b3c4d")  # record.name "digits-e0003" -> "digits-1a2b3c4d"
    ```
    """
    suffix = "-" + _UNSAFE_RE.sub("-", run_id)
    return base_name(record)[: _NAME_MAXLEN - len(suffix)] + suffix


def checkpoint_aliases(record: CheckpointRecord) -> list[str]:
    """Aliases of a checkpoint's version: `epoch-N`, `step-S` (batch saves) and `best` (last).

    W&B adds `latest` itself. Example: a batch save at epoch 2, step 40, best so
    far -> `["epoch-2", "step-40", "best"]`.
    """
    aliases = [f"epoch-{record.epoch}"]
    if record.batch is not None:
        aliases.append(f"step-{record.step}")
    if record.is_best:
        aliases.append(BEST_ALIAS)
    return aliases


def identifying_alias(record: CheckpointRecord) -> str:
    """The alias that names this checkpoint alone: `step-S` for batch saves, else `epoch-N`."""
    return f"step-{record.step}" if record.batch is not None else f"epoch-{record.epoch}"


def history_row(record: CheckpointRecord) -> dict[str, Any]:
    """The run-history row for a save: its logs under `checkpoint/`, with epoch and global step."""
    row: dict[str, Any] = {HISTORY_PREFIX + key: value for key, value in record.metrics.items()}
    row[HISTORY_STEP_KEY] = record.epoch
    row[HISTORY_PREFIX + "step"] = record.step
    return row


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
    return destination


def _keep_for_sync(path: str, sync_dir: str, record: CheckpointRecord) -> str:
    """Link (or copy) a checkpoint into the offline run's directory; return the kept path."""
    folder = os.path.join(sync_dir, OFFLINE_FILES_DIR, record.key)
    os.makedirs(folder, exist_ok=True)
    kept = os.path.join(folder, os.path.basename(record.filepath))
    tmp = kept + ".tmp"
    try:
        os.link(path, tmp)
    except OSError:  # another filesystem: copy
        shutil.copyfile(path, tmp)
    os.replace(tmp, kept)
    return kept


# -- remote operations (wandb.Api) ------------------------------------------------------


def collection_path(destination: Mapping[str, Any], record: CheckpointRecord) -> str:
    """`entity/project/collection` of the collection a record is logged to, for the functions below.

    Example:

    ```python
    from tracked_ckpt.tracker import last_destination

    path = collection_path(last_destination("wandb"), record)  # where the last fit logged
    (best,) = find_versions(path, alias="best")
    ```
    """
    parts = [destination.get("entity"), destination.get("project"), collection_name(record, destination["run_id"])]
    return "/".join(p for p in parts if p)


def move_alias(version: str, alias: str, *, api: Any = None) -> Any:
    """Give `alias` to a version; W&B takes it off the version of the collection that held it.

    Args:
        version: the version's path, e.g. "team/digits/digits-1a2b3c4d:v3" (or an alias
            such as ":epoch-3").
        alias: the alias to move, e.g. "best" or "production" (no "/" or ":").
        api: a `wandb.Api` (default: a new one from the environment).

    Returns:
        The version, with its aliases as saved.

    Example:

    ```python
    move_alias("team/digits/digits-1a2b3c4d:epoch-3", "best")
    ```
    """
    artifact = _api(api).artifact(version, type=ARTIFACT_TYPE)
    if alias not in artifact.aliases:
        artifact.aliases = [*artifact.aliases, alias]
        artifact.save()
    return artifact


def link_to_registry(
    version: str,
    collection: str,
    aliases: Sequence[str] = (),
    *,
    registry: str = "model",
    api: Any = None,
) -> Any:
    """Link a version into a Registry collection (`wandb-registry-{registry}/{collection}`).

    Linking copies no data; the aliases are the Registry collection's own
    (each is unique within it and moves to this version), and W&B adds `latest`.

    Args:
        version: the source version's path, e.g. "team/digits/digits-1a2b3c4d:best".
        collection: the Registry collection, e.g. "digits-classifier".
        aliases: aliases to give the linked version, e.g. ["production"].
        registry: the registry's name without the `wandb-registry-` prefix.
        api: a `wandb.Api` (default: a new one from the environment).

    Returns:
        The linked version, as `Artifact.link` returns it.

    Example:

    ```python
    link_to_registry("team/digits/digits-1a2b3c4d:best", "digits-classifier", ["staging"])
    ```
    """
    artifact = _api(api).artifact(version, type=ARTIFACT_TYPE)
    return artifact.link(f"wandb-registry-{registry}/{collection}", aliases=list(aliases))


def find_versions(
    collection: str,
    *,
    alias: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    api: Any = None,
) -> list[Any]:
    """Versions of a collection holding `alias` and matching every `metadata` item, oldest first.

    Metadata values match when equal, or equal as strings (so `{"epoch": "3"}`
    finds `epoch == 3`, and `{"is_best": "true"}` finds `True`).

    Args:
        collection: "entity/project/collection" (see `collection_path`) or a
            Registry collection such as "wandb-registry-model/digits-classifier".
        alias: only the version holding this alias (at most one, since aliases are unique).
        metadata: schema keys and values every returned version must have.
        api: a `wandb.Api` (default: a new one from the environment).

    Example:

    ```python
    find_versions("team/digits/digits-1a2b3c4d", metadata={"epoch": 3})
    find_versions("team/digits/digits-1a2b3c4d", alias="best")
    ```
    """
    client = _api(api)
    if alias is not None:
        path = f"{collection}:{alias}"
        candidates: Iterable[Any] = (
            [client.artifact(path, type=ARTIFACT_TYPE)] if client.artifact_exists(path, type=ARTIFACT_TYPE) else []
        )
    else:
        candidates = client.artifacts(ARTIFACT_TYPE, collection)
    wanted = dict(metadata or {})
    found = [a for a in candidates if all(_same(a.metadata.get(k), v) for k, v in wanted.items())]
    return sorted(found, key=_version_number)


def download_checkpoint(version: str, root: str | os.PathLike[str] | None = None, *, api: Any = None) -> str:
    """Download a version's checkpoint file and check it against the sha256 in its metadata.

    Args:
        version: the version's path, e.g. "team/digits/digits-1a2b3c4d:best" or
            "wandb-registry-model/digits-classifier:production".
        root: directory to download into (default: W&B's, `./artifacts/<name>`).
        api: a `wandb.Api` (default: a new one from the environment).

    Returns:
        The local path of the checkpoint file, ready for `keras.saving.load_model`
        (or `model.load_weights` for `.weights.h5`).

    Raises:
        TrackerError: the version is not a tracked-ckpt checkpoint (no sha256 in its metadata).
        ChecksumError: the downloaded bytes do not match its sha256.

    Example:

    ```python
    path = download_checkpoint("team/digits/digits-1a2b3c4d:best", root="restore")
    model = keras.saving.load_model(path)
    ```
    """
    artifact = _api(api).artifact(version, type=ARTIFACT_TYPE)
    expected = artifact.metadata.get("sha256")
    if not expected:
        raise TrackerError(
            f"{version} has no sha256 in its metadata, so it was not logged by tracked-ckpt; "
            "download it with wandb.Api().artifact(...).download() instead."
        )
    path = os.fspath(artifact.file(None if root is None else os.fspath(root)))
    actual, _ = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"Checksum mismatch for {version}: {path} has sha256 {actual}, the version's metadata "
            f"says {expected}. Delete {path} (a stale or partial file in the download folder is "
            "kept by W&B) and download again into an empty root; if it still differs, the "
            "version's file is not the checkpoint that was logged: delete the version and log "
            "the checkpoint again."
        )
    return path


def delete_version(version: str, *, delete_aliases: bool = False, api: Any = None) -> None:
    """Delete a version and its files (a Registry link is only unlinked).

    Args:
        version: the version's path, e.g. "team/digits/digits-1a2b3c4d:v2".
        delete_aliases: also drop its aliases; without it W&B refuses to delete a
            version that holds any (including `latest`).
        api: a `wandb.Api` (default: a new one from the environment).

    Example:

    ```python
    delete_version("team/digits/digits-1a2b3c4d:v2", delete_aliases=True)
    ```
    """
    _api(api).artifact(version, type=ARTIFACT_TYPE).delete(delete_aliases=delete_aliases)


def _api(api: Any) -> Any:
    return api if api is not None else wandb.Api()


def _same(stored: Any, wanted: Any) -> bool:
    if stored is None:
        return False
    if _is_number(stored) and _is_number(wanted):
        return float(stored) == float(wanted)
    return str(stored).strip().lower() == str(wanted).strip().lower()


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _version_number(artifact: Any) -> int:
    version = str(getattr(artifact, "version", "") or "")
    return int(version[1:]) if re.fullmatch(r"v\d+", version) else -1
