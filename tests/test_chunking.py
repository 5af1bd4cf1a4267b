"""Content-defined chunking: one pass yields chunks, their digests and the file's digest."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import textwrap

import pytest

from tracked_ckpt.chunking import (
    MAX_AVERAGE,
    MIN_AVERAGE,
    RECENT_SCANS,
    ChunkParams,
    ChunkRef,
    average_for_size,
    scan_file,
)


def _bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_one_pass_gives_chunks_their_digests_and_the_file_digest(tmp_path):
    data = _bytes(3_000_000, 1) + bytes(500_000) + _bytes(200_000, 2)  # random, a run of zeros, random
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    seen: list[tuple[ChunkRef, bytes]] = []

    scanned = scan_file(path, ChunkParams(MIN_AVERAGE), lambda chunk, view: seen.append((chunk, bytes(view))))

    assert scanned.size == len(data)
    assert scanned.sha256 == hashlib.sha256(data).hexdigest()
    assert [chunk for chunk, _ in seen] == list(scanned.chunks)
    assert b"".join(piece for _, piece in seen) == data
    offset = 0
    for chunk in scanned.chunks:
        assert chunk.digest == hashlib.sha256(data[offset : offset + chunk.length]).hexdigest()
        offset += chunk.length
    lengths = [chunk.length for chunk in scanned.chunks]
    assert max(lengths) <= 4 * MIN_AVERAGE
    assert min(lengths[:-1]) >= MIN_AVERAGE // 4
    assert 30 < len(lengths) < 250  # ~3.7 MB at ~20 KiB (FastCDC's average is avg + min)


def test_an_insertion_changes_only_the_chunks_around_it(tmp_path):
    """Content-defined: bytes inserted near the start shift every offset but share the rest."""
    data = _bytes(4_000_000, 3)
    (tmp_path / "a").write_bytes(data)
    (tmp_path / "b").write_bytes(data[:100_000] + b"a longer config.json" + data[100_000:])
    params = ChunkParams(MIN_AVERAGE)
    before = scan_file(tmp_path / "a", params)
    after = scan_file(tmp_path / "b", params)

    known = {chunk.digest for chunk in before.chunks}
    new = sum(chunk.length for chunk in after.chunks if chunk.digest not in known)
    assert 0 < new < 4 * 4 * MIN_AVERAGE  # a chunk or two around the insertion, not the 3.9 MB after it


def test_an_empty_file_has_no_chunks(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    scanned = scan_file(tmp_path / "empty")
    assert (scanned.size, scanned.chunks, scanned.sha256) == (0, (), hashlib.sha256(b"").hexdigest())


def test_the_average_grows_with_the_file_and_sticks_to_the_previous_version():
    sizes = [10**5, 10**7, 10**8, 10**9, 10**10, 10**12]
    averages = [average_for_size(n) for n in sizes]
    assert averages == sorted(averages)
    assert averages[0] == MIN_AVERAGE and averages[-1] == MAX_AVERAGE
    # At a class boundary the previous version's average is kept; far away it is not.
    boundary = 2 * (64 * 1024) ** 2 // 30  # where the ideal flips from 64 to 128 KiB
    assert {average_for_size(boundary - 1000), average_for_size(boundary + 1000)} == {64 * 1024, 128 * 1024}
    assert average_for_size(boundary + 1000, previous=64 * 1024) == 64 * 1024
    assert average_for_size(boundary - 1000, previous=128 * 1024) == 128 * 1024
    assert average_for_size(10**12, previous=MIN_AVERAGE) == MAX_AVERAGE


def test_chunk_params_round_trip_and_refuse_another_algorithm():
    params = ChunkParams(256 * 1024)
    assert ChunkParams.from_json(params.to_json()) == params
    with pytest.raises(ValueError, match="unsupported chunking"):
        ChunkParams.from_json({**params.to_json(), "algorithm": "rabin"})
    with pytest.raises(ValueError, match="unsupported chunking"):
        ChunkParams.from_json({**params.to_json(), "min_size": 1024})


_WITHOUT_PYFASTCDC = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    class NoPyfastcdc(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname.partition(".")[0] == "pyfastcdc":
                raise ImportError(f"{fullname} is blocked", name=fullname)
            return None

    sys.meta_path.insert(0, NoPyfastcdc())
    import tracked_ckpt
    for module in pkgutil.iter_modules(tracked_ckpt.__path__):
        if not module.ispkg:
            importlib.import_module(f"tracked_ckpt.{module.name}")
    print("imported", sorted(name for name in sys.modules if name.startswith("tracked_ckpt.")))
    from tracked_ckpt.chunking import scan_file
    scan_file(sys.argv[1])
    """
)


def test_without_pyfastcdc_every_module_imports_and_chunking_names_the_extra(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(_bytes(100_000, 3))
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PYFASTCDC, str(path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1, result.stdout + result.stderr
    for module in ("tracked_ckpt.callback", "tracked_ckpt.packs", "tracked_ckpt.pack_reader", "tracked_ckpt.packgc"):
        assert f"'{module}'" in result.stdout, result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "ImportError: Chunking checkpoints needs the 'pyfastcdc' package, which is not installed: "
        "pip install 'tracked-ckpt[incremental]'."
    ), result.stderr


def test_a_chunk_seen_before_is_not_hashed_again(tmp_path, monkeypatch):
    """The second version of a mostly unchanged file costs one sha256 pass (the file's), not two."""
    pytest.importorskip("xxhash")
    data = _bytes(2_000_000, 5)
    edited = data[:1_000_000] + _bytes(10_000, 6) + data[1_010_000:]
    (tmp_path / "v1").write_bytes(data)
    (tmp_path / "v2").write_bytes(edited)
    params = ChunkParams(MIN_AVERAGE)
    scan_file(tmp_path / "v1", params)
    real, hashed = hashlib.sha256, []

    def counting(data: bytes = b"") -> hashlib._Hash:
        hashed.append(len(data))
        return real(data)

    monkeypatch.setattr(hashlib, "sha256", counting)
    second = scan_file(tmp_path / "v2", params)
    monkeypatch.undo()

    assert sum(hashed) < 200_000  # the chunks around the edit (the whole file's hash is fed by update)
    offset = 0
    for chunk in second.chunks:  # every chunk still named by the sha256 of its bytes
        assert chunk.digest == hashlib.sha256(edited[offset : offset + chunk.length]).hexdigest()
        offset += chunk.length
    assert second.sha256 == hashlib.sha256(edited).hexdigest()


def test_a_scan_is_recalled_only_for_the_same_unchanged_file_cut_the_same_way(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(_bytes(500_000, 7))
    params = ChunkParams(MIN_AVERAGE)
    scanned = scan_file(path, params)

    assert RECENT_SCANS.recall(path, params) is scanned
    assert RECENT_SCANS.recall(path, ChunkParams(2 * MIN_AVERAGE)) is None
    assert RECENT_SCANS.recall(tmp_path / "other.bin", params) is None
    path.write_bytes(_bytes(500_000, 7))  # the same bytes, written again: no longer provably the scanned file
    os.utime(path, ns=(scanned.identity.mtime_ns + 10**9,) * 2)  # a later mtime, whatever the clock's tick
    assert RECENT_SCANS.recall(path, params) is None
