"""Reading from the chunk store: `restore_file` rebuilds a file, byte for byte, from its `Manifest`.

Packs the local `PackCache` lacks are downloaded, and a bad chunk is never served from the
cache. Part of the chunk store of issue 25 (see `tracked_ckpt.packs`); the trackers' `fetch`
rebuilds incremental checkpoints with it.

What is verified where (sha256 runs at about 1.3 GB/s, so each pass over a 1.6 GB file costs
over a second):

* A downloaded pack: each chunk the manifest takes from it, once, before the cache adopts it
  (`PackCache.open_pack`); a bad one fails the restore and the pack is not kept.
* The rebuilt file: its sha256, computed as it is written, against the manifest's. This is the
  gate: `destination` appears only if it matches. Chunks are not hashed one by one on this
  path, so a second version whose packs are cached costs one hash pass and one copy; the
  download cache takes that hash (`files.note_written_sha256`) instead of making a pass of its
  own.
* Only if the whole file does not match are the chunks checked one by one: a cached pack with a
  bad chunk is dropped and downloaded again (and checked) once, and the file is rebuilt; if it
  still fails, a one-line `ChunkStoreError` names the checkpoint and what to do.

The copy reads each run of chunks that lie one after another in the same pack (a frozen model's
unchanged chunks do) in blocks into a few reusable buffers, and hashes each block on a thread
of its own while the next is read and written (hashlib releases the GIL): the wall time is about
the hash pass alone, not the hash pass plus the copy. Measured (`download_checkpoint` of the
version before the newest of a 1 GB frozen-base `.keras`, MLflow's embedded store, medians of 7
on a shared 2-core machine): 0.93 s wall, 1.55 CPU s, against 3.05 s before (two hash passes
here, a third in the download cache); the cold load of the newest takes 3.0 s.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from tracked_ckpt.blobstore import BlobNotFoundError, BlobStore
from tracked_ckpt.files import note_written_sha256
from tracked_ckpt.pack_cache import BLOCK_BYTES, PackCache, first_bad_chunk, read_into
from tracked_ckpt.packs import ChunkLocation, ChunkStoreError, Manifest

logger = logging.getLogger("tracked_ckpt")

_BUFFERS = 3  # one being read and written, one being hashed, one spare


def _runs(chunks: Sequence[ChunkLocation]) -> list[tuple[str, int, int]]:
    """The chunks as reads `(pack, offset, length)`: chunks that follow one another in a pack are one read."""
    runs: list[tuple[str, int, int]] = []
    for chunk in chunks:
        if runs and runs[-1][0] == chunk.pack and runs[-1][1] + runs[-1][2] == chunk.offset:
            runs[-1] = (chunk.pack, runs[-1][1], runs[-1][2] + chunk.length)
        else:
            runs.append((chunk.pack, chunk.offset, chunk.length))
    return runs


def _write(out: io.FileIO, view: memoryview) -> None:
    while view:
        view = view[out.write(view) or 0 :]


def _copy(runs: Sequence[tuple[str, int, int]], sources: Mapping[str, io.FileIO], out: io.FileIO) -> str:
    """Write the runs' bytes to `out` in order; return the sha256 (hex) of the bytes written."""
    whole = hashlib.sha256()
    buffers = [memoryview(bytearray(BLOCK_BYTES)) for _ in range(_BUFFERS)]
    hashed: list[Future[None] | None] = [None] * _BUFFERS
    block = 0
    with ThreadPoolExecutor(1, thread_name_prefix="tracked-ckpt-rebuild") as hasher:  # one thread: hashes in order
        for pack, offset, length in runs:
            source = sources[pack]
            source.seek(offset)
            while length:
                slot = block % _BUFFERS
                if (pending := hashed[slot]) is not None:
                    pending.result()  # its buffer is free again
                view = buffers[slot][: read_into(source, buffers[slot][: min(length, BLOCK_BYTES)])]
                if not view:  # the pack ends early: the file comes out short, and its sha256 tells
                    break
                hashed[slot] = hasher.submit(whole.update, view)
                _write(out, view)
                length -= len(view)
                block += 1
    return whole.hexdigest()


def restore_file(
    manifest: Manifest,
    store: BlobStore,
    cache: PackCache,
    destination: str | os.PathLike[str],
    *,
    label: str | None = None,
) -> Path:
    """Rebuild the file a manifest describes, byte for byte, at `destination`.

    Packs the cache lacks are downloaded, and their chunks checked before the cache keeps them.
    The whole file is checked against its sha256 before `destination` appears (it is written
    beside, then renamed); if it does not match, the chunks are checked one by one, and a cached
    pack holding a bad one is dropped and downloaded again once.

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
    needs: dict[str, list[ChunkLocation]] = {}
    for chunk in manifest.chunks:
        needs.setdefault(chunk.pack, []).append(chunk)
    sources: dict[str, io.FileIO] = {}
    handle, temporary = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.")
    # Written through this descriptor, never reopened: ext4 flushes a file truncated to 0 as it closes (0.4 s a GB).
    out = os.fdopen(handle, "wb", buffering=0)

    def corrupt(problem: str) -> ChunkStoreError:
        return ChunkStoreError(
            f"{what} cannot be rebuilt: {problem}; load another version of this checkpoint, or log it again"
        )

    def open_source(pack: str) -> None:
        try:
            sources[pack] = cache.open_pack(store, pack, needs[pack])[0]
        except BlobNotFoundError:
            raise ChunkStoreError(
                f"{what} cannot be rebuilt: pack {pack} is missing from the chunk store; "
                "load another version of this checkpoint, or log it again from the original file"
            ) from None
        except ValueError as exc:  # a chunk of the downloaded pack is bad: it was not kept
            raise corrupt(str(exc)) from None

    def rebuilt(again: bool) -> bool:
        if again:
            out.seek(0)
            out.truncate()
        return _copy(_runs(manifest.chunks), sources, out) == manifest.sha256

    def bad_chunks() -> dict[str, ChunkLocation]:
        checks = {pack: first_bad_chunk(sources[pack], chunks) for pack, chunks in needs.items()}
        return {pack: bad for pack, bad in checks.items() if bad is not None}

    try:
        for pack in needs:
            open_source(pack)
        for attempt in range(2):
            if rebuilt(again=attempt > 0):
                break
            bad = bad_chunks()
            if not bad:
                raise corrupt("its chunks do not add up to the recorded sha256 (the manifest is inconsistent)")
            if attempt:  # downloaded again and still bad
                for pack in bad:
                    cache.discard(pack)
                pack, chunk = next(iter(bad.items()))
                raise corrupt(f"chunk {chunk.digest} in pack {pack} of the chunk store is corrupt")
            for pack in bad:  # the cached copy went bad: fetch the store's, checked
                logger.warning("chunk store: cached pack %s is corrupt; downloading it again", pack)
                sources.pop(pack).close()
                cache.discard(pack)
                open_source(pack)
        out.close()
        os.replace(temporary, destination)
        note_written_sha256(destination, manifest.sha256)  # the download cache need not hash it again
    finally:
        out.close()
        for source in sources.values():
            source.close()
        Path(temporary).unlink(missing_ok=True)
        cache.trim()
    return destination
