"""The chunk store on a real folder store: dedup across versions, byte-identical restores, corrupt
or missing packs, and garbage collection (its grace, rescue and kill-safety)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from support.io_counters import bytes_read

from tracked_ckpt.blobstore import LocalFolderStore
from tracked_ckpt.chunking import ChunkParams, scan_file
from tracked_ckpt.errors import ChecksumError
from tracked_ckpt.files import written_sha256
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.pack_reader import restore_file
from tracked_ckpt.pack_writer import StoreListing, store_file
from tracked_ckpt.packgc import collect_garbage
from tracked_ckpt.packs import CONDEMNED, INDEXES, PACKS, ChunkLocation, ChunkStoreError, Manifest, condemned_marker

GRACE = 3600.0
T0 = 1_800_000_000.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, list[Path]]:
    """Three epochs of a frozen-base model (4.4 MB frozen, a small trainable head, Adam), in each format."""
    folder = tmp_path_factory.mktemp("checkpoints")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(1024, activation="relu", trainable=False)(inputs)
    hidden = keras.layers.Dense(1024, activation="relu", trainable=False)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((32, 64), dtype=np.float32)
    y = np.arange(32) % 4
    files: dict[str, list[Path]] = {"keras": [], "h5": [], "weights.h5": []}
    for epoch in range(3):
        model.fit(x, y, epochs=1, verbose=0)
        for kind in files:
            files[kind].append(folder / f"epoch{epoch}.{kind}")
        model.save(files["keras"][-1])
        model.save_weights(files["weights.h5"][-1])
        # Keras's legacy `.h5` save drops the optimizer from the model's later `.keras` compile config: a copy saves it.
        legacy = keras.models.clone_model(model)
        legacy.set_weights(model.get_weights())
        legacy.save(files["h5"][-1])
    return files


@pytest.fixture
def store(tmp_path) -> LocalFolderStore:
    return LocalFolderStore(tmp_path / "store")


def _cold_cache(tmp_path: Path, name: str = "cold") -> PackCache:
    """A cache that holds nothing yet: a restore through it downloads every pack."""
    return PackCache(tmp_path / name)


def _pack_path(store: LocalFolderStore, pack: str) -> Path:
    return store.root / PACKS / pack


def test_the_second_version_of_a_frozen_base_model_costs_a_small_fraction(checkpoints, store, tmp_path):
    cache = PackCache(tmp_path / "cache")
    first, second = checkpoints["keras"][:2]

    stored1 = store_file(first, store, cache)
    stored2 = store_file(second, store, cache, previous=stored1.manifest)

    assert stored1.new_bytes == stored1.total_bytes == first.stat().st_size  # nothing to share yet
    assert 0 < stored2.new_bytes < 0.10 * stored2.total_bytes
    assert stored2.describe().startswith("incremental: ") and stored2.describe().endswith(" MB")
    assert stored1.packs_uploaded == stored2.packs_uploaded == 1
    assert stored1.requests == 3 + 1 + 1  # list the store (packs, index, marks), put a pack and its index
    assert stored2.requests == 3 + 1 + 1  # the writer's own index file is not downloaded again
    shared = set(stored1.manifest.packs) & set(stored2.manifest.packs)
    assert shared and len(stored2.manifest.packs) == 2
    # The store holds the two versions for little more than one.
    stored_bytes = sum(p.stat().st_size for p in (store.root / PACKS).iterdir())
    assert stored_bytes == stored1.new_bytes + stored2.new_bytes < 1.10 * first.stat().st_size
    # Storing the same file again uploads nothing.
    again = store_file(second, store, cache, previous=stored2.manifest)
    assert (again.new_bytes, again.packs_uploaded, again.manifest) == (0, 0, stored2.manifest)


@pytest.mark.parametrize("kind", ["keras", "h5", "weights.h5"])
def test_restores_are_byte_identical(kind, checkpoints, store, tmp_path):
    writer_cache = PackCache(tmp_path / "writer")
    manifests = []
    previous = None
    for path in checkpoints[kind][:2]:
        previous = store_file(path, store, writer_cache, previous=previous).manifest
        manifests.append(Manifest.from_bytes(previous.to_bytes()))  # as read back from the tracker
    reader_cache = _cold_cache(tmp_path)
    for path, manifest in zip(checkpoints[kind][:2], manifests, strict=True):
        restored = restore_file(manifest, store, reader_cache, tmp_path / "restored" / path.name)
        assert restored.read_bytes() == path.read_bytes()
        assert manifest.sha256 == _sha256(path)


def test_a_restored_model_predicts_like_the_original(checkpoints, store, tmp_path):
    original = checkpoints["keras"][1]
    manifest = store_file(original, store, PackCache(tmp_path / "writer")).manifest
    restored = restore_file(manifest, store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    x = np.random.default_rng(1).random((5, 64), dtype=np.float32)
    expected = keras.saving.load_model(original).predict(x, verbose=0)
    np.testing.assert_array_equal(keras.saving.load_model(restored).predict(x, verbose=0), expected)


def test_the_second_version_downloads_only_its_new_pack(checkpoints, store, tmp_path):
    first, second = checkpoints["keras"][:2]
    writer = PackCache(tmp_path / "writer")
    manifest1 = store_file(first, store, writer).manifest
    manifest2 = store_file(second, store, writer, previous=manifest1).manifest
    reader = _cold_cache(tmp_path)
    restore_file(manifest1, store, reader, tmp_path / "one.keras")
    for pack in manifest1.packs:  # the store loses the first version's pack: the cache still has it
        _pack_path(store, pack).unlink()
    restore_file(manifest2, store, reader, tmp_path / "two.keras")
    assert (tmp_path / "two.keras").read_bytes() == second.read_bytes()


def test_the_cache_stays_within_its_bound(checkpoints, store, tmp_path):
    path = checkpoints["keras"][0]
    bound = path.stat().st_size // 2
    cache = PackCache(tmp_path / "cache", max_bytes=bound)
    manifest = store_file(path, store, cache, pack_size=bound // 4).manifest
    assert len(manifest.packs) >= 4

    restore_file(manifest, store, cache, tmp_path / "restored.keras")

    assert (tmp_path / "restored.keras").read_bytes() == path.read_bytes()
    cached = sum(p.stat().st_size for p in (cache.root / "packs").iterdir())
    assert 0 < cached <= bound


def test_repeated_content_within_a_file_is_stored_once(store, tmp_path):
    block = np.random.default_rng(2).bytes(1_000_000)
    path = tmp_path / "twice.bin"
    path.write_bytes(block + block + block)

    stored = store_file(path, store, PackCache(tmp_path / "cache"))

    assert stored.new_bytes < 1_200_000  # one copy, plus the chunks straddling the seams
    restore_file(stored.manifest, store, _cold_cache(tmp_path), tmp_path / "restored.bin")
    assert (tmp_path / "restored.bin").read_bytes() == path.read_bytes()


def test_a_corrupt_pack_fails_in_one_line_and_does_not_poison_the_cache(checkpoints, store, tmp_path):
    path = checkpoints["keras"][0]
    manifest = store_file(path, store, PackCache(tmp_path / "writer")).manifest
    (pack,) = manifest.packs
    good = _pack_path(store, pack).read_bytes()
    corrupt = bytearray(good)
    corrupt[len(good) // 2] ^= 0xFF
    _pack_path(store, pack).write_bytes(bytes(corrupt))
    cache = _cold_cache(tmp_path)
    destination = tmp_path / "restored.keras"

    with pytest.raises(ChunkStoreError) as caught:
        restore_file(manifest, store, cache, destination, label="digits-classifier v3")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("digits-classifier v3 cannot be rebuilt: ")
    assert "corrupt" in message and pack in message and "load another version" in message
    assert isinstance(caught.value, ChecksumError)
    assert not cache.has(pack) and not destination.exists()
    assert not [p for p in destination.parent.iterdir() if p.name.startswith(".restored.keras")]

    # Once the store is repaired, the same cache restores the file: nothing bad was kept.
    _pack_path(store, pack).write_bytes(good)
    restore_file(manifest, store, cache, destination)
    assert destination.read_bytes() == path.read_bytes()


def test_a_corrupt_cached_pack_is_replaced_from_the_store(checkpoints, store, tmp_path):
    path = checkpoints["keras"][0]
    cache = PackCache(tmp_path / "cache")
    manifest = store_file(path, store, cache).manifest  # the writer keeps its pack in the cache
    (pack,) = manifest.packs
    cached = cache.root / "packs" / pack
    data = bytearray(cached.read_bytes())
    data[100] ^= 0x01
    cached.write_bytes(bytes(data))

    restore_file(manifest, store, cache, tmp_path / "restored.keras")

    assert (tmp_path / "restored.keras").read_bytes() == path.read_bytes()
    assert cached.read_bytes() == _pack_path(store, pack).read_bytes()


def _two_pack_manifest(path: Path, store: LocalFolderStore, cache: PackCache) -> Manifest:
    manifest = store_file(path, store, cache, pack_size=path.stat().st_size // 2).manifest
    assert len(manifest.packs) == 2
    return manifest


def _flip_a_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_only_the_cached_pack_whose_chunk_fails_is_downloaded_again(checkpoints, store, tmp_path, caplog):
    """The whole file's sha256 fails, the chunks are checked one by one, and the bad pack alone is fetched."""
    path = checkpoints["keras"][0]
    cache = PackCache(tmp_path / "cache")
    manifest = _two_pack_manifest(path, store, cache)  # the writer keeps both packs in the cache
    bad, good = (cache.root / "packs" / pack for pack in manifest.packs)
    _flip_a_byte(bad, bad.stat().st_size // 2)
    kept = good.stat().st_ino

    with caplog.at_level("WARNING", logger="tracked_ckpt"):
        restore_file(manifest, store, cache, tmp_path / "restored.keras")

    assert (tmp_path / "restored.keras").read_bytes() == path.read_bytes()
    assert bad.read_bytes() == _pack_path(store, bad.name).read_bytes()  # replaced from the store
    assert good.stat().st_ino == kept  # not downloaded again
    assert [r.getMessage() for r in caplog.records] == [
        f"chunk store: cached pack {bad.name} is corrupt; downloading it again"
    ]


def test_a_cached_pack_bad_in_the_store_too_fails_in_one_line_and_is_not_kept(checkpoints, store, tmp_path):
    path = checkpoints["keras"][0]
    cache = PackCache(tmp_path / "cache")
    manifest = _two_pack_manifest(path, store, cache)
    pack = manifest.packs[1]
    _flip_a_byte(cache.root / "packs" / pack, 10)
    _flip_a_byte(_pack_path(store, pack), 10)
    destination = tmp_path / "out" / "restored.keras"

    with pytest.raises(ChunkStoreError) as caught:
        restore_file(manifest, store, cache, destination, label="digits-classifier v4")

    message = str(caught.value)
    assert "\n" not in message and message.startswith("digits-classifier v4 cannot be rebuilt: chunk ")
    assert f"in pack {pack} of the chunk store is corrupt; load another version" in message
    assert not cache.has(pack) and cache.has(manifest.packs[0])  # the intact pack stays
    assert list(destination.parent.iterdir()) == []  # no file, no temporary left
    assert list((cache.root / "staging").iterdir()) == []


def test_a_downloaded_pack_enters_the_cache_only_once_its_chunks_are_checked(checkpoints, store, tmp_path):
    path = checkpoints["h5"][0]
    manifest = store_file(path, store, PackCache(tmp_path / "writer")).manifest
    (pack,) = manifest.packs
    _flip_a_byte(_pack_path(store, pack), manifest.chunks[-1].offset)
    cache = _cold_cache(tmp_path)

    with pytest.raises(ValueError, match=rf"^chunk {manifest.chunks[-1].digest} in pack {pack} of the chunk store is"):
        cache.open_pack(store, pack, manifest.chunks)

    assert not cache.has(pack) and list((cache.root / "staging").iterdir()) == []
    source, downloaded = cache.open_pack(store, pack, manifest.chunks[:-1])  # the chunks asked for are intact
    source.close()
    assert downloaded and cache.has(pack)


def test_a_manifest_whose_chunks_do_not_add_up_fails_without_dropping_good_packs(checkpoints, store, tmp_path):
    path = checkpoints["keras"][0]
    cache = PackCache(tmp_path / "cache")
    manifest = store_file(path, store, cache).manifest
    wrong = Manifest.from_json({**manifest.to_json(), "sha256": "0" * 64})

    with pytest.raises(ChunkStoreError, match=r"^epoch0\.keras cannot be rebuilt: its chunks do not add up"):
        restore_file(wrong, store, cache, tmp_path / "restored.keras")
    assert all(cache.has(pack) for pack in manifest.packs)


def test_chunks_in_any_order_across_packs_rebuild_byte_identical(store, tmp_path):
    """Chunks adjacent in a pack are read at once; one used twice, or out of order, is copied where it goes."""
    pieces = {name: bytes([65 + i]) * (3000 + 1000 * i) for i, name in enumerate("abcde")}
    one, two = "1" * 64, "2" * 64
    where = {"a": (one, 0), "b": (one, 3000), "c": (one, 7000), "d": (two, 0), "e": (two, 6000)}
    (store.root / PACKS).mkdir(parents=True)
    _pack_path(store, one).write_bytes(pieces["a"] + pieces["b"] + pieces["c"])
    _pack_path(store, two).write_bytes(pieces["d"] + pieces["e"])
    order = "abcdecabeddb"
    chunks = tuple(ChunkLocation(hashlib.sha256(pieces[n]).hexdigest(), len(pieces[n]), *where[n]) for n in order)
    content = b"".join(pieces[n] for n in order)
    manifest = Manifest("pieces.bin", len(content), hashlib.sha256(content).hexdigest(), ChunkParams(4096), chunks)

    restored = restore_file(manifest, store, _cold_cache(tmp_path), tmp_path / "pieces.bin")

    assert restored.read_bytes() == content


def test_a_truncated_pack_fails_as_corrupt(store, tmp_path):
    data = np.random.default_rng(3).bytes(50_000)
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    manifest = store_file(path, store, PackCache(tmp_path / "writer")).manifest
    (pack,) = manifest.packs
    _pack_path(store, pack).write_bytes(data[:-10])  # the last chunk is cut short

    with pytest.raises(ChunkStoreError, match=rf"in pack {pack} of the chunk store is corrupt"):
        restore_file(manifest, store, _cold_cache(tmp_path), tmp_path / "restored.bin")


def test_a_restored_file_is_known_by_its_sha256_until_it_changes(checkpoints, store, tmp_path):
    """The download cache takes a rebuilt file's sha256 from the rebuild instead of hashing it again."""
    manifest = store_file(checkpoints["h5"][0], store, PackCache(tmp_path / "writer")).manifest
    restored = restore_file(manifest, store, _cold_cache(tmp_path), tmp_path / "restored.h5")
    moved = restored.rename(tmp_path / "moved.h5")  # as the download cache moves it into place

    assert written_sha256(moved) == manifest.sha256
    with open(moved, "ab") as f:
        f.write(b"\0")
    assert written_sha256(moved) is None
    assert written_sha256(tmp_path / "absent.h5") is None


def test_a_missing_pack_fails_in_one_line(checkpoints, store, tmp_path):
    manifest = store_file(checkpoints["h5"][0], store, PackCache(tmp_path / "writer")).manifest
    _pack_path(store, manifest.packs[0]).unlink()
    with pytest.raises(ChunkStoreError, match=r"^epoch0\.h5 cannot be rebuilt: pack \w+ is missing from the chunk"):
        restore_file(manifest, store, _cold_cache(tmp_path), tmp_path / "restored.h5")


def test_the_writer_trusts_the_listing_not_its_cache(checkpoints, store, tmp_path):
    """Packs removed from the store behind the writer's back are uploaded again, not referenced."""
    path = checkpoints["keras"][0]
    cache = PackCache(tmp_path / "cache")
    first = store_file(path, store, cache)
    for pack in first.manifest.packs:
        _pack_path(store, pack).unlink()

    again = store_file(path, store, cache)

    assert again.new_bytes == path.stat().st_size
    restore_file(again.manifest, store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    assert (tmp_path / "restored.keras").read_bytes() == path.read_bytes()


def test_a_file_just_scanned_is_read_again_only_for_the_chunks_the_store_lacks(checkpoints, store, tmp_path):
    """What the publisher's pass cut and hashed is not read again: only new chunks are (`RECENT_SCANS`)."""
    cache = PackCache(tmp_path / "cache")
    stored1 = store_file(checkpoints["keras"][0], store, cache)
    scanned, unscanned = tmp_path / "scanned.keras", tmp_path / "unscanned.keras"
    for copy in (scanned, unscanned):  # files no scan has seen yet
        shutil.copyfile(checkpoints["keras"][1], copy)
    size = scanned.stat().st_size
    digest = scan_file(scanned).sha256  # the publisher's pass

    before = bytes_read()
    stored2 = store_file(scanned, store, cache, previous=stored1.manifest, expected_sha256=digest)
    read_after_scan = bytes_read() - before
    before = bytes_read()
    again = store_file(unscanned, store, PackCache(tmp_path / "other"), previous=stored1.manifest)
    read_unscanned = bytes_read() - before

    assert read_unscanned >= size  # the control: a file not scanned before is read whole
    assert read_after_scan < 0.25 * size and stored2.new_bytes > 0
    assert (again.new_bytes, again.manifest.chunks) == (0, stored2.manifest.chunks)
    restore_file(stored2.manifest, store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    assert (tmp_path / "restored.keras").read_bytes() == scanned.read_bytes()


def test_a_file_changed_after_its_scan_is_refused_in_one_line(checkpoints, store, tmp_path):
    path = tmp_path / "ckpt.keras"
    shutil.copyfile(checkpoints["keras"][0], path)
    digest = scan_file(path).sha256
    path.write_bytes(checkpoints["keras"][1].read_bytes())  # Keras's next save, into the same inode

    with pytest.raises(ChecksumError, match=r"^m-e0001: .*ckpt\.keras no longer matches the sha256 recorded"):
        store_file(path, store, PackCache(tmp_path / "cache"), expected_sha256=digest, label="m-e0001")
    assert store.list(INDEXES) == []  # no index: what was uploaded is garbage nothing references


def test_a_listing_is_reused_for_a_minute_and_forgotten_when_a_write_fails(checkpoints, store, tmp_path):
    """A fit checkpointing every few seconds lists the store once a minute, not three times per checkpoint."""
    now = [0.0]
    listing = StoreListing(max_age=60.0, clock=lambda: now[0])
    cache = PackCache(tmp_path / "cache")
    first, second, third = checkpoints["keras"]

    stored1 = store_file(first, store, cache, listing=listing)
    now[0] = 59.0
    stored2 = store_file(second, store, cache, previous=stored1.manifest, listing=listing)
    again = store_file(second, store, cache, previous=stored2.manifest, listing=listing)

    assert stored1.requests == 3 + 1 + 1  # listed; a pack and its index put
    assert stored2.requests == 1 + 1  # the listing, and what this writer added to it, reused
    assert (again.requests, again.new_bytes, again.manifest) == (0, 0, stored2.manifest)
    now[0] = 61.0
    assert store_file(second, store, cache, listing=listing).requests == 3  # too old: listed again

    class Refuses(LocalFolderStore):
        def put(self, name: str, local_path: Path) -> None:
            raise OSError("the store refused the upload")

    with pytest.raises(OSError, match="refused"):
        store_file(third, Refuses(store.root), cache, listing=listing)
    assert store_file(third, store, cache, listing=listing).requests == 3 + 1 + 1  # listed again after the failure


def test_bytes_changed_since_the_scan_never_reach_the_store(checkpoints, store, tmp_path):
    """The file changed after the publisher's pass without its size or mtime telling: checked, not stored."""
    path = tmp_path / "ckpt.keras"
    shutil.copyfile(checkpoints["keras"][0], path)
    scanned = scan_file(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as f:  # in place: same inode and size
        f.write(data)
    os.utime(path, ns=(scanned.identity.mtime_ns,) * 2)  # and the mtime put back

    with pytest.raises(ChecksumError, match=r"^m-e0001: .*ckpt\.keras changed since it was hashed: not logged\.$"):
        store_file(path, store, PackCache(tmp_path / "cache"), expected_sha256=scanned.sha256, label="m-e0001")
    assert store.list(INDEXES) == [] and store.list(PACKS) == []


class _AfterFirstListing(LocalFolderStore):
    """The same folder store, calling `hook` once right after the first listing of packs or marks."""

    def __init__(self, root: Path, hook) -> None:
        super().__init__(root)
        self.hook = hook

    def list(self, prefix: str) -> list[str]:
        listed = super().list(prefix)
        if prefix in (PACKS, CONDEMNED) and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        return listed


def test_a_pack_collected_while_a_writer_lists_the_store_is_not_referenced(checkpoints, store, tmp_path):
    """A collection deletes a pack, then its mark, between the writer's listings of the two; the
    pack's index file stays (it lists a live pack too), so only the listings can tell."""
    cache = PackCache(tmp_path / "cache")
    path = checkpoints["keras"][0]
    first = store_file(path, store, cache, pack_size=1 << 20).manifest  # several packs, one index file
    gone, *others = first.packs
    live = [dataclasses.replace(first, chunks=tuple(c for c in first.chunks if c.pack != gone))]
    assert others and collect_garbage(store, lambda: live, cache, grace_seconds=GRACE, now=T0).condemned == (gone,)

    def collection() -> None:
        assert collect_garbage(store, lambda: live, cache, grace_seconds=GRACE, now=T0 + GRACE).deleted == (gone,)
        assert len(store.list(INDEXES)) == 1  # still lists the pack just deleted

    stored = store_file(path, _AfterFirstListing(store.root, collection), PackCache(tmp_path / "writer"))

    assert gone not in stored.manifest.packs
    restored = restore_file(stored.manifest, store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    assert restored.read_bytes() == path.read_bytes()


def test_gc_keeps_shared_packs_and_removes_unreferenced_ones_after_grace(checkpoints, store, tmp_path):
    cache = PackCache(tmp_path / "cache")
    manifests: list[Manifest] = []
    for path in checkpoints["keras"]:
        manifests.append(store_file(path, store, cache, previous=manifests[-1] if manifests else None).manifest)
    first, middle, last = manifests
    (only_middle,) = set(middle.packs) - set(first.packs) - set(last.packs)
    shared = set(first.packs) & set(middle.packs) & set(last.packs)
    assert shared
    kept = [first, last]  # retention removed the middle checkpoint

    # Its own pack is condemned, not deleted yet; the shared one is untouched.
    run1 = collect_garbage(store, lambda: kept, cache, grace_seconds=GRACE, now=T0)
    assert (run1.condemned, run1.deleted) == ((only_middle,), ())
    assert store.list(CONDEMNED) == [condemned_marker(only_middle, T0)]
    run2 = collect_garbage(store, lambda: kept, cache, grace_seconds=GRACE, now=T0 + GRACE - 1)
    assert (run2.waiting, run2.deleted) == ((only_middle,), ())
    run3 = collect_garbage(store, lambda: kept, cache, grace_seconds=GRACE, now=T0 + GRACE)
    assert run3.deleted == (only_middle,)
    assert not _pack_path(store, only_middle).exists()
    assert store.list(CONDEMNED) == []
    assert {p.removeprefix(PACKS) for p in store.list(PACKS)} == set(first.packs) | set(last.packs)

    for manifest, path in ((first, checkpoints["keras"][0]), (last, checkpoints["keras"][2])):
        restored = restore_file(manifest, store, _cold_cache(tmp_path, path.name), tmp_path / "restored" / path.name)
        assert restored.read_bytes() == path.read_bytes()
    with pytest.raises(ChunkStoreError, match="is missing from the chunk store"):
        restore_file(middle, store, _cold_cache(tmp_path), tmp_path / "middle.keras")
    assert collect_garbage(store, lambda: manifests, cache, grace_seconds=GRACE, now=T0 + GRACE).missing == (
        only_middle,
    )
    # Everything unreferenced goes, with the index files that list only deleted packs.
    collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0 + 2 * GRACE)
    collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0 + 3 * GRACE)
    assert store.list("") == []


def test_a_pack_referenced_again_before_grace_is_rescued(checkpoints, store, tmp_path):
    """A writer that listed the store before the pack was condemned makes its manifest live in time."""
    cache = PackCache(tmp_path / "cache")
    manifest = store_file(checkpoints["keras"][0], store, cache).manifest  # not live yet
    (pack,) = manifest.packs
    assert collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0).condemned == (pack,)

    rescue = collect_garbage(store, lambda: [manifest], cache, grace_seconds=GRACE, now=T0 + GRACE)

    assert (rescue.rescued, rescue.deleted) == ((pack,), ())
    assert store.list(CONDEMNED) == []
    later = collect_garbage(store, lambda: [manifest], cache, grace_seconds=GRACE, now=T0 + 5 * GRACE)
    assert (later.condemned, later.deleted) == ((), ())
    assert _pack_path(store, pack).exists()


def test_writers_do_not_reference_condemned_packs(checkpoints, store, tmp_path):
    cache = PackCache(tmp_path / "cache")
    path = checkpoints["keras"][0]
    (pack,) = store_file(path, store, cache).manifest.packs
    collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0)

    again = store_file(path, store, cache)

    (fresh,) = again.manifest.packs
    assert fresh != pack and again.new_bytes == path.stat().st_size  # same chunks, a pack of its own
    collect_garbage(store, lambda: [again.manifest], cache, grace_seconds=GRACE, now=T0 + GRACE)
    assert {p.removeprefix(PACKS) for p in store.list(PACKS)} == {fresh}
    restore_file(again.manifest, store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    assert (tmp_path / "restored.keras").read_bytes() == path.read_bytes()


class _BeforeDelete(LocalFolderStore):
    """The same folder store, calling `hook` once just before its first delete of a pack."""

    def __init__(self, root: Path, hook) -> None:
        super().__init__(root)
        self.hook = hook

    def delete(self, name: str) -> None:
        if name.startswith(PACKS) and self.hook is not None:
            hook, self.hook = self.hook, None
            hook()
        super().delete(name)


def test_two_collections_at_once_never_delete_what_a_writer_uploads_meanwhile(checkpoints, store, tmp_path):
    """Collection C reads a pack's old marker; collection D deletes that pack and its marker; a writer,
    seeing neither, uploads the same chunks and makes its manifest live; then C deletes "the pack".
    The writer's pack has a name of its own, so C's delete cannot reach it."""
    cache = PackCache(tmp_path / "cache")
    path = checkpoints["keras"][0]
    (pack,) = store_file(path, store, cache).manifest.packs  # its manifest was deleted: garbage
    collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0)  # condemned
    live: list[Manifest] = []

    def collection_d_then_a_writer() -> None:
        assert collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0 + GRACE).deleted == (pack,)
        assert store.list(PACKS) == store.list(CONDEMNED) == []  # the writer sees no trace of it
        live.append(store_file(path, store, PackCache(tmp_path / "writer")).manifest)

    collection_c = _BeforeDelete(store.root, collection_d_then_a_writer)
    collected = collect_garbage(collection_c, lambda: list(live), cache, grace_seconds=GRACE, now=T0 + GRACE)

    assert collected.deleted == (pack,) and live and live[0].packs != (pack,)
    restored = restore_file(live[0], store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    assert restored.read_bytes() == path.read_bytes()


_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from tracked_ckpt.blobstore import LocalFolderStore
    from tracked_ckpt.pack_cache import PackCache
    from tracked_ckpt.pack_writer import StoreListing, store_file

    class DiesAfterFirstPack(LocalFolderStore):
        def put(self, name, local_path):
            super().put(name, local_path)
            if name.startswith("packs/"):
                os.kill(os.getpid(), signal.SIGKILL)

    store = DiesAfterFirstPack(sys.argv[2])
    store_file(sys.argv[1], store, PackCache(sys.argv[3]), pack_size=1 << 20)
    """
)


def test_a_writer_killed_mid_upload_leaves_garbage_collected_only_after_grace(checkpoints, store, tmp_path):
    path = checkpoints["keras"][0]
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(path), str(store.root), str(tmp_path / "child-cache")],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    (orphan,) = store.list(PACKS)
    assert store.list(INDEXES) == []  # killed before the index: no writer will use the orphan
    cache = PackCache(tmp_path / "cache")

    stored = store_file(path, store, cache)  # the sync after the kill: everything uploaded again
    assert stored.new_bytes == path.stat().st_size
    assert orphan.removeprefix(PACKS) not in stored.manifest.packs

    live = [stored.manifest]
    assert collect_garbage(store, lambda: live, cache, grace_seconds=GRACE, now=T0).deleted == ()
    assert collect_garbage(store, lambda: live, cache, grace_seconds=GRACE, now=T0 + GRACE / 2).deleted == ()
    assert _pack_path(store, orphan.removeprefix(PACKS)).exists()
    assert collect_garbage(store, lambda: live, cache, grace_seconds=GRACE, now=T0 + GRACE).deleted == (
        orphan.removeprefix(PACKS),
    )
    restore_file(stored.manifest, store, _cold_cache(tmp_path), tmp_path / "restored.keras")
    assert (tmp_path / "restored.keras").read_bytes() == path.read_bytes()


def test_gc_stopped_between_a_pack_and_its_marker_is_finished_by_the_next_run(store, tmp_path):
    cache = PackCache(tmp_path / "cache")
    (tmp_path / "empty").write_bytes(b"")
    store.put(condemned_marker("f" * 64, T0), tmp_path / "empty")  # its pack is already deleted
    collect_garbage(store, list, cache, grace_seconds=GRACE, now=T0 + 1)
    assert store.list("") == []


def test_manifests_are_versioned_json(checkpoints, store, tmp_path):
    manifest = store_file(checkpoints["weights.h5"][0], store, PackCache(tmp_path / "cache")).manifest
    data = manifest.to_json()
    assert (data["format"], data["version"], data["size"]) == ("tracked-ckpt.manifest", 1, manifest.size)
    assert ChunkParams.from_json(data["chunking"]) == manifest.params
    with pytest.raises(ValueError, match="version 2 is not supported by this tracked-ckpt"):
        Manifest.from_json({**data, "version": 2})
    with pytest.raises(ValueError, match="not a sha256 digest"):
        Manifest.from_json({**data, "packs": ["../../elsewhere"]})
    with pytest.raises(ValueError, match="do not add up"):
        Manifest.from_json({**data, "size": manifest.size + 1})
