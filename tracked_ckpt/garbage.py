"""Giving back the space of deleted incremental checkpoints: `collect_garbage`, and `tracked-ckpt gc`.

An incremental checkpoint (`storage="incremental"`) keeps a manifest in the tracker and its bytes
as chunks, in packs shared by every checkpoint of the destination (MLflow: the experiment).
Deleting a checkpoint (`keep_top_k`, or by hand) removes only its manifest, never a pack, since
other checkpoints may share it; `collect_garbage` then removes the packs no remaining checkpoint
references, with the two-run mark-and-sweep of `tracked_ckpt.packgc`:

- a run *condemns* the packs no live manifest references, and *deletes* those condemned by an
  earlier run at least `grace_seconds` ago that are still unreferenced (a pack referenced again
  meanwhile is rescued);
- live means every checkpoint that is not deleted, finished or not: one whose upload is in
  progress counts as soon as its manifest is written, and its packs uploaded before that are
  protected by the grace period (default 24 hours: longer than any upload).

The guarantee: **no pack a live checkpoint references is ever deleted**, provided a writer makes
its manifest live within the grace period of listing the store (every upload does, unless it is
stuck for a day; a retried upload lists the store again). Each step is one idempotent request in
an order that is safe to stop anywhere, so killing a collection at any point leaves at worst
garbage the next run removes; two collections at once are safe too. Nothing runs it
automatically: retention deletes manifests, and space comes back when you run it (e.g. daily).

Example:

```python
import tracked_ckpt

for store in tracked_ckpt.collect_garbage(experiment="digits-demo"):
    print(store.store, store.bytes_freed)
```
"""

from __future__ import annotations

import logging
import math

from tracked_ckpt.fits import last_destination, wait
from tracked_ckpt.packgc import DEFAULT_GRACE_SECONDS, StoreCollected
from tracked_ckpt.tracker import Tracker, TrackerChunkStores, TrackerError, registry_of, resolve_tracker, tracker_key

logger = logging.getLogger("tracked_ckpt")


def collect_garbage(
    *,
    experiment: str | None = None,
    tracker: str | Tracker = "mlflow",
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
) -> list[StoreCollected]:
    """Remove the chunk-store packs no incremental checkpoint of an experiment references any more.

    One run of the mark-and-sweep described in this module: a pack is deleted by the first run
    at least `grace_seconds` after the run that condemned it, so space comes back on the second
    run. Safe while fits log into the experiment, and safe to interrupt.

    Args:
        experiment: the experiment (MLflow) whose chunk store to collect; `"*"`: every experiment
            of the store; default: the experiment of the last fit in this process, else that of
            the store's most recent checkpoint.
        tracker: the tracker name or object.
        grace_seconds: how long a condemned pack waits before it is deleted; it must exceed the
            longest upload of a checkpoint (0 deletes on the second run: only when nothing is
            being logged into the experiment).

    Returns:
        what the run did, per chunk store.

    Raises:
        TrackerError: the tracker keeps no chunk stores.

    Example:
        ```python
        report = collect_garbage(experiment="digits-demo", grace_seconds=3600)
        ```
    """
    if not (isinstance(grace_seconds, (int, float)) and math.isfinite(grace_seconds) and grace_seconds >= 0):
        raise ValueError(f"grace_seconds='{grace_seconds}' is not a number of seconds >= 0: use e.g. 86400.")
    tracker = resolve_tracker(tracker)
    if not isinstance(tracker, TrackerChunkStores):
        raise TrackerError(
            f"The {tracker.display_name} tracker ({type(tracker).__name__}) keeps no chunk stores, so it has "
            "no garbage to collect."
        )
    wait()  # fits that returned with uploads still running: their manifests count
    scope = registry_of(tracker, "collect garbage").scope(None, experiment, last=last_destination(tracker_key(tracker)))
    reports = tracker.collect_chunk_garbage(scope, grace_seconds=float(grace_seconds))
    for report in reports:
        logger.info(
            "%s: %d live checkpoint(s); %d pack(s) deleted, %d bytes freed",
            report.store,
            report.checkpoints,
            len(report.collected.deleted),
            report.bytes_freed,
        )
    return reports


__all__ = ["DEFAULT_GRACE_SECONDS", "StoreCollected", "collect_garbage"]
