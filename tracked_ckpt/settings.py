"""Every `TRACKED_CKPT_*` environment variable, read in one place (at call time, so a job may set them late).

| variable | what it sets |
|---|---|
| `TRACKED_CKPT_CACHE` | the download cache folder (default `~/.cache/tracked_ckpt`) |
| `TRACKED_CKPT_GIT_REPO` | the repository whose commit is recorded (default: found from the job's folders) |
| `TRACKED_CKPT_LEASE_SECONDS` | the lease window of resume by job key (default 60) |
| `TRACKED_CKPT_PREEMPTION_GRACE` | seconds a preempted fit has to save and log before it ends (default 25) |
| `TRACKED_CKPT_PROGRESS` | `0` hides the end-of-fit progress bar on a terminal |
| `TRACKED_CKPT_SKIP_VERSION_CHECK` | `1` lets an untested Keras / MLflow / W&B version through |
| `TRACKED_CKPT_STALL_TIMEOUT` | the default `stall_timeout` (default 30 s) |
| `TRACKED_CKPT_UPLOAD_NICENESS` | how far the upload thread lowers its priority while training runs (default 10) |

The documentation's configuration page lists the same variables; `tests/test_settings.py` checks that it does.

Example:
    >>> import os
    >>> before = os.environ.pop("TRACKED_CKPT_LEASE_SECONDS", None)
    >>> lease_seconds()
    60.0
    >>> os.environ["TRACKED_CKPT_LEASE_SECONDS"] = "90"
    >>> lease_seconds()
    90.0
    >>> _ = os.environ.pop("TRACKED_CKPT_LEASE_SECONDS") if before is None else os.environ.update(
    ...     TRACKED_CKPT_LEASE_SECONDS=before)
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("tracked_ckpt")

CACHE = "TRACKED_CKPT_CACHE"
GIT_REPO = "TRACKED_CKPT_GIT_REPO"
LEASE_SECONDS = "TRACKED_CKPT_LEASE_SECONDS"
PREEMPTION_GRACE = "TRACKED_CKPT_PREEMPTION_GRACE"
PROGRESS = "TRACKED_CKPT_PROGRESS"
SKIP_VERSION_CHECK = "TRACKED_CKPT_SKIP_VERSION_CHECK"
STALL_TIMEOUT = "TRACKED_CKPT_STALL_TIMEOUT"
UPLOAD_NICENESS = "TRACKED_CKPT_UPLOAD_NICENESS"
VARIABLES = (
    CACHE,
    GIT_REPO,
    LEASE_SECONDS,
    PREEMPTION_GRACE,
    PROGRESS,
    SKIP_VERSION_CHECK,
    STALL_TIMEOUT,
    UPLOAD_NICENESS,
)

DEFAULT_LEASE_SECONDS = 60.0
DEFAULT_STALL_TIMEOUT = 30.0
# Below Kubernetes' default terminationGracePeriodSeconds (30 s), leaving the process time to exit.
DEFAULT_PREEMPTION_GRACE = 25.0
DEFAULT_UPLOAD_NICENESS = 10


def _raw(name: str) -> str:
    return os.environ.get(name, "").strip()


def seconds(value: float | str, source: str, example: str = "30") -> float:
    """`value` as a positive number of seconds (`math.inf` allowed).

    Raises:
        ValueError: not a positive number; the message names `source` and the fix.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0:  # also refuses NaN
        raise ValueError(f"{source}={value!r} is not a positive number of seconds: use e.g. {source}={example}.")
    return number


def cache_dir() -> str:
    """The download cache folder: `TRACKED_CKPT_CACHE`, else `~/.cache/tracked_ckpt`."""
    return _raw(CACHE) or os.path.join(os.path.expanduser("~"), ".cache", "tracked_ckpt")


def git_repo() -> str | None:
    """The repository named by `TRACKED_CKPT_GIT_REPO`, if set."""
    return _raw(GIT_REPO) or None


def lease_seconds() -> float:
    """The lease window of resume by job key: `TRACKED_CKPT_LEASE_SECONDS`, else 60 seconds.

    Raises:
        ValueError: the variable is not a positive number of seconds.
    """
    raw = _raw(LEASE_SECONDS)
    return seconds(raw, LEASE_SECONDS, "60") if raw else DEFAULT_LEASE_SECONDS


def preemption_grace() -> float:
    """Seconds from a preemption signal to the end of the process: `TRACKED_CKPT_PREEMPTION_GRACE`, else 25.

    Set it a few seconds below what the platform allows: Kubernetes' `terminationGracePeriodSeconds`
    (30 by default), SLURM's `--signal=USR1@<seconds>`, a spot VM's notice.

    Raises:
        ValueError: the variable is not a positive number of seconds.
    """
    raw = _raw(PREEMPTION_GRACE)
    return seconds(raw, PREEMPTION_GRACE, "25") if raw else DEFAULT_PREEMPTION_GRACE


def show_progress() -> bool:
    """Whether a progress bar may be drawn (`TRACKED_CKPT_PROGRESS=0` turns it off)."""
    return _raw(PROGRESS) != "0"


def skip_version_check() -> bool:
    """Whether `TRACKED_CKPT_SKIP_VERSION_CHECK` lets untested versions through."""
    return _raw(SKIP_VERSION_CHECK).lower() in ("1", "true", "yes")


def stall_timeout() -> float:
    """The default stall window: `TRACKED_CKPT_STALL_TIMEOUT`, else 30 seconds.

    Raises:
        ValueError: the variable is not a positive number of seconds.
    """
    raw = _raw(STALL_TIMEOUT)
    return seconds(raw, STALL_TIMEOUT) if raw else DEFAULT_STALL_TIMEOUT


def upload_niceness() -> int:
    """The nice increment of the upload thread: `TRACKED_CKPT_UPLOAD_NICENESS` (0-19), else 10.

    A value that is not an integer leaves the thread at normal priority, with a warning
    (training must not fail over a tuning knob).
    """
    raw = _raw(UPLOAD_NICENESS)
    if not raw:
        return DEFAULT_UPLOAD_NICENESS
    try:
        return max(0, min(19, int(raw)))
    except ValueError:
        logger.warning("%s=%r is not an integer from 0 to 19: uploads run at normal priority.", UPLOAD_NICENESS, raw)
        return 0
