"""Content-defined chunking: one read of a file yields its chunks, their sha256 and the file's sha256.

Chunk boundaries come from FastCDC 2020 (`pyfastcdc`, Cython, ~2 GB/s here): a boundary depends
only on the bytes just before it, so an edit moves the boundaries near it and no others, and the
unchanged variables of a checkpoint give the same chunks whatever moved before them (a longer
`config.json` in a `.keras` zip shifts every offset; fixed-size blocks would all change).

The pass computes the whole file's sha256 (for the record) and each chunk's sha256 (its name in
the store). A chunk seen before in this process (the frozen part of the previous checkpoint) is
recognised by its XXH3-128 hash and length (~30 GB/s), seeded at random per process, and gets the
sha256 computed when it was first seen, so a mostly unchanged file costs one sha256 pass
(~1.3 GB/s with SHA-NI) plus the cutting (~2 GB/s), not two. This trusts a 128-bit hash with a
secret seed not to collide between two chunks of one process's checkpoints (odds ~n²/2^129:
10^-27 for a million chunks; the seed keeps a file from being crafted to collide). A collision
would name a chunk by another's digest: the rebuilt file would fail its whole-file sha256 when
loaded, never load wrong. Without the `xxhash` package every chunk is hashed with sha256.

`RECENT_SCANS` remembers the last few files scanned in this process by their identity (device,
inode, size, mtime): the publisher scans an incremental checkpoint's frozen file once, for the
record's sha256, and each tracker's chunk store then reads only the chunks it lacks
(`pack_writer.store_file`), instead of a pass of its own.

`pyfastcdc` comes with the optional extra `tracked-ckpt[incremental]` and is imported by the first
cut, here only: everything else (reading manifests, restoring files, collecting garbage) works
without it.

The average chunk size grows with the file (`average_for_size`): each version of a checkpoint
costs its changed chunks plus a manifest line per chunk, and smaller chunks shrink the first and
grow the second. Measured on frozen-base models (two epochs apart, bytes new + manifest):
EfficientNetB0 17 MB: 16–32 KiB best (230 KB; 64 KiB 301 KB, 1 MiB 4.2 MB); a 145 MB frozen Dense:
64 KiB best (1.0 MB; 16 KiB 1.5 MB, 1 MiB 1.9 MB). The optimum of `size/avg * line + changes * avg`
is `avg ~ sqrt(size)`, which `sqrt(30 * size)` fits for both (256 KiB for 1.5 GB).
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from tracked_ckpt.files import FileIdentity

if TYPE_CHECKING:
    from pyfastcdc import FastCDC

ALGORITHM = "fastcdc2020"
MIN_AVERAGE = 16 * 1024
MAX_AVERAGE = 1024 * 1024
_SIZE_FACTOR = 30  # avg ~ sqrt(30 * size): calibrated on the measurements in the module docstring


@dataclasses.dataclass(frozen=True)
class ChunkParams:
    """How a file was cut: recorded in its manifest so that the next version is cut the same way.

    Attributes:
        average: FastCDC's target average (`avg_size`); chunks are between a quarter and four times it.
    """

    average: int

    @property
    def min_size(self) -> int:
        """The smallest chunk FastCDC makes (except the last)."""
        return self.average // 4

    @property
    def max_size(self) -> int:
        """The largest chunk FastCDC makes."""
        return self.average * 4

    def to_json(self) -> dict[str, Any]:
        """The JSON form: every parameter explicit, so a later default of the library cannot change a cut."""
        return {"algorithm": ALGORITHM, "avg_size": self.average, "min_size": self.min_size, "max_size": self.max_size}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ChunkParams:
        """Read `to_json`'s form back; another algorithm or other bounds raise ValueError."""
        params = cls(int(data["avg_size"]))
        if data.get("algorithm") != ALGORITHM or params.to_json() != dict(data):
            raise ValueError(f"unsupported chunking {dict(data)}: this version of tracked-ckpt cuts with {ALGORITHM}")
        return params


