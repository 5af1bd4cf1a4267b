"""The local side of the chunk store: a bounded cache of packs, index files and final manifests (`PackCache`).

Both `pack_writer` (packs it uploads, index files it reads) and `pack_reader` (packs it downloads)
go through it; `default_pack_cache` is the one every tracker uses (see `tracked_ckpt.packs`).

Every pack enters the cache verified once: the writer's from bytes checked against the chunks'
digests as it packed them (hashed then, or matched to the publisher's scan, `pack_writer`), a
downloaded one by checking, before it is adopted, each chunk the downloading reader needs against
its digest (`open_pack`). The pack was just written, so this reads it from the page cache and
costs one sha256 pass over the downloaded bytes, the pass the reader used to make chunk by chunk
while rebuilding: a cold load is no slower (`download_checkpoint` of 1 GB from MLflow's embedded
store: 3.0 s against 4.3 s before), and the cache never holds a pack no one checked. A pack is
named by its chunk table (and a salt), not its bytes, and a manifest lists only the chunks it
uses, so chunks of a pack no reader has asked for yet are not checked on the way in; what keeps
a bad byte from being served is the reader's check of the whole file (`pack_reader`), which also
catches a cached pack damaged since.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tracked_ckpt import settings
from tracked_ckpt.blobstore import BlobStore
from tracked_ckpt.packs import INDEXES, PACKS, ChunkLocation, checked_digest, index_from_bytes

DEFAULT_CACHE_BYTES = 4 * 1024 * 1024 * 1024
BLOCK_BYTES = 8 * 1024 * 1024  # what a reader of packs reads at a time


def read_into(source: io.FileIO, view: memoryview) -> int:
    """Fill `view` from `source`'s position; return how many bytes were read (fewer at its end)."""
    done = 0
    while done < len(view):
        count = source.readinto(view[done:])
        if not count:
            break
        done += count
    return done


def first_bad_chunk(source: io.FileIO, chunks: Iterable[ChunkLocation]) -> ChunkLocation | None:
    """The first of `chunks` (all in the pack `source`) whose bytes do not match its digest, or None."""
    buffer = memoryview(bytearray(BLOCK_BYTES))
    for chunk in sorted(set(chunks), key=lambda chunk: chunk.offset):
        digest = hashlib.sha256()
        source.seek(chunk.offset)
        left = chunk.length
        while left:
            count = read_into(source, buffer[: min(left, BLOCK_BYTES)])
            if not count:  # the pack ends inside the chunk
                return chunk
            digest.update(buffer[:count])
            left -= count
        if digest.hexdigest() != chunk.digest:
            return chunk
    return None


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

    def open_pack(self, store: BlobStore, pack: str, chunks: Iterable[ChunkLocation] = ()) -> tuple[io.FileIO, bool]:
        """Open `pack` (unbuffered) from the cache, downloading it first if the cache lacks it.

        A downloaded pack is adopted only once each of `chunks` (the chunks of it the caller
        needs) matches its digest.

        Returns:
            the open file and whether it was downloaded by this call.

        Raises:
            BlobNotFoundError: the store has no such pack.
            ValueError: a chunk of `chunks` does not match its digest in the downloaded pack (the
                message names it: "chunk ... in pack ... of the chunk store is corrupt").
        """
        path = self._packs / checked_digest(pack)
        with contextlib.suppress(FileNotFoundError):
            handle = open(path, "rb", buffering=0)  # noqa: SIM115 (the caller closes it)
            with contextlib.suppress(FileNotFoundError):  # evicted by another process: the open file still reads
                os.utime(path)  # most recently used
            return handle, False
        staged = self.staging_file()
        try:
            store.get(PACKS + pack, staged)
            handle = open(staged, "rb", buffering=0)  # noqa: SIM115 (the caller closes it; it follows the rename)
            try:
                bad = first_bad_chunk(handle, chunks)
                if bad is not None:
                    raise ValueError(f"chunk {bad.digest} in pack {pack} of the chunk store is corrupt")
                self.adopt(pack, staged)
            except BaseException:
                handle.close()
                raise
        finally:
            staged.unlink(missing_ok=True)
        return handle, True

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
        path = self._manifests / _file_name(key)
        with contextlib.suppress(FileNotFoundError):
            data = path.read_bytes()
            with contextlib.suppress(OSError):
                os.utime(path)  # most recently used
            return data
        return None

    def forget_manifest(self, key: str) -> None:
        """Drop the manifest kept under `key` (it could not be read)."""
        (self._manifests / _file_name(key)).unlink(missing_ok=True)

    def keep_manifest(self, key: str, data: bytes) -> None:
        """Keep a manifest that can no longer change under `key` (e.g. a READY LoggedModel's id).

        `tracked-ckpt gc` reads every live manifest of a store each run: kept here, each is
        downloaded once. Evicted by `trim` with the packs, least recently used first. A cache that
        cannot be written only costs the download again next time.
        """
        try:
            staged = self.staging_file()
        except OSError:
            return
        try:
            staged.write_bytes(data)
            os.replace(staged, self._manifests / _file_name(key))
        except OSError:
            pass  # only a later download is lost
        finally:
            staged.unlink(missing_ok=True)

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
