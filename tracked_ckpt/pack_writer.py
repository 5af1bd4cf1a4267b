"""Writing to the chunk store: `store_file` uploads the chunks of a file the store lacks, in packs.

What the store holds is read from its listing and index files (never assumed; a fit reuses one
listing for a minute, `StoreListing`), new chunks are packed into staged files of about
`DEFAULT_PACK_SIZE` and uploaded, then one index file lists them; the caller keeps the returned
`Manifest`. See `tracked_ckpt.packs` for the layout and the guarantees; MLflow's incremental
checkpoints are written through it (`integrations/mlflow_chunks`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from tracked_ckpt.blobstore import BlobNotFoundError, BlobStore
from tracked_ckpt.chunking import (
    RECENT_SCANS,
    ChunkParams,
    ChunkRef,
    ScannedFile,
    average_for_size,
    chunk_matches,
    scan_file,
)
from tracked_ckpt.errors import ChecksumError
from tracked_ckpt.pack_cache import PackCache, read_into
from tracked_ckpt.packs import CONDEMNED, INDEXES, PACKS, ChunkLocation, Manifest, index_to_bytes, parse_condemned

logger = logging.getLogger("tracked_ckpt")

# A checkpoint whose bytes all changed costs about one request per 128 MiB; a pack is staged on
# local disk, so this is also the most disk a write needs beyond the cache.
DEFAULT_PACK_SIZE = 128 * 1024 * 1024


def _size(n: int) -> str:
    """A size for people, in decimal units like the issue's `2.4 MB new of 1.5 GB`."""
    if n < 1000:
        return f"{n} B"
    value, unit = n / 1000, "KB"
    for bigger in ("MB", "GB"):
        if value < 1000:
            break
        value, unit = value / 1000, bigger
    return f"{value:.1f} {unit}"


@dataclasses.dataclass(frozen=True)
class StoredFile:
    """What `store_file` did.

    Attributes:
        manifest: the file's manifest, for the caller to keep (it makes the file's packs live).
        new_bytes: the bytes of the chunks uploaded (the store lacked them).
        packs_uploaded: how many packs were uploaded.
        requests: how many store requests the write made (lists, gets, puts).
    """

    manifest: Manifest
    new_bytes: int
    packs_uploaded: int
    requests: int

    @property
    def total_bytes(self) -> int:
        """The file's size."""
        return self.manifest.size

    def describe(self) -> str:
        """One line for a version's description, e.g. `incremental: 2.4 MB new of 1.5 GB`.

        Example:
            >>> params = ChunkParams(16384)
            >>> manifest = Manifest("model.keras", 1_500_000_000, "0" * 64, params, ())
            >>> StoredFile(manifest, 2_400_000, 1, 5).describe()
            'incremental: 2.4 MB new of 1.5 GB'
        """
        return f"incremental: {_size(self.new_bytes)} new of {_size(self.total_bytes)}"


@dataclasses.dataclass
class _StoreView:
    """What a store holds, as its listing confirms: usable chunks, requests made."""

    held: dict[str, ChunkLocation]
    requests: int


def _list_store(store: BlobStore, cache: PackCache) -> _StoreView:
    """The chunks the store holds, confirmed by listing it (an index alone proves nothing)."""
    indexes = store.list(INDEXES)  # before the packs: a listed index's packs were put before it
    # The marks before the packs: a collection deletes a pack, then its mark. Listed the other way
    # round, a pack deleted between the two listings would look present and unmarked.
    condemned = {marked[0] for marked in map(parse_condemned, store.list(CONDEMNED)) if marked}
    packs = {name.removeprefix(PACKS) for name in store.list(PACKS)}
    usable = packs - condemned
    requests = 3
    held: dict[str, ChunkLocation] = {}
    for name in indexes:
        try:
            chunks, downloaded = cache.index(store, name)
            requests += downloaded
        except (ValueError, KeyError, TypeError, BlobNotFoundError) as exc:
            # Only dedup is lost: the chunks it lists are uploaded again.
            logger.warning("chunk store: ignoring index file %s: %s", name, exc)
            continue
        for chunk in chunks:
            if chunk.pack in usable:
                held.setdefault(chunk.digest, chunk)
    return _StoreView(held, requests)


