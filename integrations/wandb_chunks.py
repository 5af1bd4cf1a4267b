"""Incremental checkpoints on W&B: each version holds a manifest and the packs it references.

W&B keeps a file once per artifact collection while its digest stays the same across versions
("only files that change between two artifact versions incur storage costs"), so an incremental
checkpoint (`storage="incremental"`) is shaped for exactly that: its version holds

    checkpoint.manifest.json   the file's chunks in order and its sha256 (`tracked_ckpt.packs`)
    packs/<digest>             every pack the manifest references

Packs are content-addressed and the pack writer packs only chunks the collection does not hold
yet, so an unchanged frozen base is the same pack files, byte for byte, in every version: W&B
uploads and stores them once, and the version costs its new packs. Every version is complete
(it lists all the packs it needs), so W&B's own accounting keeps a shared pack until the last
version listing it is deleted: retention needs no garbage collection here.

Which chunks a collection holds is what `PackFolder` holds: one folder per collection inside
the run's local directory (`<run dir>/tracked_ckpt/chunks/<collection>/`), whose packs are hard
links of the ones the pack cache keeps (no second copy). Offline, the artifact records point at
those files until `wandb sync <run dir>`, so the run directory stays self-contained; online, the
packs the newest version no longer lists are dropped once it is committed, and the folder goes
when the tracker finishes. A resumed run (a new run directory) starts from the folder an earlier
process left beside it, if any (offline runs keep theirs until synced); without one, the file is
packed afresh: correct, and W&B still stores packs that come out identical once.

W&B computes an MD5 of every file added to a version; a pack's is computed once (when it is first
added) and its entry reused for later versions, so a version hashes its new bytes only.

Reading (`fetch_incremental`): the manifest is downloaded, then only the packs the local pack
cache lacks (`pack_reader.restore_file`, which checks their chunks and the whole file's sha256).

Not on W&B: dedup across collections. W&B stores a file under its collection (storage layout
V2: `artifactsV2/<region>/<entity>/<project>/<collection>/<birth artifact id>/<md5>`, wandb 0.31
`WandbStoragePolicy._file_url`), and each run logs into a collection of its own, so two runs of a
project that share a frozen base each store it once.
"""

from __future__ import annotations

import contextlib
import copy
import glob
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import wandb

from tracked_ckpt.blobstore import BlobNotFoundError, BlobStore, LocalFolderStore
from tracked_ckpt.errors import ChunkStoreError
from tracked_ckpt.files import link_or_copy, safe_file_name
from tracked_ckpt.pack_cache import PackCache, default_pack_cache
from tracked_ckpt.pack_writer import StoredFile, store_file
from tracked_ckpt.packs import INDEXES, PACKS, ChunkLocation, Manifest, index_to_bytes
from tracked_ckpt.record import CheckpointRecord

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

logger = logging.getLogger("tracked_ckpt")

#: The file an incremental version holds in place of the checkpoint.
MANIFEST_FILE = "checkpoint.manifest.json"
#: Where a run's local directory keeps the pack folders of its collections.
CHUNKS_DIR = os.path.join("tracked_ckpt", "chunks")
_LATEST = "latest.manifest.json"  # in a pack folder: the manifest of the collection's newest version


class PackFolder(LocalFolderStore):
    """The packs one collection holds, as this machine has them: a `BlobStore` on a folder.

    `put` hard-links the staged pack (which the pack cache then adopts: one copy on disk for
    both) where the file system allows it, else copies it.
    """

    @override
    def put(self, name: str, local_path: Path) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        incoming = target.with_name(f".incoming-{target.name}")
        incoming.unlink(missing_ok=True)
        link_or_copy(os.fspath(local_path), os.fspath(incoming))
        os.replace(incoming, target)

    def pack_path(self, pack: str) -> Path:
        """The local file of pack `pack`."""
        return self._path(PACKS + pack)

    def latest(self) -> Manifest | None:
        """The manifest of the newest version logged from this folder, or None."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return Manifest.from_bytes((self.root / _LATEST).read_bytes())
        return None

    def keep_manifest(self, manifest: Manifest, name: str) -> Path:
        """Write `manifest` as `manifests/<name>` (kept until synced) and as the folder's latest."""
        data = manifest.to_bytes()
        kept = self.root / "manifests" / safe_file_name(name)
        for path in (kept, self.root / _LATEST):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_name(path.name + ".tmp").write_bytes(data)
            os.replace(path.with_name(path.name + ".tmp"), path)
        return kept

    def prune(self, manifest: Manifest) -> None:
        """Drop the packs `manifest` does not reference (they are on W&B, in older versions)."""
        needed = set(manifest.packs)
        for name in self.list(PACKS):
            if name.removeprefix(PACKS) not in needed:
                self.delete(name)


