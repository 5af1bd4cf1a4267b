"""The download cache: checkpoint files by content hash, verified against the recorded sha256.

`download_checkpoint`, `load_model` and resume by job key fetch through it, so a
warm call transfers nothing and a damaged copy is never used.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile

from tracked_ckpt import settings
from tracked_ckpt.files import safe_file_name, sha256_file, written_sha256
from tracked_ckpt.progress import Progress, watch_folder_size
from tracked_ckpt.tracker import ChecksumError, LoggedCheckpoint, Tracker, registry_of

logger = logging.getLogger("tracked_ckpt")


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> str:
    """The download cache folder."""
    return os.fspath(cache_dir) if cache_dir is not None else settings.cache_dir()


def fetch_verified(
    tracker: Tracker,
    checkpoint: LoggedCheckpoint,
    cache_dir: str | os.PathLike[str] | None = None,
    verify: bool = False,
) -> str:
    """The checkpoint's file in the cache, downloaded through `tracker` unless a verified copy is there.

    A file the tracker hashed as it wrote it (an incremental checkpoint's rebuild, see
    `files.note_written_sha256`) is checked against the record with that hash, not read again.

    Raises:
        ChecksumError: no valid sha256 is recorded, or the downloaded bytes do not match it.
    """
    record = checkpoint.record
    if not re.fullmatch(r"[0-9a-f]{64}", record.sha256 or ""):
        raise ChecksumError(f"{record.name} has no valid sha256 recorded; it cannot be verified.")
    folder = os.path.join(cache_root(cache_dir), record.sha256)
    path = os.path.join(folder, safe_file_name(os.path.basename(record.filepath) or f"checkpoint.{record.format}"))
    if _verified(path, record.sha256, rehash=verify):
        return path
    os.makedirs(folder, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp,
        Progress(f"tracked-ckpt: pulling {record.name}", record.size_bytes, 1) as bar,
    ):
        stop_watching = watch_folder_size(tmp, bar)
        try:
            fetched = registry_of(tracker, "download checkpoints").fetch(checkpoint, tmp)
        finally:
            stop_watching()
        sha = written_sha256(fetched) or sha256_file(fetched)[0]  # a rebuilt file was hashed as it was written
        if sha != record.sha256:
            raise ChecksumError(
                f"Checksum mismatch for {record.name}: downloaded sha256 {sha[:12]}... "
                f"but {record.sha256[:12]}... was recorded. The stored copy is damaged or was "
                "replaced; re-log the checkpoint or pick another version."
            )
        os.replace(fetched, path)
    _mark_verified(path, record.sha256)
    return path


def _stamp(path: str) -> dict[str, int]:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _verified(path: str, sha256: str, rehash: bool = False) -> bool:
    """A cached file is trusted while it is unchanged since it was hashed (same size, mtime, inode).

    Hashing a large checkpoint on every warm load would cost a good part of the
    load itself, so the hash is redone only when the file changed (or `rehash`).
    """
    marker = path + ".verified"
    try:
        if rehash:
            raise ValueError("re-hash requested")
        with open(marker) as f:
            saved = json.load(f)
        if saved.get("sha256") != sha256 or saved.get("stamp") != _stamp(path):
            raise ValueError("changed since verified")
        return True
    except (OSError, ValueError):
        if os.path.exists(path):
            # No (or a stale) marker: hash once; keep the file if it is intact.
            sha, _ = sha256_file(path)
            if sha == sha256:
                _mark_verified(path, sha256)
                return True
            logger.warning("Cached %s is corrupted; downloading it again.", path)
            os.remove(path)
        return False


def _mark_verified(path: str, sha256: str) -> None:
    with open(path + ".verified", "w") as f:
        json.dump({"sha256": sha256, "stamp": _stamp(path)}, f)
