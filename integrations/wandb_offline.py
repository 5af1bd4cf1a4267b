"""W&B offline runs, read from disk: their checkpoints listed and ranked without a server.

An offline run (`WANDB_MODE=offline`) keeps all it logged in its folder,
`<dir>/wandb/offline-run-<time>-<run id>/`: `run-<run id>.wandb`, the
transaction log `wandb sync` uploads, and the files its artifact records point
at (`WandbTracker` links each checkpoint into the folder's `tracked_ckpt/`).
Each checkpoint's artifact record carries the version's metadata, which is the
checkpoint record (`wandb_schema.artifact_metadata`), so a checkpoint reads
back here exactly as it will from the server once synced.

The log is a LevelDB-style log: a 7-byte header (`:W&B`, magic 0xBEE1, version
0), then 32 KiB blocks of chunks (crc32 u32, length u16, type u8: FULL, FIRST,
MIDDLE, LAST; the crc is zlib's crc32 of the data seeded with that of the type
byte), each record a serialised `wandb.proto.wandb_internal_pb2.Record`. wandb
0.31 ships no Python reader for it (`wandb.sdk.internal.datastore` went with
the Python internal process), so the framing is read here and every record is
decoded by wandb's own protobuf classes, the same in every wandb this package
supports. A run still being written ends in a partial record: reading stops
before it. An unknown header fails loudly, naming the installed wandb.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import struct
import time
import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import wandb
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]  # protobuf ships no types
from wandb.proto import wandb_internal_pb2

from tracked_ckpt.errors import TrackerError
from tracked_ckpt.integrations.wandb_chunks import restore_from_files
from tracked_ckpt.integrations.wandb_schema import (
    ARTIFACT_TYPE,
    base_of_collection,
    identifying_alias,
    is_tracked,
    record_from_metadata,
    run_id_of,
)
from tracked_ckpt.record import STORAGE_INCREMENTAL
from tracked_ckpt.tracker import LoggedCheckpoint

logger = logging.getLogger("tracked_ckpt")

#: Where W&B puts a run's folders, under its directory (`dir=`, `WANDB_DIR`, else the working directory).
RUNS_FOLDER = "wandb"
#: The prefix of an offline run's folder name.
OFFLINE_RUN_PREFIX = "offline-run-"

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_LOG_NAME_RE = re.compile(r"run-(.+)\.wandb")


@dataclasses.dataclass(frozen=True)
class OfflineRun:
    """What an offline run's transaction log holds, as far as it is written.

    Attributes:
        dir: the run's folder.
        run_id, name, project, entity: the run's (name: its display name, "" if unnamed).
        started: when the run started (seconds since the epoch).
        finished: whether the run ended (its log holds the exit record).
        artifacts: its artifact records (`wandb_internal_pb2.ArtifactRecord`), in logging order.
    """

    dir: str
    run_id: str
    name: str
    project: str
    entity: str
    started: float
    finished: bool
    artifacts: tuple[Any, ...]


def read_records(path: str) -> Iterator[Any]:
    """Every complete record of a `.wandb` transaction log, in write order.

    A partial record at the end (the run is still being written) is left out; a
    damaged one elsewhere ends the reading with a warning.

    Raises:
        TrackerError: the file is not a W&B transaction log of a format this reader knows.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER:  # wandb has not written the header yet
        return
    header = struct.unpack("<4sHB", data[:_HEADER])
    if header != (b":W&B", 0xBEE1, 0):
        raise TrackerError(
            f"{path} is not a W&B transaction log this version of tracked-ckpt reads (header {header!r}, "
            f"wandb {wandb.__version__}): upload it with `wandb sync` and read it from the server."
        )
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # a block's trailing padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        start, pos = pos + _HEADER, pos + _HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        if pos > len(data):
            break  # the chunk is still being written
        chunk = data[start:pos]
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc or kind not in (1, 2, 3, 4):
            logger.warning("%s is damaged at byte %d: its records from there on are not read.", path, start)
            return
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]  # generated, untyped
            try:
                record.ParseFromString(pending)
            except DecodeError:
                logger.warning("%s holds a record wandb cannot decode at byte %d: reading stops there.", path, start)
                return
            yield record