class IncrementalWriter:
    """Builds incremental versions for a `WandbTracker` (one per tracker, used by its publisher thread).

    Args:
        cache: the pack cache (default: `default_pack_cache()`, on first use).
    """

    def __init__(self, cache: PackCache | None = None):
        self._cache = cache
        self._lock = threading.Lock()
        # W&B's manifest entry of each pack added so far: a later version reuses its MD5.
        self._entries: dict[str, Any] = {}
        self._online_folders: set[Path] = set()

    @property
    def cache(self) -> PackCache:
        """The pack cache: uploaded packs are kept in it, so loading here downloads nothing."""
        if self._cache is None:
            self._cache = default_pack_cache()
        return self._cache

    def build(
        self, run: Any, collection: str, artifact: wandb.Artifact, path: str, record: CheckpointRecord
    ) -> tuple[PackFolder, StoredFile]:
        """Chunk `record`'s file at `path` into the collection's pack folder and fill `artifact` with the result.

        `artifact` gets `MANIFEST_FILE` and every pack the manifest references (added with
        `policy="immutable"`: W&B makes no staging copy) and the description, e.g.
        `incremental: 2.4 MB new of 1.5 GB`.

        Returns:
            the folder (for `committed`) and what the write cost.

        Raises:
            ChecksumError: the file is not the one whose sha256 the record holds.
        """
        folder = PackFolder(os.path.join(run.settings.sync_dir, CHUNKS_DIR, collection))
        with self._lock:
            if not run.offline:
                self._online_folders.add(folder.root)
            previous = folder.latest() or _seed_from_earlier_process(folder, run, collection)
            stored = store_file(
                path,
                folder,
                self.cache,
                name=os.path.basename(record.filepath),
                previous=previous,
                expected_sha256=record.sha256,
                label=record.name,
            )
            manifest = stored.manifest
            kept = folder.keep_manifest(manifest, f"{record.key}.json")
            artifact.description = stored.describe()
            artifact.add_file(os.fspath(kept), name=MANIFEST_FILE, policy="immutable", skip_cache=True)
            for pack in manifest.packs:
                self._add_pack(artifact, folder, pack)
        logger.debug("W&B %s: %s in %d pack(s)", collection, stored.describe(), len(manifest.packs))
        return folder, stored

    def committed(self, run: Any, folder: PackFolder, manifest: Manifest) -> None:
        """The version of `manifest` is on W&B: online, drop the packs it no longer lists."""
        if not run.offline:
            with self._lock:
                folder.prune(manifest)

    def finish(self) -> None:
        """Remove the pack folders of online runs (their packs are on W&B and in the pack cache)."""
        with self._lock:
            folders, self._online_folders = self._online_folders, set()
        for root in folders:
            shutil.rmtree(root, ignore_errors=True)

    def _add_pack(self, artifact: wandb.Artifact, folder: PackFolder, pack: str) -> None:
        name, local = PACKS + pack, folder.pack_path(pack)
        known = self._entries.get(pack)
        if known is not None:
            # The pack's bytes are its name's (content-addressed): W&B's entry for it, MD5 included,
            # holds for every version, so only the local file it points at changes.
            # copy.copy, not pydantic's model_copy: wandb's entries are plain classes before ~0.22.
            reused = copy.copy(known)
            reused.local_path = os.fspath(local)
            artifact.manifest.add_entry(reused)
            return
        entry = artifact.add_file(os.fspath(local), name=name, policy="immutable", skip_cache=True)
        self._entries[pack] = copy.copy(entry)


def _seed_from_earlier_process(folder: PackFolder, run: Any, collection: str) -> Manifest | None:
    """Give a run's new local folder the packs of its newest version an earlier process logged here.

    A resumed run (`resume=`, `tracked-ckpt sync` after a crash) has a run directory of its own
    beside the earlier ones (`<wandb dir>/{offline-,}run-<time>-<run id>`); an earlier one still
    holding the collection's folder (offline: until synced and removed) gives this one its newest
    manifest, its packs (hard links) and where their chunks are, so the next version shares them
    instead of packing the whole file again. Returns that manifest, or None.
    """
    runs = Path(run.settings.sync_dir).parent
    earlier = [
        PackFolder(found.parent)
        for found in runs.glob(os.path.join(f"*run-*-{glob.escape(run.id)}", CHUNKS_DIR, collection, _LATEST))
        if found.parent != folder.root
    ]
    for source in sorted(earlier, key=lambda f: (f.root / _LATEST).stat().st_mtime, reverse=True):
        manifest = source.latest()
        if manifest is None or not all(source.pack_path(p).is_file() for p in manifest.packs):
            continue
        for pack in manifest.packs:
            folder.put(PACKS + pack, source.pack_path(pack))
        where: dict[str, dict[str, ChunkLocation]] = {}
        for chunk in manifest.chunks:
            where.setdefault(chunk.pack, {})[chunk.digest] = chunk
        index = index_to_bytes({pack: list(chunks.values()) for pack, chunks in where.items()})
        folder.root.mkdir(parents=True, exist_ok=True)
        staged = folder.root / ".seed-index"
        staged.write_bytes(index)
        folder.put(f"{INDEXES}{hashlib.sha256(index).hexdigest()}.json", staged)
        staged.unlink()
        logger.debug("W&B %s: sharing %d pack(s) with %s", collection, len(manifest.packs), source.root)
        return manifest
    return None


