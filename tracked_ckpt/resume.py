"""Resume: the local state a restart on the same machine continues from, and resume by job key.

`resume=True` keeps `LocalState`, a small JSON file beside the spool naming the
latest checkpoint, the best so far and the runs logged to; a restart reads it,
`restore` reloads the checkpoint, and the callback continues at the next epoch.

Resume by job key: a restarted job finds its run on the tracker and continues from there.

`TrackedModelCheckpoint(..., resume="<job key>")` records the key on the run.
When a job with that key starts again, possibly on another machine with an
empty disk, it attaches to the run holding the key, downloads the run's newest
complete checkpoint through the registry's verified, hash-keyed cache (the one
`load_model` uses), and continues: same run, next epoch, best-so-far kept.
Local state left by the same job on this machine, when present and consistent,
is used first and nothing is downloaded.

Two jobs must not log into one run at once: the key's run holds a lease
(`tracked_ckpt.lease`) that the job holding the key keeps alive while it trains;
a job starting with a key whose holder is alive refuses with `JobLockedError`.

Trackers take part through `tracked_ckpt.tracker.TrackerJobKeys` (`find_job`,
`job_info`, `set_job_info`, `job_checkpoints`); a tracker without them cannot resume by key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from tracked_ckpt.cache import fetch_verified
from tracked_ckpt.errors import JobLockedError as JobLockedError
from tracked_ckpt.lease import JobLease, checkpoint_summary
from tracked_ckpt.lease import Lease as Lease
from tracked_ckpt.record import CheckpointRecord, best_first, split_checkpoint_name
from tracked_ckpt.retention import Kept, Retention
from tracked_ckpt.tracker import LoggedCheckpoint, Tracker, TrackerError, TrackerJobKeys, job_keys_of

logger = logging.getLogger("tracked_ckpt")

_MAX_KEY_LENGTH = 200


@dataclasses.dataclass(frozen=True)
class LastCheckpoint:
    """The job's latest checkpoint file: what a restart loads, and the epoch it continues after."""

    filepath: str
    epoch: int
    step: int
    batch: int | None = None  # a batch-level save: its epoch is run again from the start


@dataclasses.dataclass(frozen=True)
class ResumeState:
    """What a restarted job needs: its latest checkpoint, the best so far and where it logged.

    Attributes:
        last: the latest checkpoint.
        destinations: tracker name -> the destination its `start` returned.
        best_value, best_name: the best monitored value among logged checkpoints, and its name.
        keras_best: Keras's own `best` (`save_best_only` compares against it).
        job_key: the job key (`resume="key"`), or None for `resume=True`.
    """

    last: LastCheckpoint
    destinations: dict[str, dict[str, Any]]
    best_value: float | None = None
    best_name: str | None = None
    keras_best: float | None = None
    job_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResumeState:
        """The state from its JSON form.

        Raises:
            KeyError, TypeError: a field is missing or of the wrong shape.
        """
        return cls(
            last=LastCheckpoint(**data["last"]),
            destinations={str(k): dict(v) for k, v in data["destinations"].items()},
            best_value=data.get("best_value"),
            best_name=data.get("best_name"),
            keras_best=data.get("keras_best"),
            job_key=data.get("job_key"),
        )


class LocalState:
    """The job's resume state on local disk (`resume.json` beside the spool), written after every save.

    It names the latest checkpoint (file, epoch, batch, step), the best value and
    checkpoint so far, Keras's own `best`, the tracker destinations logged to and
    the job key, if any. Written atomically; removed once the job completes.

    Args:
        path: the state file.
    """

    def __init__(self, path: str):
        self.path = path

    def read(self) -> ResumeState | None:
        """The state, or None when there is none (the first start).

        Raises:
            ValueError: the file exists but cannot be read; the message says to delete it.
        """
        try:
            with open(self.path) as f:
                return ResumeState.from_json(json.load(f))
        except FileNotFoundError:
            logger.info("resume=True: no earlier state in %s; starting afresh.", self.path)
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"Cannot resume: {self.path} is unreadable ({exc}); delete it to start afresh.") from exc

    def write(self, state: ResumeState) -> None:
        """Write the state (atomically: a reader sees the old or the new state)."""
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state.to_json(), f)
        os.replace(tmp, self.path)

    def clear(self) -> None:
        """Forget the state: the job completed, so the next fit starts afresh."""
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def restore(model: Any, state: ResumeState, state_path: str) -> int:
    """Load the state's latest checkpoint into `model` (weights and optimizer); return the epoch to start at.

    An epoch cut off after a batch-level save is run again from its start.

    Raises:
        FileNotFoundError: the checkpoint file is gone; the message names the fixes.
        ValueError: the model is not built yet.
    """
    last = state.last
    path = last.filepath
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Cannot resume: the latest checkpoint {path} is gone. Restore it (e.g. "
            f"tracked_ckpt.download_checkpoint) or delete {state_path} to start afresh."
        )
    if not model.built:
        raise ValueError("resume=True needs a built model: build it (or call it on a batch) before fit().")
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)  # so its state can be loaded too
    model.load_weights(path)
    return last.epoch if last.batch is None else last.epoch - 1


def seed_retention_from_run(
    retention: Retention,
    trackers: Mapping[str, Tracker],
    destinations: Mapping[str, Mapping[str, Any]],
    base_name: str,
) -> None:
    """Let keep_top_k rank what a run resumed with `resume=True` logged before this process.

    Resume by job key does the same from the checkpoints it found (`JobResume.seed_retention`).
    """
    if len(trackers) != 1:
        return  # with several trackers, the other trackers' ids of those checkpoints are unknown
    ((name, tracker),) = trackers.items()
    destination = destinations.get(name)
    if not isinstance(tracker, TrackerJobKeys) or not destination:
        return
    try:
        earlier = tracker.job_checkpoints(destination, base_name)
    except Exception as exc:  # retention then ranks this process's checkpoints only
        logger.warning("keep_top_k cannot see the checkpoints logged before this resume: %s", exc)
        return
    retention.seed([Kept(c.record, {name: c.id}, {name: destination}) for c in earlier])


def validate_job_key(key: Any) -> str:
    """Check a job key: a non-empty printable string of at most 200 characters."""
    if not isinstance(key, str) or not key.strip() or len(key) > _MAX_KEY_LENGTH or not key.isprintable():
        raise ValueError(
            f"Invalid resume={key!r}: pass True, or a job key (a printable string of 1-{_MAX_KEY_LENGTH} "
            "characters, e.g. the Kubernetes Job name) that names this job across restarts."
        )
    return key


