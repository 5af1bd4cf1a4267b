"""What a fit tells the user: a line per logged checkpoint (`verbose=1`) and the summary at its end.

The lines are made where the uploads are confirmed (the upload thread) and shown
on the training thread, between epochs, so they do not cut into Keras's progress
bar. Showing goes through the function the callback hands in (Keras's own
printing, which follows its interactive logging setting), so this module needs
no Keras.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tracked_ckpt.publisher import PublishReport
from tracked_ckpt.spool import SpoolEntry
from tracked_ckpt.tracker import Tracker

logger = logging.getLogger("tracked_ckpt")


class FitMessages:
    """The lines of one fit, queued until shown.

    Args:
        show: prints one line to the user (the callback passes Keras's `print_msg`).

    Example:
        >>> messages = FitMessages(print)
        >>> messages.show_queued()  # nothing queued: nothing shown
    """

    def __init__(self, show: Callable[[str], None]):
        self._show = show
        self._queued: collections.deque[str] = collections.deque()  # appended on the upload thread

    def logged(self, entry: SpoolEntry, tracker: str, ref: str) -> None:
        """Queue the line saying `entry` was logged to `tracker` (its display name) as `ref`."""
        self._queued.append(f"Epoch {entry.record.epoch}: logged {entry.record.name} to {tracker} ({ref})")

    def monitor_missing(self, monitor: str, level: str, logs: Mapping[str, Any]) -> None:
        """Warn that the monitored key is not in the `level` logs, naming the keys that are."""
        logger.warning(
            "monitor %r is not in the %s logs (available: %s): checkpoints are logged without a value "
            "and never count as best. Pass validation data, or monitor one of the available keys.",
            monitor,
            level,
            ", ".join(sorted(logs)) or "none",
        )

    def resumed(
        self,
        *,
        job_key: str | None,
        checkpoint: str,
        epoch: int,
        step: int,
        rerun: bool,
        runs: list[str],
        done: bool,
        verbose: bool = True,
    ) -> None:
        """Say in one line where a resumed fit continues from, or that its job had already completed.

        Shown with `verbose`, else a warning: either way a resume (which changes what `fit`
        trains) is never silent.

        Example:
            >>> FitMessages(print).resumed(job_key="job-7", checkpoint="net-e0003", epoch=3, step=45,
            ...                            rerun=False, runs=["run abc"], done=False)
            tracked-ckpt: resuming job 'job-7' from net-e0003, epoch 3, step 45, in run abc.
        """
        who = f"job {job_key!r}" if job_key else "the job"
        where = f", in {', '.join(runs)}" if runs else ""
        if done:
            line = (
                f"tracked-ckpt: {who} already completed ({checkpoint}, epoch {epoch}{where}): nothing is left to "
                "train. To train again, start with another job key (or resume=False), or ask fit for more epochs."
            )
        else:
            again = f" (epoch {epoch} runs again from its start)" if rerun else ""
            line = f"tracked-ckpt: resuming {who} from {checkpoint}, epoch {epoch}, step {step}{again}{where}."
        if verbose:
            self._show(line)
        else:
            logger.warning("%s", line)

    def show_queued(self) -> None:
        """Show the queued lines, oldest first."""
        while True:
            try:
                message = self._queued.popleft()
            except IndexError:  # another thread (an ending session's summary) showed the last one
                return
            self._show(message)

    def summarize(
        self,
        report: PublishReport,
        trackers: Mapping[str, Tracker],
        destinations: Mapping[str, Mapping[str, Any]],
        spool_directory: str,
        *,
        best: str | None,
        verbose: bool,
    ) -> None:
        """Say what the fit logged, where, and what waits in the spool; `best`: the best checkpoint, described.

        The summary is shown when `verbose`, else logged at INFO; what could not be
        logged is an error either way, naming the command that logs it.
        """
        self.show_queued()
        count = len({entry.id for entry, _, _ in report.logged})
        links = [url for key, tracker in trackers.items() if (url := tracker.run_url(destinations.get(key, {})))]
        if report.failed:
            logger.error(
                "%d checkpoint(s) could not be logged (%s) and are kept in %s; after fixing the cause, "
                "run `tracked-ckpt sync --retry-failed %s`.",
                len(report.failed),
                report.failed[0][1],
                spool_directory,
                spool_directory,
            )
        if report.pending:
            logger.error(
                "%d checkpoint(s) are not logged yet and wait in %s; run `tracked-ckpt sync %s` "
                "(or start the next fit with the same spool) to log them.",
                len(report.pending),
                spool_directory,
                spool_directory,
            )
        message = f"tracked-ckpt: logged {count} checkpoint(s)"
        message += f"; best {best}" if best is not None else ""
        message += f"; run: {', '.join(links)}" if links else ""
        if verbose:
            self._show(message)
        else:
            logger.info(message)