def run_dirs(path: str | os.PathLike[str]) -> list[str]:
    """The offline run folders `path` names, oldest first.

    `path` may be a run's folder, the `wandb` folder W&B writes runs into, or
    the folder holding that (`dir=` / `WANDB_DIR`).
    """
    path = os.fspath(path)
    if transaction_log(path) is not None:
        return [path]
    found = [d for d in glob.glob(os.path.join(glob.escape(path), OFFLINE_RUN_PREFIX + "*")) if os.path.isdir(d)]
    if not found and os.path.basename(os.path.normpath(path)) != RUNS_FOLDER:
        return run_dirs(os.path.join(path, RUNS_FOLDER)) if os.path.isdir(os.path.join(path, RUNS_FOLDER)) else []
    # The folder names start with the run's start time (YYYYMMDD_HHMMSS): by name is by age.
    return sorted(d for d in found if transaction_log(d) is not None)


def transaction_log(run_dir: str) -> str | None:
    """The run's `run-<id>.wandb` in its folder, or None."""
    found = sorted(glob.glob(os.path.join(glob.escape(run_dir), "run-*.wandb")))
    return found[0] if found else None


def read_run(run_dir: str) -> OfflineRun:
    """The run, as far as its transaction log is written."""
    log = transaction_log(run_dir)
    if log is None:
        raise LookupError(f"{run_dir} holds no W&B run (no run-<id>.wandb in it).")
    match = _LOG_NAME_RE.fullmatch(os.path.basename(log))
    run_id, name, project, entity = (match.group(1) if match else ""), "", "", ""
    started, finished, artifacts = os.path.getmtime(log), False, []
    for record in read_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            run_id, name, project, entity = run.run_id or run_id, run.display_name, run.project, run.entity
            if run.HasField("start_time"):
                started = run.start_time.seconds + run.start_time.nanos / 1e9
        elif kind == "artifact":
            artifacts.append(record.artifact)
        elif kind == "exit":
            finished = True
    return OfflineRun(run_dir, run_id, name, project, entity, started, finished, tuple(artifacts))


def checkpoints(runs: list[OfflineRun], tracker: str = "wandb") -> list[tuple[LoggedCheckpoint, Mapping[str, Any]]]:
    """The tracked checkpoints the runs logged, each with its version's metadata, in logging order.

    As W&B stores them once synced: content logged again into a collection is
    the same version, an alias names one version of a collection (the last one
    given it; `latest` the newest). A checkpoint's `id` is what `WandbTracker`
    returned for it offline (`project/collection:epoch-N`, or `:step-S`), its
    `location` the file in the run's folder.
    """
    found: list[tuple[LoggedCheckpoint, dict[str, Any], str]] = []
    holders: dict[tuple[str, str], dict[str, str]] = {}  # (project, collection) -> alias -> digest
    seen: set[tuple[str, str, str]] = set()
    for run in runs:
        for art in run.artifacts:
            metadata = _metadata(art)
            if art.type != ARTIFACT_TYPE or not is_tracked(metadata):
                continue
            project = art.project or run.project
            collection = (project, art.name)
            for alias in [*art.aliases, "latest"]:
                holders.setdefault(collection, {})[alias] = art.digest
            if (project, art.name, art.digest) in seen:
                continue  # the same content logged again: one version
            seen.add((project, art.name, art.digest))
            checkpoint = _checkpoint(run, art, metadata, project, tracker)
            if checkpoint is not None:
                found.append((checkpoint, metadata, art.digest))
    out: list[tuple[LoggedCheckpoint, Mapping[str, Any]]] = []
    for checkpoint, metadata, digest in found:
        held = holders[(checkpoint.extra["project"], checkpoint.extra["collection"])]
        aliases = tuple(sorted(alias for alias, holder in held.items() if holder == digest))
        out.append((dataclasses.replace(checkpoint, aliases=aliases), metadata))
    return out


