"""A content-addressed chunk store on any `BlobStore`: each checkpoint costs the chunks it changed.

`store_file` cuts a file into content-defined chunks (`tracked_ckpt.chunking`), uploads the chunks
the store lacks packed into a few large pack files, and returns a `Manifest`: the file's chunks in
order, where each one lives, and the file's size and sha256. The tracker keeps the manifest in
place of the file. `restore_file` rebuilds the byte-identical file from a manifest, downloading
only the packs a local `PackCache` lacks, and verifies every chunk and the whole file.

Layout in the store (restic's and git's packfiles are the model):

    packs/<digest>          chunks' bytes, concatenated
    index/<sha256>.json     which chunks the packs of one `store_file` hold, and where
    condemned/<pack>@<t>    marked for collection at unix time t (`tracked_ckpt.packgc`)

A pack is named by the sha256 of its chunk table (each chunk's sha256 and length, in order): with
chunk digests that is a digest of its content (Merkle-style, as Hugging Face Xet names its
"xorbs"), computed without another pass over the bytes; salted when that name is condemned (see
`_PackWriter.seal`: names need only be unique, readers verify chunks). Packs and index files are
written once and never changed; the index only tells writers what the store holds (what a
listing of `packs/` confirms: an entry whose pack is not listed, or is condemned, is not used),
and readers need only the manifest and the packs it names.

Order of writes: packs, then their index, then (by the caller) the manifest. A writer killed
anywhere leaves at worst packs no manifest references, which `packgc.collect_garbage` removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tracked_ckpt.blobstore import BlobNotFoundError, BlobStore
from tracked_ckpt.chunking import ChunkParams, ChunkRef, average_for_size, scan_file
from tracked_ckpt.tracker import ChecksumError

logger = logging.getLogger("tracked_ckpt")

FORMAT_VERSION = 1
PACKS = "packs/"
INDEXES = "index/"
CONDEMNED = "condemned/"
# A checkpoint whose bytes all changed costs about one request per 128 MiB; a pack is staged on
# local disk, so this is also the most disk a write needs beyond the cache.
DEFAULT_PACK_SIZE = 128 * 1024 * 1024
DEFAULT_CACHE_BYTES = 4 * 1024 * 1024 * 1024
_MANIFEST_FORMAT = "tracked-ckpt.manifest"
_INDEX_FORMAT = "tracked-ckpt.pack-index"


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def _digest(text: str) -> str:
    """`text` if it is a sha256 in hex (as every pack, chunk and index name is), else ValueError."""
    if not _HEX_DIGEST.fullmatch(text):
        raise ValueError(f"not a sha256 digest: {text!r}")
    return text


class ChunkStoreError(ChecksumError):
    """A checkpoint cannot be rebuilt from its chunks: a pack is missing or a chunk is corrupt."""


@dataclasses.dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk's bytes are: `length` bytes at `offset` in pack `pack`."""

    digest: str
    length: int
    pack: str
    offset: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A file as the chunk store holds it (versioned JSON, see `to_json`).

    Attributes:
        name: the file's name (e.g. `model.keras`), for messages.
        size: its size in bytes.
        sha256: its sha256 (hex).
        params: how it was cut (the next version is cut the same way).
        chunks: its chunks in order.
    """

    name: str
    size: int
    sha256: str
    params: ChunkParams
    chunks: tuple[ChunkLocation, ...]

    @property
    def packs(self) -> tuple[str, ...]:
        """The packs the file needs, in the order its chunks first use them."""
        return tuple(dict.fromkeys(chunk.pack for chunk in self.chunks))

    def to_json(self) -> dict[str, Any]:
        """The JSON form; each chunk is `[sha256, length, pack number in "packs", offset]`."""
        packs = self.packs
        number = {pack: i for i, pack in enumerate(packs)}
        return {
            "format": _MANIFEST_FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "chunking": self.params.to_json(),
            "packs": list(packs),
            "chunks": [[c.digest, c.length, number[c.pack], c.offset] for c in self.chunks],
        }

    def to_bytes(self) -> bytes:
        """The JSON form as compact UTF-8 bytes."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Read `to_json`'s form back; anything else raises ValueError naming what is wrong."""
        if data.get("format") != _MANIFEST_FORMAT:
            raise ValueError("not a tracked-ckpt chunk manifest")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"chunk manifest version {data.get('version')} is not supported by this tracked-ckpt "
                f"(it reads version {FORMAT_VERSION}): upgrade tracked-ckpt"
            )
        packs = [_digest(pack) for pack in data["packs"]]
        chunks = tuple(ChunkLocation(_digest(d), int(n), packs[p], int(o)) for d, n, p, o in data["chunks"])
        manifest = cls(
            str(data["name"]), int(data["size"]), str(data["sha256"]), ChunkParams.from_json(data["chunking"]), chunks
        )
        if sum(chunk.length for chunk in chunks) != manifest.size:
            raise ValueError(f"chunk manifest of {manifest.name} is inconsistent: its chunks do not add up to its size")
        return manifest

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Read `to_bytes`'s form back."""
        return cls.from_json(json.loads(data))


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