class ArtifactPackStore(BlobStore):
    """The packs of one logged W&B version, read-only: `get` downloads one file of the version.

    Args:
        artifact: the version (`wandb.Api().artifact(...)`).
        names: the files the version holds (its manifest's packs), for `list`.
    """

    def __init__(self, artifact: Any, names: list[str]):
        self.artifact = artifact
        self.names = sorted(names)

    @override
    def put(self, name: str, local_path: Path) -> None:
        raise TypeError("a logged W&B version cannot be changed")

    @override
    def get(self, name: str, local_path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=Path(local_path).parent, prefix=".wandb-") as tmp:
            self.artifact.download(root=tmp, path_prefix=name, skip_cache=True)
            fetched = Path(tmp, *name.split("/"))
            if not fetched.is_file():
                raise BlobNotFoundError(f"W&B artifact {self.artifact.qualified_name} holds no {name}")
            os.replace(fetched, local_path)

    @override
    def list(self, prefix: str) -> list[str]:
        return [name for name in self.names if name.startswith(prefix)]

    @override
    def delete(self, name: str) -> None:
        raise TypeError("a logged W&B version cannot be changed")


class LocalFilesStore(BlobStore):
    """The files of a version still on this disk (an offline run's), by name, read-only."""

    def __init__(self, files: dict[str, str]):
        self.files = files

    @override
    def put(self, name: str, local_path: Path) -> None:
        raise TypeError("a logged W&B version cannot be changed")

    @override
    def get(self, name: str, local_path: Path) -> None:
        source = self.files.get(name)
        if source is None or not os.path.isfile(source):
            raise BlobNotFoundError(f"the offline run holds no {name} ({source or 'not logged'})")
        shutil.copyfile(source, local_path)

    @override
    def list(self, prefix: str) -> list[str]:
        return sorted(name for name in self.files if name.startswith(prefix))

    @override
    def delete(self, name: str) -> None:
        raise TypeError("a logged W&B version cannot be changed")


def restore_from_files(files: dict[str, str], label: str, directory: str) -> str:
    """Rebuild an incremental version's file from its files on this disk (an offline run's); return its path.

    Raises:
        ChunkStoreError: no readable manifest, or a pack missing or corrupt (one line).
    """
    manifest = _read_manifest(files.get(MANIFEST_FILE, ""), label, "load another checkpoint of the run")
    return _rebuild(manifest, LocalFilesStore(files), label, directory, None)


def fetch_incremental(artifact: Any, label: str, directory: str, cache: PackCache | None = None) -> str:
    """Rebuild an incremental version's checkpoint file in `directory`; return its path.

    Downloads the version's manifest, then the packs the pack cache lacks (their chunks checked);
    the file is verified against its sha256 (`pack_reader.restore_file`).

    Raises:
        ChunkStoreError: the version has no readable manifest, or a pack is missing or corrupt
            (one line naming the checkpoint and what to do).
    """
    with tempfile.TemporaryDirectory(dir=directory, prefix=".manifest-") as tmp:
        artifact.download(root=tmp, path_prefix=MANIFEST_FILE, skip_cache=True)
        manifest = _read_manifest(os.path.join(tmp, MANIFEST_FILE), label, "load another version of this checkpoint")
    store = ArtifactPackStore(artifact, [PACKS + pack for pack in manifest.packs])
    return _rebuild(manifest, store, label, directory, cache)


def _read_manifest(path: str, label: str, instead: str) -> Manifest:
    """The manifest at `path`, or a one-line ChunkStoreError naming `label` and what to do `instead`."""
    try:
        return Manifest.from_json(json.loads(Path(path).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ChunkStoreError(
            f"{label} cannot be rebuilt: its {MANIFEST_FILE} is missing or unreadable ({exc}); {instead}"
        ) from None


def _rebuild(manifest: Manifest, store: BlobStore, label: str, directory: str, cache: PackCache | None) -> str:
    """The file `manifest` describes, rebuilt and verified in `directory` (`pack_reader.restore_file`)."""
    from tracked_ckpt.pack_reader import restore_file  # the reader only: no chunker needed

    destination = Path(directory, safe_file_name(manifest.name))
    return os.fspath(restore_file(manifest, store, cache or default_pack_cache(), destination, label=label))