class JobResume:
    """The callback's side of `resume="<job key>"`: find the run, guard it, restore from it.

    Args:
        key: the job key.
        trackers: the callback's trackers by name; each must be a `TrackerJobKeys` too.
    """

    def __init__(self, key: str, trackers: Mapping[str, Tracker]):
        self.key = validate_job_key(key)
        self.trackers: dict[str, Tracker] = dict(trackers)
        self._jobs = {name: job_keys_of(tracker) for name, tracker in self.trackers.items()}  # the same objects
        self.lease = JobLease(self.key, self.trackers, self._jobs)
        self.destinations: dict[str, dict[str, Any]] = {}
        self.resumed_from: LoggedCheckpoint | None = None
        self._checkpoints: list[LoggedCheckpoint] = []  # the run's checkpoints up to resumed_from

    # -- the start of fit ------------------------------------------------------------------

    def begin(
        self,
        local_state: ResumeState | None,
        start: Callable[[Mapping[str, Mapping[str, Any]]], dict[str, dict[str, Any]]],
        base_name: str,
    ) -> tuple[ResumeState | None, dict[str, dict[str, Any]]]:
        """Find the key's run, refuse if a live job holds it, start the trackers there, claim it.

        Args:
            local_state: the callback's local resume state, if any.
            start: starts every tracker, given the destinations to resume (by tracker name);
                returns the destinations it logs to.
            base_name: the callback's checkpoint base name (only its checkpoints are resumed from).

        Returns:
            (the state to restore, or None to start afresh; the destinations).
        """
        local = local_state if self._usable(local_state) else None
        previous = dict(local.destinations) if local else self._find()
        for name, destination in previous.items():
            self._checked(local is not None, self.lease.wait_for_holder, name, destination)
        if local and self._newer_on_tracker(local):
            local = None  # e.g. machine A -> B -> A: B went further than A's own state knows
        self.destinations = start(previous)
        self._checked(local is not None, self.lease.claim, self.destinations)
        self.lease.start_heartbeat(self.destinations)
        if local:
            logger.info("Resuming job %r from local state (%s).", self.key, local.last.filepath)
            return local, self.destinations
        try:
            return self._remote_state(base_name), self.destinations
        except BaseException:
            self.release()  # fit never starts: a retry in this process must not meet its own lease
            raise

    def _checked(self, have_local_state: bool, check: Callable[..., None], *args: Any) -> None:
        """Run a lease check; with local state to go on, an unreachable tracker does not stop training."""
        try:
            check(*args)
        except JobLockedError:
            raise
        except Exception as exc:
            if not have_local_state:
                raise
            logger.warning("Job %r: could not check its lease (%s); resuming from local state.", self.key, exc)

    def _usable(self, state: ResumeState | None) -> bool:
        if state is None:
            return False
        if state.job_key != self.key:
            logger.info(
                "Local resume state belongs to another job (%r): resuming job %r from the tracker.",
                state.job_key,
                self.key,
            )
            return False
        if not os.path.exists(state.last.filepath):
            logger.info(
                "Local resume state names a checkpoint that is gone: resuming job %r from the tracker.", self.key
            )
            return False
        return all(name in state.destinations for name in self.trackers)

    def _newer_on_tracker(self, local: ResumeState) -> bool:
        """Whether the run's lease names a newer logged checkpoint than the local state's latest."""
        step = local.last.step
        for lease in self.lease.previous.values():
            latest = (lease.latest if lease else None) or {}
            if int(latest.get("step", -1)) > step:
                logger.info(
                    "Job %r: its run holds a newer checkpoint (%s, step %s) than the local state "
                    "(step %d): resuming from the tracker.",
                    self.key,
                    latest.get("name"),
                    latest.get("step"),
                    step,
                )
                return True
        return False

    def _find(self) -> dict[str, dict[str, Any]]:
        found = {}
        for name, tracker in self.trackers.items():
            try:
                destination = self._jobs[name].find_job(self.key)
            except Exception as exc:
                raise TrackerError(
                    f"Cannot look up job {self.key!r} on {tracker.display_name}: {exc}. Resuming needs the "
                    "tracker; start the job again once it answers (a restart loop does this for you)."
                ) from exc
            if destination is not None:
                found[name] = destination
        return found

    def _remote_state(self, base_name: str) -> ResumeState | None:
        """Download the newest complete checkpoint of the key's run; the state `restore` takes."""
        for name, tracker in self.trackers.items():
            checkpoints = self._jobs[name].job_checkpoints(self.destinations[name], base_name)
            if not checkpoints:
                continue
            newest = max(checkpoints, key=_order)
            self._say_if_newer_was_deleted(self.lease.previous.get(name), newest)
            path = fetch_verified(tracker, newest)
            self.resumed_from = newest
            self._checkpoints = sorted((c for c in checkpoints if _order(c) <= _order(newest)), key=_order)
            self.lease.latest = checkpoint_summary(newest.record)  # until this job logs a newer one
            best = _best(self._checkpoints)
            record = newest.record
            logger.info(
                "Resuming job %r from %s (epoch %d) of run %s, downloaded from %s.",
                self.key,
                record.name,
                record.epoch,
                newest.run_id,
                tracker.display_name,
            )
            return ResumeState(
                last=LastCheckpoint(path, record.epoch, record.step, _batch(newest)),
                destinations=self.destinations,
                best_value=best.record.value if best else None,
                best_name=best.record.name if best else None,
                keras_best=best.record.value if best else None,
                job_key=self.key,
            )
        logger.info("Job %r has no complete checkpoint yet: training starts afresh in its run.", self.key)
        return None

    def _say_if_newer_was_deleted(self, lease: Lease | None, newest: LoggedCheckpoint) -> None:
        latest = (lease.latest if lease else None) or {}
        if latest and int(latest.get("step", -1)) > newest.record.step:
            logger.warning(
                "Job %r: its latest checkpoint %s (epoch %s) was deleted (keep_top_k, or by hand); resuming "
                "from %s (epoch %d), the newest one that survived.",
                self.key,
                latest.get("name"),
                latest.get("epoch"),
                newest.record.name,
                newest.record.epoch,
            )

    def seed_retention(self, retention: Retention | None) -> None:
        """Let keep_top_k rank the run's earlier checkpoints too, not only this fit's."""
        if retention is None or len(self.trackers) != 1:
            return  # with several trackers, the other trackers' ids of these checkpoints are unknown
        (name,) = self.trackers
        retention.seed([Kept(c.record, {name: c.id}, {name: self.destinations[name]}) for c in self._checkpoints])

    # -- while training --------------------------------------------------------------------

    def note_logged(self, record: CheckpointRecord) -> None:
        """A checkpoint is logged: the lease names it as the newest (written on the heartbeat thread)."""
        self.lease.note_logged(record)

    def release(self, write: bool = True) -> None:
        """Stop the lease's heartbeat and release the key (the next start with it need not wait).

        With `write=False` (the tracker stopped answering) the lease is left to expire
        after its window rather than written: writing would hang in the SDK's retries.
        """
        self.lease.release(write)


def _order(checkpoint: LoggedCheckpoint) -> tuple[int, int, bool]:
    """Newest last; at equal steps an epoch-end save comes after a batch save."""
    record = checkpoint.record
    return record.step, record.epoch, _batch(checkpoint) is None


def _batch(checkpoint: LoggedCheckpoint) -> int | None:
    """The batch of a batch-level save (the schema keeps it in the name, W&B in a `step-S` alias)."""
    if checkpoint.record.batch is not None:
        return checkpoint.record.batch
    batch = split_checkpoint_name(checkpoint.record.name)[2]
    if batch is not None:
        return batch
    return 0 if any(alias.startswith("step-") for alias in checkpoint.aliases) else None


def _best(checkpoints: list[LoggedCheckpoint]) -> LoggedCheckpoint | None:
    """The best by the records' own monitor; the earliest of equals (`min` keeps the first)."""
    ranked = [c for c in sorted(checkpoints, key=_order) if c.record.value is not None]
    return min(ranked, key=lambda c: best_first(c.record)[:2]) if ranked else None