def condemned_marker(pack: str, when: float) -> str:
    """The name of the mark `packgc` puts on an unreferenced pack at unix time `when`."""
    return f"{CONDEMNED}{pack}@{int(when)}"


def parse_condemned(name: str) -> tuple[str, int] | None:
    """The pack and time a condemned marker names, or None if `name` is not one."""
    pack, at, when = name.removeprefix(CONDEMNED).rpartition("@")
    return (pack, int(when)) if at and when.isdigit() else None


def _index_bytes(packs: Mapping[str, Sequence[ChunkLocation]]) -> bytes:
    table = {pack: [[c.digest, c.offset, c.length] for c in chunks] for pack, chunks in packs.items()}
    return json.dumps(
        {"format": _INDEX_FORMAT, "version": FORMAT_VERSION, "packs": table}, separators=(",", ":")
    ).encode()


def _parse_index(data: bytes) -> list[ChunkLocation]:
    parsed = json.loads(data)
    if parsed.get("format") != _INDEX_FORMAT or parsed.get("version") != FORMAT_VERSION:
        raise ValueError("not a pack index this tracked-ckpt reads")
    table = parsed["packs"]
    return [ChunkLocation(_digest(d), int(n), _digest(p), int(o)) for p, rows in table.items() for d, o, n in rows]


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
        for folder in (self._packs, self._indexes, self._staging):
            folder.mkdir(parents=True, exist_ok=True)
        self._parsed: dict[str, list[ChunkLocation]] = {}

    def staging_file(self) -> Path:
        """A new empty file in the cache's folder, to be `adopt`ed or removed."""
        handle, path = tempfile.mkstemp(dir=self._staging, prefix="pack-")
        os.close(handle)
        return Path(path)

    def adopt(self, pack: str, staged: Path) -> None:
        """Move a staged file holding pack `pack` into the cache."""
        os.replace(staged, self._packs / _digest(pack))

    def has(self, pack: str) -> bool:
        """Whether the cache holds `pack`."""
        return (self._packs / _digest(pack)).exists()

    def discard(self, pack: str) -> None:
        """Drop `pack` from the cache (one of its chunks failed its digest)."""
        (self._packs / _digest(pack)).unlink(missing_ok=True)

    def open_pack(self, store: BlobStore, pack: str) -> tuple[IO[bytes], bool]:
        """Open `pack` from the cache, downloading it first if the cache lacks it.

        Returns:
            the open file and whether it was downloaded by this call.

        Raises:
            BlobNotFoundError: the store has no such pack.
        """
        path = self._packs / _digest(pack)
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
        digest = _digest(name.removeprefix(INDEXES).removesuffix(".json"))
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
        self._parsed[name] = _parse_index(cached.read_bytes())
        return self._parsed[name], downloaded

    def trim(self) -> None:
        """Evict the least recently used packs until the cache holds at most `max_bytes`."""
        entries = []
        for path in self._packs.iterdir():
            with contextlib.suppress(FileNotFoundError):  # another process evicted it meanwhile
                status = path.stat()
                entries.append((status.st_mtime, status.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


@dataclasses.dataclass
class _StoreView:
    """What a store holds, as its listing confirms: usable chunks, condemned packs, requests made."""

    held: dict[str, ChunkLocation]
    condemned: set[str]
    requests: int


def _list_store(store: BlobStore, cache: PackCache) -> _StoreView:
    """The chunks the store holds, confirmed by listing it (an index alone proves nothing)."""
    indexes = store.list(INDEXES)  # before the packs: a listed index's packs were put before it
    packs = {name.removeprefix(PACKS) for name in store.list(PACKS)}
    condemned = {marked[0] for marked in map(parse_condemned, store.list(CONDEMNED)) if marked}
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
    return _StoreView(held, condemned, requests)


class _PackWriter:
    """Packs new chunks into staged files of about `target` bytes and uploads each when full."""

    def __init__(self, store: BlobStore, cache: PackCache, target: int, condemned: set[str]):
        self.store, self.cache, self.target, self.condemned = store, cache, target, condemned
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
            self._file = open(self._path, "wb")  # noqa: SIM115 (closed by seal)
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
        pack = table.hexdigest()
        if pack in self.condemned:
            # Same chunks as a pack the collector may be deleting right now: a fresh name, so the
            # collector's grace runs from this upload (a pack's name need only be unique).
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


def store_file(
    path: str | os.PathLike[str],
    store: BlobStore,
    cache: PackCache,
    *,
    name: str | None = None,
    previous: Manifest | None = None,
    pack_size: int = DEFAULT_PACK_SIZE,
) -> StoredFile:
    """Put a file in the chunk store: upload the chunks the store lacks, return its manifest.

    What the store holds is read from its listing (and its index files, cached in `cache`), never
    assumed: a chunk whose pack is gone or condemned is uploaded again. The file is read once.

    Args:
        path: the file; it must not change while it is stored.
        store: the destination.
        cache: the local cache; packs uploaded here are kept in it for later restores.
        name: the file's name in the manifest (default: `path`'s).
        previous: the manifest of the previous version of this file, if any: the file is cut the
            same way when its size allows, so the two share their unchanged chunks.
        pack_size: upload packs of about this many bytes.

    Returns:
        the manifest (the caller must keep it: until it does, the new packs are garbage that
        `packgc.collect_garbage` may remove after its grace period) and what the write cost.
    """
    view = _list_store(store, cache)
    held, requests = view.held, view.requests
    size = os.path.getsize(path)
    params = ChunkParams(average_for_size(size, previous.params.average if previous is not None else None))
    writer = _PackWriter(store, cache, pack_size, view.condemned)
    # Chunks are located as they are read; a chunk in the open pack is located when it is sealed.
    order: list[ChunkRef] = []

    def on_chunk(chunk: ChunkRef, data: memoryview) -> None:
        order.append(chunk)
        if chunk.digest not in held and chunk.digest not in writer.pending:
            writer.add(chunk, data)
            if writer.full:
                held.update(writer.seal())

    try:
        scanned = scan_file(path, params, on_chunk)
        held.update(writer.seal())
    except BaseException:
        writer.abandon()
        raise
    requests += len(writer.sealed)
    if writer.sealed:
        staged = cache.staging_file()
        try:
            data = _index_bytes(writer.sealed)
            staged.write_bytes(data)
            store.put(f"{INDEXES}{hashlib.sha256(data).hexdigest()}.json", staged)
            requests += 1
        finally:
            staged.unlink(missing_ok=True)
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


def _read_chunk(handle: IO[bytes], chunk: ChunkLocation) -> bytes | None:
    """The chunk's bytes, or None if they do not match its digest."""
    handle.seek(chunk.offset)
    data = handle.read(chunk.length)
    return data if len(data) == chunk.length and hashlib.sha256(data).hexdigest() == chunk.digest else None


def restore_file(
    manifest: Manifest,
    store: BlobStore,
    cache: PackCache,
    destination: str | os.PathLike[str],
    *,
    label: str | None = None,
) -> Path:
    """Rebuild the file a manifest describes, byte for byte, at `destination`.

    Packs the cache lacks are downloaded; every chunk is checked against its digest and the whole
    file against its sha256 before `destination` appears (it is written beside, then renamed). A
    chunk that fails in a cached pack drops that pack and downloads it again once.

    Args:
        manifest: the file's manifest.
        store: the store holding its packs.
        cache: the local cache of packs (trimmed to its bound afterwards).
        destination: where to write the file.
        label: names the checkpoint in errors (default: the manifest's file name).

    Raises:
        ChunkStoreError: a pack is missing from the store or a chunk is corrupt there; the
            message is one line naming the checkpoint and what to do.
    """
    what = label or manifest.name
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    opened: dict[str, tuple[IO[bytes], bool]] = {}

    def pack_file(pack: str) -> tuple[IO[bytes], bool]:
        if pack not in opened:
            try:
                opened[pack] = cache.open_pack(store, pack)
            except BlobNotFoundError:
                raise ChunkStoreError(
                    f"{what} cannot be rebuilt: pack {pack} is missing from the chunk store; "
                    "load another version of this checkpoint, or log it again from the original file"
                ) from None
        return opened[pack]

    try:
        whole = hashlib.sha256()
        with os.fdopen(handle, "wb") as out:
            for chunk in manifest.chunks:
                data = _read_chunk(pack_file(chunk.pack)[0], chunk)
                if data is None:
                    source, downloaded = opened.pop(chunk.pack)
                    source.close()
                    cache.discard(chunk.pack)
                    if not downloaded:  # the cached copy went bad: fetch the store's
                        logger.warning("chunk store: cached pack %s is corrupt; downloading it again", chunk.pack)
                        data = _read_chunk(pack_file(chunk.pack)[0], chunk)
                    if data is None:
                        cache.discard(chunk.pack)
                        raise ChunkStoreError(
                            f"{what} cannot be rebuilt: chunk {chunk.digest} in pack {chunk.pack} of the chunk "
                            "store is corrupt; load another version of this checkpoint, or log it again"
                        )
                whole.update(data)
                out.write(data)
        if whole.hexdigest() != manifest.sha256:
            raise ChunkStoreError(
                f"{what} cannot be rebuilt: its chunks do not add up to the recorded sha256 (the manifest is "
                "inconsistent); load another version of this checkpoint, or log it again"
            )
        os.replace(temporary, destination)
    finally:
        for source, _ in opened.values():
            source.close()
        Path(temporary).unlink(missing_ok=True)
        cache.trim()
    return destination
