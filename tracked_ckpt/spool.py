"""The durable spool: checkpoints waiting to be logged, one file and one manifest each.

Keras writes `.keras` files in place and may overwrite the same path next epoch,
so the training thread freezes each written file here before anything uploads
it. Freezing is a hard link when the spool is on the same filesystem (constant
time, whatever the file size), else a copy-on-write clone, else a copy hashed in
the same read; `release_path` makes sure
Keras never writes into an inode the spool still holds. An entry stays until
every tracker confirmed it, so a crash or an unreachable tracker loses nothing:
`tracked-ckpt sync` (or the next `fit`) logs what is left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from tracked_ckpt.files import check_writable, clone_file, copy_hashing, create_in_folder
from tracked_ckpt.record import FORMAT_SUFFIXES, CheckpointRecord, file_format

logger = logging.getLogger("tracked_ckpt")

MANIFEST_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
FAILED_SUFFIX = ".failed"
# Folders `find_spools` does not search: they hold no spool but can hold many thousand files.
_NOT_SPOOL_HOLDERS = {
    ".git",
    ".hg",
    ".svn",
    "__pycache__",
    "node_modules",
    "site-packages",
    ".nox",
    ".tox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
}
# A manifest's (or parked entry's) file name: `Spool.new_id()` plus its suffix.
_ENTRY_FILE_RE = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{12}\.(?:json|failed)$")
# A live fit's hold on its spool (`Spool.hold`): it may still add checkpoints there.
HOLD_PREFIX = ".live-"
_HOLD_FILE_RE = re.compile(r"^\.live-[0-9a-f]{12}\.lock$")
# This process makes, probes, holds and removes spool folders one at a time: a fit ending in
# the background must not remove the emptied folder a new fit has just made or probed.
_folders = threading.Lock()


@dataclasses.dataclass
class SpoolEntry:
    """One checkpoint in the spool.

    Attributes:
        id: unique id, the stem of the manifest (`<id>.json`); the staged file has a name of its own.
        record: the checkpoint's record (sha256 filled in once hashed).
        staged_path: the frozen copy of the checkpoint file.
        destinations: tracker name -> where to log it (what `Tracker.start` returned).
        done: tracker name -> the id the tracker gave it, once logged.
        created: UNIX time the entry was made.
        attempts: tracker calls started for it (written before each call): 0 means no
            tracker can hold any part of it yet, so the idempotency search can be skipped.
    """

    id: str
    record: CheckpointRecord
    staged_path: str
    destinations: dict[str, dict[str, Any]]
    done: dict[str, str] = dataclasses.field(default_factory=dict)
    created: float = dataclasses.field(default_factory=time.time)
    attempts: int = 0

    @property
    def pending_trackers(self) -> list[str]:
        return [name for name in self.destinations if name not in self.done]

    def to_json(self) -> dict[str, Any]:
        record = dataclasses.asdict(self.record)
        record["metrics"] = dict(self.record.metrics)
        return {
            "id": self.id,
            "record": record,
            "staged_file": os.path.basename(self.staged_path),
            "destinations": self.destinations,
            "done": self.done,
            "created": self.created,
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], directory: str) -> SpoolEntry:
        return cls(
            id=data["id"],
            record=CheckpointRecord(**data["record"]),
            staged_path=os.path.join(directory, data["staged_file"]),
            destinations=data["destinations"],
            done=data.get("done", {}),
            created=data.get("created", 0.0),
            # A manifest without the count was written by an older version: it may have been tried.
            attempts=data.get("attempts", 1),
        )


class Spool:
    """A directory of staged checkpoint files with a JSON manifest beside each."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = os.path.abspath(os.fspath(directory))
        # staged path -> (sha256, size) of a copy hashed as it was made, until `write` records it.
        self._digests: dict[str, tuple[str, int]] = {}

    def stage(self, src: str) -> str:
        """Freeze the file at `src` into the spool and return the frozen path.

        In order of preference: a hard link (same filesystem; `release_path` keeps
        Keras from writing into it again), a copy-on-write clone (constant time too,
        and a rewrite of `src` cannot reach it), or a copy, hashed in the same read:
        `write` then records that sha256 so the publisher does not read the file again.
        """
        os.makedirs(self.directory, exist_ok=True)
        src = os.path.realpath(src)  # a link to a symlink would not freeze the bytes behind it
        suffix = _checkpoint_suffix(src)
        dst = os.path.join(self.directory, f"{uuid.uuid4().hex}{suffix}")
        try:
            os.link(src, dst)
            return dst
        except OSError:  # another filesystem, or links not supported
            pass
        if clone_file(src, dst):
            return dst
        self._digests[dst] = copy_hashing(src, dst)
        return dst

    def staged_digest(self, staged_path: str) -> tuple[str, int] | None:
        """(sha256, size) of a staged copy, hashed while `stage` made it, until `write` records it in the
        entry; None if the file was linked or cloned (the publisher hashes those)."""
        return self._digests.get(staged_path)

    def write(self, entry: SpoolEntry) -> None:
        """Write (or rewrite) an entry's manifest atomically.

        An entry whose record has no sha256 yet gets the one `stage` computed while
        copying its file, if it did: the hash is then in the manifest, durable.
        """
        digest = self._digests.pop(entry.staged_path, None)
        if digest is not None and not entry.record.sha256:
            entry.record = dataclasses.replace(entry.record, sha256=digest[0], size_bytes=digest[1])
        path = os.path.join(self.directory, entry.id + MANIFEST_SUFFIX)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(entry.to_json(), f, indent=1, sort_keys=True)
        os.replace(tmp, path)

    @contextlib.contextmanager
    def claim(self, entry: SpoolEntry) -> Iterator[bool]:
        """Hold an exclusive lock on an entry while logging it; yields False if someone else holds it.

        Keeps a `tracked-ckpt sync` and a still-running worker from logging the same
        checkpoint at once (both would find nothing logged yet and both create it).
        """
        path = os.path.join(self.directory, entry.id + LOCK_SUFFIX)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def park(self, entry: SpoolEntry, reason: str) -> None:
        """Set aside an entry that cannot be logged as it is, with the reason, for a later retry."""
        data = entry.to_json()
        data["failed"] = reason
        path = os.path.join(self.directory, entry.id + FAILED_SUFFIX)
        with open(path, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        for stale in (MANIFEST_SUFFIX, LOCK_SUFFIX):
            try:
                os.remove(os.path.join(self.directory, entry.id + stale))
            except FileNotFoundError:
                pass

    def is_parked(self, entry: SpoolEntry) -> bool:
        """Whether the entry was set aside (by this or another process)."""
        return os.path.exists(os.path.join(self.directory, entry.id + FAILED_SUFFIX))

    def unpark_all(self) -> int:
        """Put every parked entry back in line; returns how many."""
        count = 0
        if os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name.endswith(FAILED_SUFFIX):
                    stem = name[: -len(FAILED_SUFFIX)]
                    os.replace(os.path.join(self.directory, name), os.path.join(self.directory, stem + MANIFEST_SUFFIX))
                    count += 1
        return count

    def remove(self, entry: SpoolEntry) -> None:
        """Drop an entry once every tracker has confirmed it."""
        for path in (
            entry.staged_path,
            os.path.join(self.directory, entry.id + MANIFEST_SUFFIX),
            os.path.join(self.directory, entry.id + LOCK_SUFFIX),
        ):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass

    def reload(self, entry: SpoolEntry) -> bool:
        """Refresh `done` and `attempts` from the entry's manifest; False when it is gone.

        Another process (a `tracked-ckpt sync`, an earlier job's worker) may have
        tried or finished the entry since it was read: its manifest says so.
        """
        try:
            with open(os.path.join(self.directory, entry.id + MANIFEST_SUFFIX)) as f:
                data = json.load(f)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as exc:
            logger.warning("Unreadable spool manifest for %s: %s", entry.record.name, exc)
            return True
        entry.done = {**data.get("done", {}), **entry.done}
        entry.attempts = max(entry.attempts, data.get("attempts", 1))
        return True

    def entries(self) -> Iterator[SpoolEntry]:
        """Entries still in the spool, oldest first."""
        if not os.path.isdir(self.directory):
            return
        found = []
        for name in os.listdir(self.directory):
            if not name.endswith(MANIFEST_SUFFIX):
                continue
            try:
                with open(os.path.join(self.directory, name)) as f:
                    entry = SpoolEntry.from_json(json.load(f), self.directory)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.warning("Skipping unreadable spool manifest %s: %s", name, exc)
                continue
            found.append(entry)
        yield from sorted(found, key=lambda e: (e.created, e.id))

    def remove_if_empty(self) -> None:
        """Remove the spool directory (and an emptied `.tracked_ckpt` parent) once nothing waits in it."""
        with _folders:
            self.holders()  # clears the holds a killed process left
            self._remove_emptied()

    def _remove_emptied(self) -> None:
        for path in (self.directory, os.path.dirname(self.directory)):
            if os.path.basename(path) not in ("spool", ".tracked_ckpt"):
                break  # a user-chosen spool_dir: leave its parents alone
            try:
                os.rmdir(path)
            except OSError:  # not empty, or already gone
                break

    def new_id(self) -> str:
        return f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}"

    def hold(self) -> SpoolHold:
        """Mark the spool as in use by a live fit of this process until the hold is released.

        `sync_spool` waits for (or reports) a held spool, since a live fit may still
        add checkpoints to it or be logging one.
        """
        with _folders:
            return SpoolHold(self.directory)

    def check_writable(self) -> None:
        """Make the spool folder and write a probe into it.

        Raises:
            OSError: checkpoints cannot be spooled there.
        """
        with _folders:
            check_writable(self.directory)

    def holders(self) -> list[str]:
        """The live processes holding this spool ("host:pid"); stale holds of dead processes are removed."""
        found: list[str] = []
        if not os.path.isdir(self.directory):
            return found
        for name in sorted(os.listdir(self.directory)):
            if not _HOLD_FILE_RE.match(name):
                continue
            path = os.path.join(self.directory, name)
            try:
                with open(path, "r+") as handle:
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except OSError:
                        found.append(handle.read().strip() or name)  # locked: its process is alive
                        continue
                    os.remove(path)  # nobody holds it: left by a process that was killed
            except FileNotFoundError:
                continue
        return found