def _checkpoint(
    run: OfflineRun, art: Any, metadata: dict[str, Any], project: str, tracker: str
) -> LoggedCheckpoint | None:
    run_id = run_id_of(metadata, art.name) if metadata.get("run_id") else run.run_id
    base = base_of_collection(art.name, run_id)
    try:
        record = record_from_metadata(metadata, base)
    except (TypeError, ValueError):
        return None
    files = {entry.path: _local_file(entry.local_path, run.dir) for entry in art.manifest.contents}
    # A full checkpoint is its one file; an incremental one is a manifest and packs (`wandb_chunks`).
    local = next(iter(files.values())) if len(files) == 1 and record.storage != STORAGE_INCREMENTAL else ""
    return LoggedCheckpoint(
        id=f"{project + '/' if project else ''}{art.name}:{identifying_alias(record)}",
        run_id=run_id,
        record=record,
        tracker=tracker,
        location=local,
        extra={
            "base": base,
            "collection": art.name,
            "project": project,
            "run_name": run.name,
            "offline_run_dir": run.dir,
            "local_path": local,
            "local_files": files if record.storage == STORAGE_INCREMENTAL else {},
            "created": run.started,
            "run_finished": run.finished,
        },
    )


def _metadata(art: Any) -> dict[str, Any]:
    try:
        metadata = json.loads(art.metadata) if art.metadata else {}
    except ValueError:
        return {}
    return metadata if isinstance(metadata, dict) else {}


def _local_file(logged_path: str, run_dir: str) -> str:
    """The checkpoint's file: where the run logged it, else, for a run folder moved since, its place in the
    folder now (the longest end of the logged path found there; the sha256 check on loading has the last word)."""
    if os.path.isfile(logged_path):
        return logged_path
    parts = [p for p in os.path.normpath(logged_path).split(os.sep) if p]
    for start in range(len(parts)):
        moved = os.path.join(run_dir, *parts[start:])
        if os.path.isfile(moved):
            return moved
    return logged_path


SCOPE_KEY = "offline_dir"  # a registry scope holding this key is read from disk (`offline_scope`)


def is_runs_folder(path: str | None) -> bool:
    """Whether `path` is a folder of offline runs, or one run's folder (`run_dirs` finds some)."""
    return bool(path) and os.path.isdir(str(path)) and bool(run_dirs(str(path)))


def offline_scope(
    root: str, *, run_id: str | None = None, project: str | None = None, newest: bool = False
) -> dict[str, Any]:
    """A registry scope of the offline runs under `root` (a folder as `run_dirs` takes).

    `run_id` and `project` keep the runs they name (a resumed run has a folder per
    start); `newest` with neither: only the newest run.

    Raises:
        LookupError: no offline run there, or none `run_id` / `project` names (the message lists them).
    """
    dirs = run_dirs(root)
    if not dirs:
        raise LookupError(
            f"No W&B offline run in {root}: train with WANDB_MODE=offline (or WandbTracker(mode='offline')), "
            f"or pass the run's folder ({RUNS_FOLDER}/{OFFLINE_RUN_PREFIX}…)."
        )
    if newest and run_id is None and project is None:
        return {SCOPE_KEY: dirs[-1]}
    if run_id is not None or project is not None:
        runs = [read_run(d) for d in dirs]
        if not any(matches_run(r, run_id, project) for r in runs):
            have = ", ".join(sorted({f"{r.project}/{r.run_id}" for r in runs}))
            wanted = "/".join(p for p in (project, run_id) if p)
            raise LookupError(f"No W&B offline run {wanted} in {root}: it has {have}.")
    scope: dict[str, Any] = {SCOPE_KEY: root}
    if project is not None:
        scope["project"] = project
    if run_id is not None:
        scope["run_id"] = run_id
    return scope