class StoreListing:
    """What one chunk store held at its last listing, kept for the next writes of this process.

    Listing a store costs three requests (its packs, index files and condemned marks) per
    checkpoint; a fit writing every few seconds reuses one listing for `max_age` seconds, adding
    what it uploads itself. That keeps `packgc`'s guarantee, which asks each writer to make its
    manifest live within the collection's grace period (24 hours by default) of *listing* the
    store: a minute-old listing is still far inside it. What it can miss is another writer's new
    packs (dedup, not safety). A write that fails forgets the listing: the retry lists again.

    Args:
        max_age: seconds a listing is reused.
        clock: the time source (monotonic seconds).
    """

    def __init__(self, max_age: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.max_age, self._clock = max_age, clock
        self._held: dict[str, ChunkLocation] | None = None
        self._listed_at = 0.0
        self._lock = threading.Lock()

    def view(self, store: BlobStore, cache: PackCache) -> _StoreView:
        """The chunks the store holds: from the kept listing while it is fresh, else listed now."""
        with self._lock:
            if self._held is not None and self._clock() - self._listed_at < self.max_age:
                return _StoreView(dict(self._held), 0)
        listed_at = self._clock()
        view = _list_store(store, cache)
        with self._lock:
            self._held, self._listed_at = dict(view.held), listed_at
        return view

    def written(self, held: Mapping[str, ChunkLocation]) -> None:
        """A write succeeded: the store now also holds its chunks (the listing keeps its age)."""
        with self._lock:
            if self._held is not None:
                self._held.update(held)

    def forget(self) -> None:
        """A write failed: list again next time."""
        with self._lock:
            self._held = None


class _PackWriter:
    """Packs new chunks into staged files of about `target` bytes and uploads each when full."""

    def __init__(self, store: BlobStore, cache: PackCache, target: int):
        self.store, self.cache, self.target = store, cache, target
        self.sealed: dict[str, list[ChunkLocation]] = {}
        self.new_bytes = 0
        self._file: IO[bytes] | None = None
        self._path: Path | None = None
        self._chunks: list[ChunkRef] = []
        self._offset = 0
        # Chunks of the open pack, by digest: their pack is named when it is sealed.
        self.pending: dict[str, tuple[int, int]] = {}

    def add(self, chunk: ChunkRef, data: memoryview) -> None:
        if self._file is None:
            self._path = self.cache.staging_file()
            # "r+b", not "wb": the staged file exists, empty, and ext4 flushes a file truncated to
            # 0 when it is closed (~0.4 s of waiting per GB on the upload thread).
            self._file = open(self._path, "r+b")  # noqa: SIM115 (closed by seal)
        self._file.write(data)
        self.pending[chunk.digest] = (self._offset, chunk.length)
        self._chunks.append(chunk)
        self._offset += chunk.length
        self.new_bytes += chunk.length

    @property
    def full(self) -> bool:
        return self._offset >= self.target

    def seal(self) -> dict[str, ChunkLocation]:
        """Upload the open pack; returns where its chunks now are."""
        if self._file is None or self._path is None:
            return {}
        self._file.close()
        table = hashlib.sha256()
        for chunk in self._chunks:
            table.update(f"{chunk.digest} {chunk.length}\n".encode())
        # Salted, always: an upload never reuses the name of a pack a collector may be deleting (one
        # that is condemned, or was deleted after another collector read its marker), so whatever a
        # collection decided about a name never reaches bytes uploaded after it. A pack's name need
        # only be unique: readers verify chunks, and writers find chunks through the index files.
        table.update(f"salt {os.urandom(16).hex()}\n".encode())
        pack = table.hexdigest()
        try:
            self.store.put(PACKS + pack, self._path)
            self.cache.adopt(pack, self._path)  # a later restore on this machine downloads nothing
        finally:
            self._path.unlink(missing_ok=True)
        located = {digest: ChunkLocation(digest, n, pack, offset) for digest, (offset, n) in self.pending.items()}
        self.sealed[pack] = list(located.values())
        self._file, self._path, self._chunks, self._offset, self.pending = None, None, [], 0, {}
        return located

    def abandon(self) -> None:
        if self._file is not None and self._path is not None:
            self._file.close()
            self._path.unlink(missing_ok=True)


def _replay(
    path: str | os.PathLike[str],
    scanned: ScannedFile,
    on_chunk: Callable[[ChunkRef, memoryview], None],
    wanted: Callable[[ChunkRef], bool],
) -> None:
    """Call `on_chunk` for each chunk of an earlier scan of `path`, in order, reading only the `wanted` ones.

    A chunk not wanted is passed with no bytes. A wanted chunk's bytes are checked against the scan
    (its fingerprint, ~30 GB/s, or its sha256) before they are passed on: bytes that do not match
    their chunk's name never reach a store, whose later checkpoints would share them.

    Raises:
        ChecksumError: the file changed since it was scanned.
    """
    buffer = memoryview(bytearray(max((chunk.length for chunk in scanned.chunks), default=0)))
    fingerprints = scanned.fingerprints or (None,) * len(scanned.chunks)
    with open(path, "rb", buffering=0) as stream:
        for chunk, offset, fingerprint in zip(scanned.chunks, scanned.offsets(), fingerprints, strict=True):
            if not wanted(chunk):
                on_chunk(chunk, buffer[:0])
                continue
            stream.seek(offset)
            data = buffer[: read_into(stream, buffer[: chunk.length])]
            if not chunk_matches(chunk, data, fingerprint):
                raise ChecksumError(f"{path} changed since it was hashed: not logged.")
            on_chunk(chunk, data)


def store_file(
    path: str | os.PathLike[str],
    store: BlobStore,
    cache: PackCache,
    *,
    name: str | None = None,
    previous: Manifest | None = None,
    pack_size: int = DEFAULT_PACK_SIZE,
    expected_sha256: str | None = None,
    label: str | None = None,
    listing: StoreListing | None = None,
) -> StoredFile:
    """Put a file in the chunk store: upload the chunks the store lacks, return its manifest.

    What the store holds is read from its listing (and its index files, cached in `cache`), never
    assumed: a chunk whose pack is gone or condemned is uploaded again. The file is read once: cut
    and hashed here, or, if this process just scanned it (`chunking.RECENT_SCANS`, the publisher's
    pass), only its chunks the store lacks are read.

    Args:
        path: the file; it must not change while it is stored.
        store: the destination.
        cache: the local cache; packs uploaded here are kept in it for later restores.
        name: the file's name in the manifest (default: `path`'s).
        previous: the manifest of the previous version of this file, if any: the file is cut the
            same way when its size allows, so the two share their unchanged chunks.
        pack_size: upload packs of about this many bytes.
        expected_sha256: the sha256 the file had when it was saved (the record's), if known.
        label: names the checkpoint in errors (default: the file's path).
        listing: reuse this process's recent listing of `store` (`StoreListing`); default: list it now.

    Raises:
        ChecksumError: the file is not the one saved: its sha256 is not `expected_sha256`, or it
            changed while it was read. Nothing references the packs uploaded meanwhile (garbage).

    Returns:
        the manifest (the caller must keep it: until it does, the new packs are garbage that
        `packgc.collect_garbage` may remove after its grace period) and what the write cost.
    """
    view = listing.view(store, cache) if listing is not None else _list_store(store, cache)
    held, requests = view.held, view.requests
    size = os.path.getsize(path)
    params = ChunkParams(average_for_size(size, previous.params.average if previous is not None else None))
    writer = _PackWriter(store, cache, pack_size)
    # Chunks are located as they are read; a chunk in the open pack is located when it is sealed.
    order: list[ChunkRef] = []

    def on_chunk(chunk: ChunkRef, data: memoryview) -> None:
        order.append(chunk)
        if chunk.digest not in held and chunk.digest not in writer.pending:
            writer.add(chunk, data)
            if writer.full:
                held.update(writer.seal())

    try:
        scanned = RECENT_SCANS.recall(path, params)
        if scanned is None:
            scanned = scan_file(path, params, on_chunk)
        else:  # the publisher's pass cut and hashed it: read only the chunks the store lacks
            _replay(path, scanned, on_chunk, lambda chunk: chunk.digest not in held)
        held.update(writer.seal())
    except ChecksumError as exc:
        writer.abandon()
        raise ChecksumError(f"{label or path}: {exc}") from None
    except BaseException:
        writer.abandon()
        if listing is not None:
            listing.forget()
        raise
    if expected_sha256 is not None and scanned.sha256 != expected_sha256:
        raise ChecksumError(
            f"{label or path}: {path} no longer matches the sha256 recorded when it was saved "
            "(changed or corrupted on disk): not logged."
        )
    requests += len(writer.sealed)
    if writer.sealed:
        staged = cache.staging_file()
        try:
            data = index_to_bytes(writer.sealed)
            staged.write_bytes(data)
            index_name = f"{INDEXES}{hashlib.sha256(data).hexdigest()}.json"
            store.put(index_name, staged)
            requests += 1
            cache.adopt_index(index_name, staged)
        except BaseException:
            if listing is not None:
                listing.forget()
            raise
        finally:
            staged.unlink(missing_ok=True)
    if listing is not None:
        listing.written(held)
    cache.trim()
    manifest = Manifest(
        name or Path(path).name,
        scanned.size,
        scanned.sha256,
        scanned.params,
        tuple(held[chunk.digest] for chunk in order),
    )
    stored = StoredFile(manifest, writer.new_bytes, len(writer.sealed), requests)
    logger.debug(
        "chunk store: %s: %s, %d pack(s), %d request(s)",
        manifest.name,
        stored.describe(),
        stored.packs_uploaded,
        requests,
    )
    return stored