class SpoolHold:
    """An flock on a marker file in a spool, held while a fit of this process may still use it.

    The lock goes with the process: a killed process leaves a marker nobody holds,
    which `Spool.holders` recognises and removes.
    """

    def __init__(self, directory: str):
        self.path = os.path.join(directory, f"{HOLD_PREFIX}{uuid.uuid4().hex[:12]}{LOCK_SUFFIX}")
        # Locked and filled in under another name, then renamed: a reader never sees it unlocked.
        tmp = f"{self.path}.{os.getpid()}.tmp"
        self._handle: Any = create_in_folder(tmp)  # held open: the lock lives as long as the hold
        fcntl.flock(self._handle, fcntl.LOCK_EX)
        self._handle.write(f"{socket.gethostname()}:{os.getpid()}")
        self._handle.flush()
        os.replace(tmp, self.path)

    def release(self) -> None:
        """Give the spool back (idempotent)."""
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass
        handle.close()  # closing drops the lock


def find_spools(root: str | os.PathLike[str]) -> list[str]:
    """Every spool folder at or beneath `root` that holds checkpoints waiting (or parked), or a live fit's hold.

    A sweep's trials each keep their own spool (by default `.tracked_ckpt/spool`
    beside their checkpoints, wherever their `spool_dir` points otherwise): this
    finds them all under a sweep's checkpoint root. Folders are recognised by
    their manifests' names, so other JSON files (Ray's `result.json`) do not count.
    Version control, caches and virtualenvs (a folder with `pyvenv.cfg`) are not searched.

    Example (two trials of a sweep, each with a live fit's hold on its spool):
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> holds = [Spool(os.path.join(root, f"trial_{i}", ".tracked_ckpt", "spool")).hold() for i in (0, 3)]
        >>> [os.path.relpath(folder, root) for folder in find_spools(root)]
        ['trial_0/.tracked_ckpt/spool', 'trial_3/.tracked_ckpt/spool']
        >>> for hold in holds:
        ...     hold.release()
        >>> find_spools(root)
        []
        >>> import shutil; shutil.rmtree(root)
    """
    found = []
    for folder, subfolders, files in os.walk(os.path.abspath(os.fspath(root))):
        # `tracked-ckpt sync` with no folder walks the working directory: pass over what
        # holds no spool but can hold many thousand files (VCS, caches, virtualenvs).
        subfolders[:] = sorted(
            d
            for d in subfolders
            if d not in _NOT_SPOOL_HOLDERS and not os.path.exists(os.path.join(folder, d, "pyvenv.cfg"))
        )
        if any(_ENTRY_FILE_RE.match(name) or _HOLD_FILE_RE.match(name) for name in files):
            found.append(folder)
    return found


def release_path(path: str) -> None:
    """Before Keras rewrites `path`, detach it from any spool link so the staged bytes stay as they were.

    Keras opens checkpoint files with mode "wb", which truncates the existing
    inode; a hard-linked spool entry would see the new bytes. Removing the path
    first makes Keras create a fresh inode instead.
    """
    try:
        target = os.path.realpath(path)  # Keras writes through a symlink into its target
        if os.stat(target).st_nlink > 1:
            os.remove(target)
    except FileNotFoundError:
        pass


def _checkpoint_suffix(path: str) -> str:
    """The staged copy keeps the checkpoint's suffix: Keras and MLflow tell the formats apart by it."""
    try:
        return FORMAT_SUFFIXES[file_format(path)]
    except ValueError:
        return os.path.splitext(path)[1]
