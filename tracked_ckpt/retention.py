"""Retention: keep the K best checkpoints by the monitored metric, plus the latest.

Pure policy (`to_evict`) plus the bookkeeping the callback uses (`Retention`).
The ranking is a whole job's: every checkpoint one callback logged into a run,
across its fits (a two-stage fine-tune) and, through resume by job key, across
the processes of a preempted job; checkpoints of other runs never compete.
Deleting is the trackers' job (`delete_checkpoint`), which refuses checkpoints
that were promoted or aliased; those are kept and never asked about again.
An incremental checkpoint's deletion removes its manifest only: its packs, which
others may share, come back with `tracked_ckpt.garbage` (`tracked-ckpt gc`),
which retention never runs itself (a collection reads every manifest of the
experiment: a cost for a maintenance job, not for each epoch).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from tracked_ckpt.record import CheckpointRecord, best_first

logger = logging.getLogger("tracked_ckpt")


@dataclasses.dataclass
class Kept:
    """A logged checkpoint that retention may still delete."""

    record: CheckpointRecord
    refs: dict[str, str]  # tracker name -> the tracker's id
    destinations: dict[str, Mapping[str, Any]]
    protected: bool = False


def to_evict(kept: list[Kept], k: int, mode: str) -> list[Kept]:
    """The checkpoints outside the K best (by value, missing values last) and the latest (of one run).

    `kept` is in the order the checkpoints were logged: the latest is the last one, whatever its
    step (a second fit that recompiles the model starts its optimizer's step count again).
    """
    if len(kept) <= k:
        return []
    latest = kept[-1]
    ranked = sorted(kept, key=lambda c: best_first(c.record, mode=mode))
    keep = {id(c) for c in ranked[:k]} | {id(latest)}
    return [c for c in kept if id(c) not in keep and not c.protected]


def same_runs(a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether two checkpoints were logged into the same run of each tracker (whoever started it)."""

    def runs(destinations: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        return {
            name: str(d.get("run_id") or d.get("deferred") or sorted(d.items())) for name, d in destinations.items()
        }

    return runs(a) == runs(b)


def check_keep_top_k(k: Any) -> int:
    """Check a `keep_top_k` value: an integer >= 1."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"keep_top_k={k!r} would keep nothing: pass an integer >= 1, or None to keep all.")
    return k


class Retained:
    """The checkpoints `keep_top_k` may still delete: one callback's, across its fits (a lock of its own).

    A copy of the callback (KerasTuner's deepcopy, Ray's pickle) starts with none: it logs into
    runs of its own, and a resumed job finds the run's earlier checkpoints on the tracker.
    """

    def __init__(self) -> None:
        self.kept: list[Kept] = []
        self.lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.kept = []
        self.lock = threading.Lock()


class Retention:
    """Applies `keep_top_k` after each fully logged checkpoint, on the tracker and on disk.

    Args:
        k: how many of the best checkpoints to keep (the latest is kept too).
        delete: (tracker name, ref, destination) -> False when the tracker refused (protected).
        in_use: local paths that checkpoints still waiting to be logged point at.
        file_lock: held by the training thread while Keras writes and the file is staged,
            so a local file is never deleted while a newer save of the same path happens.
        retained: the checkpoints logged so far that retention may still delete, shared by
            the fits of one callback (the callback keeps it; each fit's session binds it).
    """

    def __init__(
        self,
        k: int,
        delete: Callable[[str, str, Mapping[str, Any]], bool],
        in_use: Callable[[], set[str]],
        file_lock: threading.RLock,
        retained: Retained | None = None,
    ):
        self.k = check_keep_top_k(k)
        self.delete = delete
        self.in_use = in_use
        self.file_lock = file_lock
        retained = retained if retained is not None else Retained()
        self.kept = retained.kept
        self._lock = retained.lock  # two fits of one callback (one still ending) share the list

    def add(
        self, record: CheckpointRecord, refs: Mapping[str, str], destinations: Mapping[str, Mapping[str, Any]]
    ) -> None:
        """Note a checkpoint every tracker confirmed, then delete what falls out of the top K."""
        with self._lock:
            added = Kept(record, dict(refs), dict(destinations))
            self.kept.append(added)
            same_run = [c for c in self.kept if same_runs(c.destinations, added.destinations)]
            for victim in to_evict(same_run, self.k, record.mode):
                self._evict(victim)

    def seed(self, earlier: list[Kept]) -> None:
        """Rank checkpoints logged before this process (a resumed job's), unless already known."""
        with self._lock:
            known = {(c.record.name, tuple(sorted(c.refs.items()))) for c in self.kept}
            self.kept.extend(c for c in earlier if (c.record.name, tuple(sorted(c.refs.items()))) not in known)

    def _evict(self, victim: Kept) -> None:
        refused = []
        for tracker, ref in victim.refs.items():
            try:
                if not self.delete(tracker, ref, victim.destinations[tracker]):
                    refused.append(tracker)
            except Exception as exc:  # a failed delete loses nothing: try again next time
                logger.warning("Could not delete %s from %s: %s", victim.record.name, tracker, exc)
                return
        if refused:
            victim.protected = True
            logger.info("Keeping %s: it is promoted or aliased in %s.", victim.record.name, ", ".join(refused))
            return
        self.kept.remove(victim)
        with self.file_lock:
            # A templated path can repeat (e.g. {batch}): keep it while a newer checkpoint uses it.
            still_used = {c.record.filepath for c in self.kept} | self.in_use()
            if victim.record.filepath not in still_used:
                try:
                    os.remove(victim.record.filepath)
                except FileNotFoundError:
                    pass
        logger.info("Deleted %s (outside the best %d).", victim.record.name, self.k)
