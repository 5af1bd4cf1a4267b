"""Throughput of the chunk store's one pass, and the bytes a frozen-base model's epochs add.

* The one pass (`chunking.scan_file`: FastCDC boundaries, each chunk's sha256 and the file's
  sha256) over a file of random and repeated data, for each average chunk size: MB/s of wall
  time and of CPU time (the machine is shared; CPU time is what the upload thread costs), then
  `pack_writer.store_file` into a local folder store and `pack_reader.restore_file` from a cold cache,
  then from a cache holding every pack (what loading a second version of a frozen model costs).
* A frozen Dense base with a trainable Dense(10) head (Adam), one `.keras` file per epoch, each
  stored with the previous version's manifest: bytes new, manifest bytes and requests per epoch.

Run: `.venv/bin/python benchmarks/chunk_store.py [--mb 300] [--units 2000] [--epochs 4]`.
Small by default; `--units 20000` is the 1.5 GB model of the research notes (needs ~6 GB RAM).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tracked_ckpt.blobstore import LocalFolderStore
from tracked_ckpt.chunking import ChunkParams, average_for_size, scan_file
from tracked_ckpt.pack_cache import PackCache
from tracked_ckpt.pack_reader import restore_file
from tracked_ckpt.pack_writer import store_file
from tracked_ckpt.packs import Manifest


def _timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def write_mixed_file(path: Path, megabytes: int) -> None:
    """Random data, with a 32 MB random block repeated (so dedup within the file shows too)."""
    block = os.urandom(32 << 20)
    with open(path, "wb") as out:
        written = 0
        while written < megabytes << 20:
            piece = os.urandom(32 << 20) if (written >> 25) % 2 == 0 else block
            out.write(piece)
            written += len(piece)


def one_pass(folder: Path, megabytes: int) -> None:
    path = folder / "mixed.bin"
    write_mixed_file(path, megabytes)
    size = path.stat().st_size
    scan_file(path, ChunkParams(64 * 1024))  # warm the page cache: measure the pass, not the disk
    print(f"one pass over {size / 1e6:.0f} MB (random + a repeated 32 MB block), best of 3:")
    for average in (16 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024):
        runs = [_timed(scan_file, path, ChunkParams(average)) for _ in range(3)]
        scanned, wall, cpu = min(runs, key=lambda run: run[2])
        print(
            f"  avg {average // 1024:>5} KiB: {len(scanned.chunks):>6} chunks, "
            f"{size / 1e6 / wall:6.0f} MB/s wall, {size / 1e6 / cpu:6.0f} MB/s CPU ({cpu:.2f} CPU s)"
        )
    store = LocalFolderStore(folder / "store")
    stored, wall, cpu = _timed(store_file, path, store, PackCache(folder / "writer-cache"))
    print(
        f"  store_file (avg {stored.manifest.params.average // 1024} KiB): {wall:.2f} s wall, {cpu:.2f} CPU s; "
        f"{stored.describe()}, {stored.packs_uploaded} pack(s), {stored.requests} request(s)"
    )
    _, wall, cpu = _timed(restore_file, stored.manifest, store, PackCache(folder / "cold"), folder / "restored.bin")
    print(f"  restore_file, cold cache: {wall:.2f} s wall, {cpu:.2f} CPU s")
    # A second version of a frozen model: every pack already cached (the writer's cache keeps what it uploaded).
    warm = sorted(
        _timed(restore_file, stored.manifest, store, PackCache(folder / "writer-cache"), folder / "restored.bin")[1:]
        for _ in range(5)
    )
    print(
        f"  restore_file, every pack cached, median of 5: {warm[2][0]:.2f} s wall, {warm[2][1]:.2f} CPU s "
        f"({size / 1e6 / warm[2][0]:.0f} MB/s; {warm[2][0] / wall:.2f}x the cold restore from this local store)"
    )
    path.unlink()
    (folder / "restored.bin").unlink()


def frozen_base_epochs(folder: Path, units: int, epochs: int) -> None:
    import keras
    import numpy as np

    inputs = keras.Input((units,))
    base = keras.layers.Dense(units, activation="relu", trainable=False)(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(base))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).random((64, units), dtype=np.float32)
    y = np.arange(64) % 10
    store = LocalFolderStore(folder / "model-store")
    cache = PackCache(folder / "model-cache")
    previous: Manifest | None = None
    print(f"frozen Dense({units}) base + Dense(10) head, Adam, {epochs} epochs:")
    for epoch in range(epochs):
        model.fit(x, y, epochs=1, verbose=0)
        path = folder / "model.keras"
        model.save(path)
        stored, wall, cpu = _timed(store_file, path, store, cache, previous=previous)
        previous = stored.manifest
        print(
            f"  epoch {epoch}: {stored.describe()} ({100 * stored.new_bytes / stored.total_bytes:.2f} %), "
            f"manifest {len(stored.manifest.to_bytes()) / 1e3:.0f} KB, {stored.requests} request(s), "
            f"avg chunk {stored.manifest.params.average // 1024} KiB, {wall:.2f} s wall, {cpu:.2f} CPU s"
        )
    held = sum(p.stat().st_size for p in (store.root / "packs").iterdir())
    size = path.stat().st_size
    print(f"  store holds {held / 1e6:.1f} MB for {epochs} checkpoints of {size / 1e6:.1f} MB ({held / size:.2f}x one)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=300, help="size of the one-pass test file")
    parser.add_argument("--units", type=int, default=2000, help="the frozen base is Dense(units) on units inputs")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    print(f"average chunk size chosen for {args.mb} MB: {average_for_size(args.mb << 20) // 1024} KiB")
    with tempfile.TemporaryDirectory(prefix="chunk-store-bench-") as folder:
        one_pass(Path(folder), args.mb)
        frozen_base_epochs(Path(folder), args.units, args.epochs)


if __name__ == "__main__":
    main()