def default_scope(
    wandb_dir: str, run_id: str | None, experiment: str | None, last: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The offline runs a read means in offline mode, under `wandb_dir` (`dir=`, `WANDB_DIR`, else ".").

    A folder given as `experiment`; the run `run_id` names ("id", "project/id"), or
    the project `experiment` names; else the last fit's run (`last`, its destination),
    in the folder it was written to; else the newest run.
    """
    if experiment and os.path.isdir(experiment):  # a folder meant as one, even with no run in it
        return offline_scope(experiment, run_id=run_id)
    last = last if last is not None and last.get("mode") == "offline" else {}
    if not (run_id or experiment) and last.get("runs_folder"):
        # The last fit's run, in the folder W&B wrote it to (with the folders of its earlier starts).
        return last_fit_scope(last)
    run_id = run_id or (last.get("run_id") if not experiment else None)
    project = None
    if run_id and "/" in run_id:
        project, _, run_id = run_id.strip("/").rpartition("/")
    project = (experiment or project or "").rpartition("/")[2] or None
    return offline_scope(wandb_dir, run_id=run_id, project=project, newest=True)


def last_fit_scope(last: Mapping[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """The scope of the offline run the last fit in this process logged to (`last`, its destination).

    `run.finish()` can return before wandb-core has written the end of the log, so
    a read right after the fit would miss its last checkpoints: unless the run is
    still going here, wait (up to `timeout` seconds) for the log's exit record.
    """
    scope = offline_scope(last["runs_folder"], run_id=last["run_id"])
    active = wandb.run
    if active is not None and active.id == last["run_id"]:
        return scope  # the user's run, still open: read as far as it is written
    deadline = time.monotonic() + timeout
    while not scope_runs(scope)[-1].finished:
        if time.monotonic() > deadline:
            logger.warning("W&B has not finished writing offline run %s: reading what it wrote.", last["run_id"])
            break
        time.sleep(0.05)
    return scope


def scope_runs(scope: Mapping[str, Any]) -> list[OfflineRun]:
    """The offline runs of a scope `offline_scope` made, oldest first."""
    runs = (read_run(d) for d in run_dirs(scope[SCOPE_KEY]))
    return [r for r in runs if matches_run(r, scope.get("run_id"), scope.get("project"))]


def copy_file(checkpoint: LoggedCheckpoint, directory: str) -> str:
    """Copy an offline checkpoint's file (from its run's folder) into `directory`; return the copy's path.

    An incremental checkpoint is rebuilt from the manifest and packs the run's folder holds.
    """
    if checkpoint.record.storage == STORAGE_INCREMENTAL:
        files = dict(checkpoint.extra.get("local_files") or {})
        label = f"{checkpoint.record.name} of offline run {checkpoint.extra.get('offline_run_dir')}"
        return restore_from_files(files, label, directory)
    source = str(checkpoint.extra.get("local_path") or checkpoint.location)
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"The file of {checkpoint.record.name} is gone from offline run {checkpoint.extra.get('offline_run_dir')} "
            f"({source})."
        )
    target = os.path.join(directory, os.path.basename(source))
    shutil.copyfile(source, target)
    return target


def not_registrable(checkpoint: LoggedCheckpoint) -> TrackerError:
    """The one-line refusal to promote a checkpoint of an offline run, naming it and `wandb sync`."""
    record, extra = checkpoint.record, checkpoint.extra
    value = "" if record.value is None else f", {record.monitor}={record.value:.6g}"
    run = f"{extra.get('run_name')!r} ({checkpoint.run_id})" if extra.get("run_name") else checkpoint.run_id
    where = "/".join(str(p) for p in (extra.get("project"), checkpoint.run_id) if p)
    return TrackerError(
        f"The best checkpoint is {record.name} of W&B offline run {run}{value}, only on this disk: "
        f"promoting needs the W&B server. Run `wandb sync {extra.get('offline_run_dir')}`, then promote "
        f"in online mode with run_id='{where}'."
    )


def matches_run(run: OfflineRun, run_id: str | None, project: str | None) -> bool:
    """Whether an offline run is the one `run_id` (and `project`) name; None matches any."""
    return (run_id is None or run.run_id == run_id) and (project is None or run.project == project)
