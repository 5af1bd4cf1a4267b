"""The local side of the chunk store: a bounded cache of packs, index files and final manifests (`PackCache`).

Both `pack_writer` (packs it uploads, index files it reads) and `pack_reader` (packs it downloads)
go through it; `default_pack_cache` is the one every tracker uses (see `tracked_ckpt.packs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO

from tracked_ckpt import settings
from tracked_ckpt.blobstore import BlobStore
from tracked_ckpt.packs import INDEXES, PACKS, ChunkLocation, checked_digest, index_from_bytes

DEFAULT_CACHE_BYTES = 4 * 1024 * 1024 * 1024


class PackCache:
    """A bounded local cache of packs, and of the store's index files, in a folder.

    Packs are named by their content, so one cache serves every store. A pack is added whole (a
    temporary file, then a rename) and dropped as soon as one of its chunks fails its digest, so
    a bad chunk is never served twice. `trim` evicts the least recently used packs to `max_bytes`.
    """

    def __init__(self, root: str | os.PathLike[str], max_bytes: int = DEFAULT_CACHE_BYTES):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._packs = self.root / "packs"
        self._indexes = self.root / "index"
        self._staging = self.root / "staging"
        self._manifests = self.root / "manifests"
        for folder in (self._packs, self._indexes, self._staging, self._manifests):
            folder.mkdir(parents=True, exist_ok=True)
        self._parsed: dict[str, list[ChunkLocation]] = {}

    def staging_file(self) -> Path:
        """A new empty file in the cache's folder, to be `adopt`ed or removed."""
        handle, path = tempfile.mkstemp(dir=self._staging, prefix="pack-")
        os.close(handle)
        return Path(path)

    def adopt(self, pack: str, staged: Path) -> None:
        """Move a staged file holding pack `pack` into the cache."""
        os.replace(staged, self._packs / checked_digest(pack))

    def adopt_index(self, name: str, staged: Path) -> None:
        """Move a staged index file, just written to the store as `name`, into the cache.

        The writer then never downloads its own index files again.
        """
        os.replace(staged, self._indexes / checked_digest(name.removeprefix(INDEXES).removesuffix(".json")))

    def has(self, pack: str) -> bool:
        """Whether the cache holds `pack`."""
        return (self._packs / checked_digest(pack)).exists()

    def discard(self, pack: str) -> None:
        """Drop `pack` from the cache (one of its chunks failed its digest)."""
        (self._packs / checked_digest(pack)).unlink(missing_ok=True)

    def open_pack(self, store: BlobStore, pack: str) -> tuple[IO[bytes], bool]:
        """Open `pack` from the cache, downloading it first if the cache lacks it.

        Returns:
            the open file and whether it was downloaded by this call.

        Raises:
            BlobNotFoundError: the store has no such pack.
        """
        path = self._packs / checked_digest(pack)
        with contextlib.suppress(FileNotFoundError):
            handle = open(path, "rb")  # noqa: SIM115 (the caller closes it)
            with contextlib.suppress(FileNotFoundError):  # evicted by another process: the open file still reads
                os.utime(path)  # most recently used
            return handle, False
        staged = self.staging_file()
        try:
            store.get(PACKS + pack, staged)
            self.adopt(pack, staged)
        finally:
            staged.unlink(missing_ok=True)
        return open(path, "rb"), True

    def index(self, store: BlobStore, name: str) -> tuple[list[ChunkLocation], bool]:
        """The chunks index file `name` of `store` lists, from the cache or downloaded (and checked).

        Returns:
            the chunks, and whether the file was downloaded by this call.

        Raises:
            ValueError: the index file does not match its name's digest, or cannot be read.
        """
        if name in self._parsed:
            return self._parsed[name], False
        digest = checked_digest(name.removeprefix(INDEXES).removesuffix(".json"))
        cached = self._indexes / digest
        downloaded = not cached.exists()
        if downloaded:
            staged = self.staging_file()
            try:
                store.get(name, staged)
                if hashlib.sha256(staged.read_bytes()).hexdigest() != digest:
                    raise ValueError(f"index file {name} does not match its digest")
                os.replace(staged, cached)
            finally:
                staged.unlink(missing_ok=True)
        self._parsed[name] = index_from_bytes(cached.read_bytes())
        return self._parsed[name], downloaded

    def manifest(self, key: str) -> bytes | None:
        """The manifest kept under `key` by `keep_manifest`, or None."""
        with contextlib.suppress(FileNotFoundError):
            return (self._manifests / _file_name(key)).read_bytes()
        return None

    def keep_manifest(self, key: str, data: bytes) -> None:
        """Keep a manifest that can no longer change under `key` (e.g. a READY LoggedModel's id).

        `tracked-ckpt gc` reads every live manifest of a store each run: kept here, each is
        downloaded once. Evicted by `trim` with the packs, least recently used first.
        """
        staged = self.staging_file()
        staged.write_bytes(data)
        os.replace(staged, self._manifests / _file_name(key))

    def trim(self) -> None:
        """Evict the least recently used packs and manifests until the cache holds at most `max_bytes`."""
        entries = []
        for path in (*self._packs.iterdir(), *self._manifests.iterdir()):
            with contextlib.suppress(FileNotFoundError):  # another process evicted it meanwhile
                status = path.stat()
                entries.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


def _file_name(key: str) -> str:
    """A file name for any key: its sha256."""
    return hashlib.sha256(key.encode()).hexdigest()


def default_pack_cache() -> PackCache:
    """The pack cache of this machine: `chunks/` in the download cache folder (`TRACKED_CKPT_CACHE`).

    Packs are named by their content, so writers and readers of every store share it: a pack
    uploaded here is never downloaded again while the cache keeps it.
    """
    return PackCache(os.path.join(settings.cache_dir(), "chunks"))
