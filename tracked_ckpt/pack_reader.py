"""Reading from the chunk store: `restore_file` rebuilds a file, byte for byte, from its `Manifest`.

Packs the local `PackCache` lacks are downloaded; every chunk and the whole file are verified,
and a bad chunk is never served from the cache. Part of the chunk store of issue 25 (see
`tracked_ckpt.packs`); the MLflow tracker's `fetch` rebuilds incremental checkpoints with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

from tracked_ckpt.blobstore import BlobNotFoundError, BlobStore
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.packs import ChunkLocation, ChunkStoreError, Manifest

logger = logging.getLogger("tracked_ckpt")


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