def average_for_size(size: int, previous: int | None = None) -> int:
    """The average chunk size for a file of `size` bytes: a power of two near `sqrt(30 * size)`.

    `previous` is the average the previous version of the same file was cut with: it is kept while
    it is within a factor of two of the ideal, so a file whose size hovers at a class boundary is not
    cut two ways in turn (which would share nothing).

    Example:
        >>> [average_for_size(n) // 1024 for n in (10**6, 17 * 10**6, 145 * 10**6, 1500 * 10**6, 10**11)]
        [16, 16, 64, 256, 1024]
        >>> average_for_size(17 * 10**6, previous=32 * 1024) // 1024
        32
    """
    ideal = 1 << round(math.log2(math.sqrt(_SIZE_FACTOR * max(size, 1))))
    ideal = min(max(ideal, MIN_AVERAGE), MAX_AVERAGE)
    if previous is not None and MIN_AVERAGE <= previous <= MAX_AVERAGE and ideal / 2 <= previous <= ideal * 2:
        return previous
    return ideal


def _fastcdc(params: ChunkParams) -> FastCDC:
    """A FastCDC cutter for `params`; without `pyfastcdc`, an ImportError saying which extra has it."""
    try:
        from pyfastcdc import FastCDC
    except ImportError:
        raise ImportError(
            "Chunking checkpoints needs the 'pyfastcdc' package, which is not installed: "
            "pip install 'tracked-ckpt[incremental]'."
        ) from None
    return FastCDC(params.average, min_size=params.min_size, max_size=params.max_size)


@dataclasses.dataclass(frozen=True)
class ChunkRef:
    """One chunk of a file: its sha256 (hex) and length."""

    digest: str
    length: int


@dataclasses.dataclass(frozen=True)
class ScannedFile:
    """What one pass over a file found.

    Attributes:
        size: the file's size in bytes.
        sha256: the whole file's sha256 (hex).
        params: how it was cut.
        chunks: its chunks in order; their lengths add up to `size`.
        identity: the file's `FileIdentity` when it was read (None for a file changed while read).
        fingerprints: each chunk's seeded XXH3-128, in order (None each without `xxhash`), so a
            later read of a chunk can be checked against the scan at a fraction of a sha256's cost.
    """

    size: int
    sha256: str
    params: ChunkParams
    chunks: tuple[ChunkRef, ...]
    identity: FileIdentity | None = None
    fingerprints: tuple[bytes | None, ...] = ()

    def offsets(self) -> list[int]:
        """Where each chunk starts in the file, in order."""
        starts, at = [], 0
        for chunk in self.chunks:
            starts.append(at)
            at += chunk.length
        return starts


def _fast_hash() -> Callable[[bytes | memoryview], bytes] | None:
    """XXH3-128 with a seed of this process's (`xxhash`: the `incremental` extra, and wandb, name
    it), or None where missing. Seeded, so that no file can be crafted to collide in it."""
    try:
        from xxhash import xxh3_128_digest
    except ImportError:  # every chunk is then hashed with sha256
        return None
    seed = int.from_bytes(os.urandom(8), "little")
    return lambda data: xxh3_128_digest(data, seed)


class _ChunkDigests:
    """sha256 of chunks already hashed in this process, by (XXH3-128, length); bounded, LRU."""

    def __init__(self, capacity: int = 1 << 16):
        self.capacity = capacity  # 65536 chunks: a 16 GB file at 256 KiB, ~15 MB of memory
        self._known: collections.OrderedDict[tuple[bytes, int], str] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._fast_hash = _fast_hash()

    def fingerprint(self, data: bytes | memoryview) -> bytes | None:
        """The seeded XXH3-128 of `data` (None without `xxhash`): what `digest` knows chunks by."""
        return None if self._fast_hash is None else self._fast_hash(data)

    def digest(self, data: memoryview) -> tuple[str, bytes | None]:
        """The sha256 (hex) of `data`, computed only for bytes not seen before, and its fingerprint."""
        fingerprint = self.fingerprint(data)
        if fingerprint is None:
            return hashlib.sha256(data).hexdigest(), None
        key = (fingerprint, len(data))
        with self._lock:
            known = self._known.get(key)
            if known is not None:
                self._known.move_to_end(key)
                return known, fingerprint
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            self._known[key] = digest
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
        return digest, fingerprint


