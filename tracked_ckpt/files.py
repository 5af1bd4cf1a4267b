"""File helpers shared by the spool, the registry and the trackers: link, hash, name safely."""

from __future__ import annotations

import hashlib
import os
import shutil

_CHUNK = 1 << 20


def link_or_copy(src: str, dst: str) -> None:
    """Make `dst` hold the bytes of `src`: a hard link (no copy, constant time) where the
    filesystem allows it, else a copy."""
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported
        shutil.copyfile(src, dst)


def sha256_file(path: str) -> tuple[str, int]:
    """Return (hex sha256, size in bytes) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def safe_file_name(name: str) -> str:
    """A checkpoint file name that cannot escape its folder.

    Raises:
        ValueError: the name is empty, a path, or a special name like `..`.
    """
    plain = name.replace("\\", "/")
    if "/" in plain or plain in ("", ".", "..") or "\x00" in plain:
        raise ValueError(f"Refusing checkpoint file name {name!r}: it would escape the download folder.")
    return plain
