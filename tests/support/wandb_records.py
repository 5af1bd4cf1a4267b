"""Read what the W&B SDK wrote into an offline run: its `run-<id>.wandb` transaction log.

wandb 0.31 ships no Python reader for this file (`wandb.sdk.internal.datastore`
was removed when the internal process moved to the Go `wandb-core`), so this is
the ~30-line LevelDB-log reader the format needs: a 7-byte file header
(`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of chunks (crc32 u32,
length u16, type u8: FULL, FIRST, MIDDLE, LAST; the crc is zlib's crc32 of the
data seeded with that of the type byte), each record a serialised
`wandb.proto.wandb_internal_pb2.Record`, decoded with wandb's own protobuf
classes. The format is internal to W&B: if a wandb upgrade changes it, the
header or crc check below fails loudly rather than reading garbage.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of a `.wandb` transaction log, in write order."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < _HEADER:  # wandb-core has not written the header yet
        return
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path} is not a W&B transaction log: header {(ident, magic, version)}")
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        chunk = data[pos : pos + length]
        pos += length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"{path}: bad crc at byte {pos - length}")
        pending = chunk if kind in (_FULL, _FIRST) else pending + chunk
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@dataclasses.dataclass
class LoggedFile:
    path: str  # name inside the artifact
    md5_b64: str  # the manifest digest (base64 MD5)
    local_path: str  # what `wandb sync` uploads
    size: int


@dataclasses.dataclass
class LoggedArtifact:
    run_id: str
    project: str
    name: str
    type: str
    digest: str
    aliases: list[str]
    metadata: dict[str, Any]
    files: list[LoggedFile]
    description: str = ""


def run_dirs(wandb_dir: str) -> list[str]:
    """Offline run directories under a `WANDB_DIR`, oldest first."""
    return sorted(glob.glob(os.path.join(wandb_dir, "wandb", "offline-run-*")))


def transaction_log(run_dir: str) -> str:
    (path,) = glob.glob(os.path.join(run_dir, "run-*.wandb"))
    return path


def finished_records(run_dir: str, timeout: float = 15.0) -> list[wandb_internal_pb2.Record]:
    """The records of a finished run, once all are on disk.

    `run.finish()` can return before wandb-core has flushed the end of the log,
    so wait until the file holds the run's `exit` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(read_records(transaction_log(run_dir)))
        except ValueError:  # a chunk still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def logged_artifacts(run_dir: str) -> list[LoggedArtifact]:
    """The artifact records of a finished offline run, in logging order."""
    out = []
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") != "artifact":
            continue
        art = record.artifact
        out.append(
            LoggedArtifact(
                run_id=art.run_id,
                project=art.project,
                name=art.name,
                type=art.type,
                digest=art.digest,
                aliases=list(art.aliases),
                metadata=json.loads(art.metadata) if art.metadata else {},
                files=[LoggedFile(e.path, e.digest, e.local_path, e.size) for e in art.manifest.contents],
                description=art.description,
            )
        )
    return out


def history_rows(run_dir: str) -> list[dict[str, Any]]:
    """The run-history rows of a finished offline run, keys joined with "/", values JSON-decoded."""
    rows = []
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def run_summary(run_dir: str) -> dict[str, Any]:
    """The summary a finished offline run ends with (its updates applied in order), values JSON-decoded."""
    summary: dict[str, Any] = {}
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "summary":
            for item in record.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary
