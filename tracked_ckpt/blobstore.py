"""The storage a chunk store writes to: named, immutable blobs in a flat namespace.

`BlobStore` is the whole interface the chunk store needs from a tracker's storage (MLflow's
artifact repositories, W&B artifacts), so each tracker adapts to it in a few lines.
`LocalFolderStore` implements it on a folder: for tests, and for a destination that is a folder.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Protocol

from tracked_ckpt.errors import BlobNotFoundError as BlobNotFoundError

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override


class BlobStore(Protocol):
    """Named blobs; names are `/`-separated relative paths such as `packs/3f2a…`.

    Blobs are written once and never changed (their names are their content's digest, or the
    content does not matter), so a store needs no read-after-overwrite consistency.
    """

    def put(self, name: str, local_path: Path) -> None:
        """Store the bytes of `local_path` as `name`, replacing any blob of that name."""

    def get(self, name: str, local_path: Path) -> None:
        """Write blob `name` to `local_path`; raise `BlobNotFoundError` if the store has none."""

    def list(self, prefix: str) -> list[str]:
        """The names of every blob under the folder `prefix` (e.g. `packs/`), in any order."""

    def delete(self, name: str) -> None:
        """Remove blob `name`; no error if it is already gone."""


class LocalFolderStore(BlobStore):
    """A `BlobStore` on a local folder: blob `a/b` is the file `<root>/a/b`.

    A blob appears whole or not at all (written to a temporary file, then renamed), so a reader
    never sees half a pack, whatever happens to the writer.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> store = LocalFolderStore(root / "store")
        >>> _ = (root / "hello.txt").write_text("hello")
        >>> store.put("greetings/hello", root / "hello.txt")
        >>> store.list("greetings/")
        ['greetings/hello']
        >>> store.delete("greetings/hello")
        >>> store.list("greetings/")
        []
    """

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a blob name: {name!r}")
        return self.root.joinpath(*parts)

    @override
    def put(self, name: str, local_path: Path) -> None:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        # A new name, not an empty file made first: copying into an existing file truncates it,
        # and ext4 flushes a file truncated to 0 when it is closed.
        temporary = target.parent / f".incoming-{uuid.uuid4().hex}"
        try:
            shutil.copyfile(local_path, temporary)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @override
    def get(self, name: str, local_path: Path) -> None:
        source = self._path(name)
        if not source.is_file():
            raise BlobNotFoundError(f"{self.root}: no blob {name}")
        # Into a new file at `local_path`, not into the (empty) one there: copying into an existing
        # file truncates it, and ext4 flushes a file truncated to 0 when it is closed.
        Path(local_path).unlink(missing_ok=True)
        try:
            shutil.copyfile(source, local_path)
        except FileNotFoundError as exc:  # deleted meanwhile
            raise BlobNotFoundError(f"{self.root}: no blob {name}") from exc

    @override
    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/")) if prefix.strip("/") else self.root
        if not folder.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not path.name.startswith(".incoming-")
        )

    @override
    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)
