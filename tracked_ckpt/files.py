"""File helpers shared by the spool, the registry and the trackers: link, hash, name safely."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

logger = logging.getLogger("tracked_ckpt")

_CHUNK = 1 << 20
_FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int), the reflink ioctl of btrfs, XFS, bcachefs, ...


def link_or_copy(src: str, dst: str) -> None:
    """Make `dst` hold the bytes of `src`: a hard link (no copy, constant time) where the
    filesystem allows it, else a copy-on-write clone where it offers one, else a copy."""
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported
        if not clone_file(src, dst):
            shutil.copyfile(src, dst)


def clone_file(src: str, dst: str) -> bool:
    """Make `dst` a copy-on-write clone of `src` (a reflink: constant time, no bytes read).

    A clone shares the data blocks until either side is written, and a write to
    `src` afterwards (Keras rewriting a checkpoint in place) leaves `dst` as it
    was. Returns False, leaving no `dst`, where the filesystem cannot clone
    (ext4, tmpfs, across filesystems, other systems than Linux).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open(src, "rb") as source, open(dst, "xb") as target:
            try:
                fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
                return True
            except OSError:  # EOPNOTSUPP, EXDEV, EINVAL, ...: not offered here
                pass
    except OSError as exc:
        logger.debug("No clone of %s: %s", src, exc)
    try:
        os.remove(dst)
    except OSError:
        pass
    return False


def copy_hashing(src: str, dst: str) -> tuple[str, int]:
    """Copy `src` to a new file `dst` and return (hex sha256, size) of the bytes written, in one read.

    The digest is of exactly what `dst` holds, so it can stand for a later read of `dst`.
    """
    digest = hashlib.sha256()
    size = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    try:
        with open(src, "rb", buffering=0) as source, open(dst, "xb", buffering=0) as target:
            while n := source.readinto(buffer):
                chunk = view[:n]
                digest.update(chunk)
                while chunk:  # a raw write may be short
                    chunk = chunk[target.write(chunk) :]
                size += n
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(dst)  # a half-written copy must never pass for a snapshot
        raise
    return digest.hexdigest(), size


@dataclasses.dataclass(frozen=True)
class FileIdentity:
    """What tells one file's bytes from another's without reading them: a write changes the mtime."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, file: int | str | os.PathLike[str]) -> FileIdentity:
        """The identity of an open file descriptor, or of the file at a path."""
        status = os.fstat(file) if isinstance(file, int) else os.stat(file)
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


_WRITTEN_SHA256: dict[FileIdentity, str] = {}
_WRITTEN_LOCK = threading.Lock()
_WRITTEN_KEPT = 64


def note_written_sha256(path: str | os.PathLike[str], sha256: str) -> None:
    """Remember that the file at `path`, as it is now, has `sha256`, computed as it was written.

    `written_sha256` gives it back while the file is unchanged (same inode, size and modification
    time; a rename keeps them), in this process: a file rebuilt and verified as it was written
    (`pack_reader.restore_file`) is not hashed again by the download cache.
    """
    with _WRITTEN_LOCK:
        if len(_WRITTEN_SHA256) >= _WRITTEN_KEPT:
            del _WRITTEN_SHA256[next(iter(_WRITTEN_SHA256))]  # the oldest
        _WRITTEN_SHA256[FileIdentity.of(path)] = sha256


def written_sha256(path: str | os.PathLike[str]) -> str | None:
    """The sha256 `note_written_sha256` noted for the file at `path`, if it is unchanged since; else None."""
    with contextlib.suppress(OSError), _WRITTEN_LOCK:
        return _WRITTEN_SHA256.get(FileIdentity.of(path))
    return None


def sha256_file(path: str) -> tuple[str, int]:
    """Return (hex sha256, size in bytes) of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def create_in_folder(path: str, mode: str = "w") -> IO[Any]:
    """Open a new file at `path`, making its folder first (and again, if another process's
    `tracked-ckpt sync` removed the emptied folder in between)."""
    folder = os.path.dirname(path)
    for _ in range(2):
        os.makedirs(folder, exist_ok=True)
        try:
            return open(path, mode)  # the caller closes it (or holds it open)
        except FileNotFoundError:
            continue
    os.makedirs(folder, exist_ok=True)
    return open(path, mode)  # a third removal in a row is an error worth seeing


def check_writable(folder: str) -> None:
    """Make `folder` if needed and write a small probe file into it (removed again).

    Raises:
        OSError: the folder cannot be made or written (no space, permissions, read-only).
    """
    probe = os.path.join(folder, f".tracked-ckpt-write-test-{os.getpid()}-{threading.get_ident()}")
    with create_in_folder(probe, "wb") as f:
        f.write(b"0" * 4096)
    os.remove(probe)


#: Write errors a user fixes (space, quota, a read-only or forbidden folder), said in one line.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def checkpoint_write_error(exc: OSError, path: str) -> OSError | None:
    """The one-line error for a checkpoint Keras could not write, or None for an error we leave as it is."""
    if exc.errno not in DISK_ERRORS:
        return None
    fix = "Free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "Fix the folder's permissions"
    return OSError(
        exc.errno,
        f"Could not write checkpoint {path}: {exc.strerror}. {fix} or choose another filepath; "
        "the checkpoints saved before this one are on disk and logged (or waiting in the spool).",
    )


def check_folders_writable(checks: Sequence[tuple[str, str, Callable[[], None]]]) -> None:
    """Run each (folder, argument that names it, check) and fail in one line naming the argument to change."""
    for folder, argument, check in checks:
        try:
            check()
        except OSError as exc:
            raise OSError(
                f"Cannot write checkpoints to {folder}: {exc.strerror or exc}. "
                f"Free some space, fix the folder's permissions, or choose another {argument}."
            ) from exc


def safe_file_name(name: str) -> str:
    """A checkpoint file name that cannot escape its folder.

    Raises:
        ValueError: the name is empty, a path, or a special name like `..`.
    """
    plain = name.replace("\\", "/")
    if "/" in plain or plain in ("", ".", "..") or "\x00" in plain:
        raise ValueError(f"Refusing checkpoint file name {name!r}: it would escape the download folder.")
    return plain
