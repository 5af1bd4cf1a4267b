"""The chunk store's layout and formats: where packs, index files and markers live, and the manifest.

`TrackedModelCheckpoint(storage="incremental")` (or "auto" for a large file, see
`tracked_ckpt.storage`) logs through it on trackers that can (`Tracker.stores_incremental`:
MLflow, whose store per experiment is `tracked_ckpt.integrations.mlflow_chunks`).

A content-addressed chunk store on any `BlobStore`, in which each checkpoint costs the chunks it
changed. `pack_writer.store_file` cuts a file into content-defined chunks (`tracked_ckpt.chunking`),
uploads the chunks the store lacks packed into a few large pack files, and returns a `Manifest`
(this module): the file's chunks in order, where each one lives, and the file's size and sha256.
The tracker is to keep the manifest in place of the file. `pack_reader.restore_file` rebuilds the
byte-identical file from a manifest, downloading only the packs a local `pack_cache.PackCache`
lacks, and verifies the chunks of the packs it downloads and the whole file.
`packgc.collect_garbage` removes the packs no live manifest references.

Layout in the store (restic's and git's packfiles are the model):

    packs/<digest>          chunks' bytes, concatenated
    index/<sha256>.json     which chunks the packs of one `store_file` hold, and where
    condemned/<pack>@<t>    marked for collection at unix time t (`tracked_ckpt.packgc`)

A pack is named by the sha256 of its chunk table (each chunk's sha256 and length, in order) and a
random salt: computed without another pass over the bytes, and never the name of an earlier upload,
which a garbage collection may be deleting (see `pack_writer`: names need only be unique, readers
verify chunks). Packs and index files are
written once and never changed; the index only tells writers what the store holds (what a
listing of `packs/` confirms: an entry whose pack is not listed, or is condemned, is not used),
and readers need only the manifest and the packs it names.

Order of writes: packs, then their index, then (by the caller) the manifest. A writer killed
anywhere leaves at worst packs no manifest references, which `packgc.collect_garbage` removes.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from tracked_ckpt.chunking import ChunkParams
from tracked_ckpt.errors import ChunkStoreError as ChunkStoreError

FORMAT_VERSION = 1
PACKS = "packs/"
INDEXES = "index/"
CONDEMNED = "condemned/"
_MANIFEST_FORMAT = "tracked-ckpt.manifest"
_INDEX_FORMAT = "tracked-ckpt.pack-index"


_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")


def checked_digest(text: str) -> str:
    """`text` if it is a sha256 in hex (as every pack, chunk and index name is), else ValueError.

    Every name read from a store or a manifest goes through it before it becomes a path.
    """
    if not _HEX_DIGEST.fullmatch(text):
        raise ValueError(f"not a sha256 digest: {text!r}")
    return text


@dataclasses.dataclass(frozen=True)
class ChunkLocation:
    """Where a chunk's bytes are: `length` bytes at `offset` in pack `pack`."""

    digest: str
    length: int
    pack: str
    offset: int


@dataclasses.dataclass(frozen=True)
class Manifest:
    """A file as the chunk store holds it (versioned JSON, see `to_json`).

    Attributes:
        name: the file's name (e.g. `model.keras`), for messages.
        size: its size in bytes.
        sha256: its sha256 (hex).
        params: how it was cut (the next version is cut the same way).
        chunks: its chunks in order.
    """

    name: str
    size: int
    sha256: str
    params: ChunkParams
    chunks: tuple[ChunkLocation, ...]

    @property
    def packs(self) -> tuple[str, ...]:
        """The packs the file needs, in the order its chunks first use them."""
        return tuple(dict.fromkeys(chunk.pack for chunk in self.chunks))

    def to_json(self) -> dict[str, Any]:
        """The JSON form; each chunk is `[sha256, length, pack number in "packs", offset]`."""
        packs = self.packs
        number = {pack: i for i, pack in enumerate(packs)}
        return {
            "format": _MANIFEST_FORMAT,
            "version": FORMAT_VERSION,
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "chunking": self.params.to_json(),
            "packs": list(packs),
            "chunks": [[c.digest, c.length, number[c.pack], c.offset] for c in self.chunks],
        }

    def to_bytes(self) -> bytes:
        """The JSON form as compact UTF-8 bytes."""
        return json.dumps(self.to_json(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Read `to_json`'s form back; anything else raises ValueError naming what is wrong."""
        if data.get("format") != _MANIFEST_FORMAT:
            raise ValueError("not a tracked-ckpt chunk manifest")
        if data.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"chunk manifest version {data.get('version')} is not supported by this tracked-ckpt "
                f"(it reads version {FORMAT_VERSION}): upgrade tracked-ckpt"
            )
        packs = [checked_digest(pack) for pack in data["packs"]]
        chunks = tuple(ChunkLocation(checked_digest(d), int(n), packs[p], int(o)) for d, n, p, o in data["chunks"])
        manifest = cls(
            str(data["name"]), int(data["size"]), str(data["sha256"]), ChunkParams.from_json(data["chunking"]), chunks
        )
        if sum(chunk.length for chunk in chunks) != manifest.size:
            raise ValueError(f"chunk manifest of {manifest.name} is inconsistent: its chunks do not add up to its size")
        return manifest

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        """Read `to_bytes`'s form back."""
        return cls.from_json(json.loads(data))


def condemned_marker(pack: str, when: float) -> str:
    """The name of the mark `packgc` puts on an unreferenced pack at unix time `when`."""
    return f"{CONDEMNED}{pack}@{int(when)}"


def parse_condemned(name: str) -> tuple[str, int] | None:
    """The pack and time a condemned marker names, or None if `name` is not one."""
    pack, at, when = name.removeprefix(CONDEMNED).rpartition("@")
    return (pack, int(when)) if at and when.isdigit() else None


def index_to_bytes(packs: Mapping[str, Sequence[ChunkLocation]]) -> bytes:
    """An index file's bytes: which chunks each of `packs` holds, and where (versioned JSON)."""
    table = {pack: [[c.digest, c.offset, c.length] for c in chunks] for pack, chunks in packs.items()}
    return json.dumps(
        {"format": _INDEX_FORMAT, "version": FORMAT_VERSION, "packs": table}, separators=(",", ":")
    ).encode()


def index_from_bytes(data: bytes) -> list[ChunkLocation]:
    """The chunks an index file lists; anything but `index_to_bytes`'s form raises ValueError."""
    parsed = json.loads(data)
    if parsed.get("format") != _INDEX_FORMAT or parsed.get("version") != FORMAT_VERSION:
        raise ValueError("not a pack index this tracked-ckpt reads")
    table = parsed["packs"]
    return [
        ChunkLocation(checked_digest(d), int(n), checked_digest(p), int(o))
        for p, rows in table.items()
        for d, o, n in rows
    ]
