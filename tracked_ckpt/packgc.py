"""Garbage collection of the chunk store: remove the packs no live manifest needs, and only those.

`collect_garbage` is a mark-and-sweep in two runs, so that it needs no lock against writers:

1. A pack no live manifest references is *condemned*: a marker `condemned/<pack>@<time>` is put
   beside it. Writers treat a condemned pack as absent (they upload its chunks again rather than
   reference it).
2. A later run deletes a condemned pack once its marker is at least `grace` old and the pack is
   still unreferenced; a pack referenced again meanwhile is *rescued* (its marker removed).

The guarantee: **no pack a live manifest references is ever deleted, provided every writer makes
its manifest live within `grace` of listing the store** (`pack_writer.store_file` lists the store
first; a writer that retries after an outage lists it again). A writer that listed before a pack
was condemned has that long to make the manifest referencing it live, and the run that deletes
the pack reads the live manifests after it saw the marker was `grace` old. Packs a writer uploads
before its manifest is live are unreferenced for a while: condemned, then rescued; a writer killed
before its manifest leaves packs that are deleted two runs and `grace` later.

Every step is one idempotent request, in an order that is safe to stop anywhere: a pack is
deleted before its markers, and an index file only once every pack it lists is gone, so a run
killed at any point leaves at worst markers or index files of deleted packs (ignored by writers,
removed by the next run) or packs still condemned (deleted by the next run). Two runs at once are
safe: deleting is idempotent, the oldest marker of a pack counts, and a writer never uploads under
a name a run may be deleting (`pack_writer` salts every pack's name), so a run that read a marker
before another run removed it can only delete the bytes that marker condemned. Time is the
collecting machine's clock; `grace` must exceed the clock skew between collectors.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from tracked_ckpt.blobstore import BlobNotFoundError, BlobStore
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.packs import CONDEMNED, INDEXES, PACKS, Manifest, condemned_marker, parse_condemned

logger = logging.getLogger("tracked_ckpt")

# Longer than any upload of a checkpoint's packs, so a writer is never outrun by the collector.
DEFAULT_GRACE_SECONDS = 24 * 3600.0


@dataclasses.dataclass(frozen=True)
class Collected:
    """What one `collect_garbage` run did.

    Attributes:
        live: packs a live manifest references (kept).
        condemned: packs marked by this run (deleted by a later run if still unreferenced).
        rescued: condemned packs referenced again (their markers removed).
        deleted: packs deleted.
        waiting: condemned packs whose grace has not passed yet.
        indexes_deleted: index files removed because every pack they list is gone.
        missing: packs a live manifest references that the store lacks (those checkpoints cannot be
            restored; nothing the collector does causes this, see the module docstring).
    """

    live: int
    condemned: tuple[str, ...]
    rescued: tuple[str, ...]
    deleted: tuple[str, ...]
    waiting: tuple[str, ...]
    indexes_deleted: int
    missing: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class StoreCollected:
    """What one `collect_garbage` run did to a destination's chunk store (`tracked_ckpt.garbage`).

    Attributes:
        store: where the store is (its URI).
        checkpoints: how many checkpoints' manifests were read as live.
        collected: what the run did.
        bytes_freed: the size of the packs it deleted.
    """

    store: str
    checkpoints: int
    collected: Collected
    bytes_freed: int


def collect_garbage(
    store: BlobStore,
    live_manifests: Callable[[], Iterable[Manifest]],
    cache: PackCache,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: float | None = None,
) -> Collected:
    """One mark-and-sweep run over `store` (see the module docstring for what it guarantees).

    Args:
        store: the chunk store.
        live_manifests: returns every live manifest of the store (every checkpoint any run of the
            destination still has). Called after the store is listed, never before.
        cache: the local cache (for the store's index files).
        grace_seconds: how long a pack stays condemned before it is deleted.
        now: the current unix time (default: the clock).

    Returns:
        what the run did.
    """
    now = time.time() if now is None else now
    index_names = store.list(INDEXES)
    packs = {name.removeprefix(PACKS) for name in store.list(PACKS)}
    markers: dict[str, list[tuple[int, str]]] = {}
    for name in store.list(CONDEMNED):
        parsed = parse_condemned(name)
        if parsed is not None:
            markers.setdefault(parsed[0], []).append((parsed[1], name))
    live = {pack for manifest in live_manifests() for pack in manifest.packs}

    condemned: list[str] = []
    rescued: list[str] = []
    deleted: list[str] = []
    waiting: list[str] = []
    for pack in sorted(packs - live):
        if pack not in markers:
            condemned.append(pack)
        elif now - min(markers[pack])[0] >= grace_seconds:
            store.delete(PACKS + pack)  # before its markers: stopped here, the next run finishes
            deleted.append(pack)
        else:
            waiting.append(pack)
    for pack, marked in sorted(markers.items()):
        if pack in live and pack in packs:
            rescued.append(pack)
        if pack in live or pack in deleted or pack not in packs:
            for _, name in marked:
                store.delete(name)
    _put_markers(store, cache, condemned, now)

    remaining = packs - set(deleted)
    indexes_deleted = 0
    for name in index_names:
        try:
            chunks, _ = cache.index(store, name)
        except (ValueError, KeyError, TypeError, BlobNotFoundError) as exc:
            logger.warning("chunk store gc: leaving unreadable index file %s: %s", name, exc)
            continue
        if chunks and not any(chunk.pack in remaining for chunk in chunks):
            store.delete(name)
            indexes_deleted += 1
    missing = tuple(sorted(live - packs))
    if missing:
        logger.warning("chunk store gc: %d pack(s) that live checkpoints need are missing from the store", len(missing))
    result = Collected(
        len(live & packs), tuple(condemned), tuple(rescued), tuple(deleted), tuple(waiting), indexes_deleted, missing
    )
    logger.info(
        "chunk store gc: %d live pack(s); condemned %d, rescued %d, deleted %d, waiting %d; %d index file(s) removed",
        result.live,
        len(condemned),
        len(rescued),
        len(deleted),
        len(waiting),
        indexes_deleted,
    )
    return result


def _put_markers(store: BlobStore, cache: PackCache, packs: Iterable[str], now: float) -> None:
    staged = cache.staging_file()  # markers are empty: their name says everything
    try:
        for pack in packs:
            store.put(condemned_marker(pack, now), staged)
    finally:
        staged.unlink(missing_ok=True)