def chunk_matches(chunk: ChunkRef, data: bytes | memoryview, fingerprint: bytes | None) -> bool:
    """Whether `data` are the bytes `chunk` was scanned with: by their fingerprint when the scan kept
    one (~30 GB/s), else by their sha256."""
    if len(data) != chunk.length:
        return False
    if fingerprint is not None:
        return _CHUNK_DIGESTS.fingerprint(data) == fingerprint
    return hashlib.sha256(data).hexdigest() == chunk.digest


_CHUNK_DIGESTS = _ChunkDigests()


class RecentScans:
    """The last files scanned in this process, so that one file is read once however many stores take it.

    A scan is recalled only for the same file, unchanged (`FileIdentity`), cut the same way.
    """

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._scans: collections.OrderedDict[str, ScannedFile] = collections.OrderedDict()
        self._lock = threading.Lock()

    def remember(self, path: str | os.PathLike[str], scanned: ScannedFile) -> None:
        """Keep `scanned` as the scan of `path` (a scan whose file changed meanwhile is not kept)."""
        if scanned.identity is None:
            return
        with self._lock:
            self._scans[os.path.abspath(path)] = scanned
            self._scans.move_to_end(os.path.abspath(path))
            while len(self._scans) > self.capacity:
                self._scans.popitem(last=False)

    def recall(self, path: str | os.PathLike[str], params: ChunkParams) -> ScannedFile | None:
        """The remembered scan of `path` cut with `params`, if the file is still what was scanned."""
        with self._lock:
            scanned = self._scans.get(os.path.abspath(path))
        if scanned is None or scanned.params != params:
            return None
        try:
            return scanned if FileIdentity.of(path) == scanned.identity else None
        except OSError:
            return None


#: The scans of this process (the publisher's, recalled by the chunk stores its trackers write).
RECENT_SCANS = RecentScans()


def scan_file(
    path: str | os.PathLike[str],
    params: ChunkParams | None = None,
    on_chunk: Callable[[ChunkRef, memoryview], None] | None = None,
) -> ScannedFile:
    """Cut `path` into content-defined chunks and hash each chunk and the whole file, in one read.

    Args:
        path: the file; it must not change while it is read.
        params: how to cut it; default: `average_for_size` of its size.
        on_chunk: called with each chunk and its bytes, in order; the bytes are valid only during
            the call (copy what you keep).

    Returns:
        the chunks and the file's sha256; also kept in `RECENT_SCANS`.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as f:
        ...     _ = f.write(bytes(range(256)) * 4096)
        ...     f.flush()
        ...     scanned = scan_file(f.name)
        >>> scanned.size == sum(chunk.length for chunk in scanned.chunks) == 1048576
        True
    """
    if params is None:
        params = ChunkParams(average_for_size(os.path.getsize(path)))
    cutter = _fastcdc(params)
    whole = hashlib.sha256()
    chunks: list[ChunkRef] = []
    fingerprints: list[bytes | None] = []
    size = 0
    # A stream, not `cut_file`'s mmap: the read buffer stays bounded however large the checkpoint.
    with open(path, "rb", buffering=0) as stream:
        before = FileIdentity.of(stream.fileno())
        for piece in cutter.cut_stream(stream):
            data = piece.data
            whole.update(data)
            digest, fingerprint = _CHUNK_DIGESTS.digest(data)
            ref = ChunkRef(digest, piece.length)
            chunks.append(ref)
            fingerprints.append(fingerprint)
            size += piece.length
            if on_chunk is not None:
                on_chunk(ref, data)
        unchanged = FileIdentity.of(stream.fileno()) == before and before.size == size
    scanned = ScannedFile(
        size, whole.hexdigest(), params, tuple(chunks), before if unchanged else None, tuple(fingerprints)
    )
    RECENT_SCANS.remember(path, scanned)
    return scanned
