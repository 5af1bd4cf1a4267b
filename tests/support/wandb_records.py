"""What the W&B SDK wrote into an offline run, for tests: read with the product's reader.

`tracked_ckpt.integrations.wandb_offline` reads the `run-<id>.wandb` transaction
log; this adds what only tests need: waiting for a finished run's log to be
complete, and every artifact record (tracked-ckpt's or not), history row and
summary update as plain values.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any

from tracked_ckpt.integrations.wandb_offline import read_records, transaction_log


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


def finished_records(run_dir: str, timeout: float = 15.0) -> list[Any]:
    """The records of a finished run, once all are on disk.

    `run.finish()` can return before wandb-core has flushed the end of the log,
    so wait until the file holds the run's `exit` record.
    """
    deadline = time.monotonic() + timeout
    while True:
        log = transaction_log(run_dir)
        records = list(read_records(log)) if log else []
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


def run_display_name(run_dir: str) -> str:
    """The run's display name ("" if it has none), from its run record."""
    runs = [r.run for r in finished_records(run_dir) if r.WhichOneof("record_type") == "run"]
    return runs[-1].display_name if runs else ""


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
