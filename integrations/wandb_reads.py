"""Reads from the W&B server that fail in one line, and never pass an error off as "no such thing".

Every remote read of the W&B registry side goes through here: `reading` turns a
read that fails (a lazy listing included, while it is iterated) into one
`TrackerError` naming what was read (`no_answer`); `artifact_or_none` and
`run_or_none` answer None only when W&B says the version or run does not exist
(`version_absent`, `run_not_found`), since answering "none" for a server that is
down would make a restarted job start over or a deletion count as done.

W&B wraps what its client raised in a `wandb.errors.CommError` (`cause_of`
unwraps it); wandb 0.31 raises its service client's error unwrapped from a lazy
listing being iterated, or with WANDB_DEBUG set: `READ_ERRORS` holds them all.
Imported through `tracked_ckpt.integrations.wandb`, which checks the installed W&B first.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import wandb
import wandb.apis.public
import wandb.errors

from tracked_ckpt.integrations.wandb_schema import ARTIFACT_TYPE
from tracked_ckpt.tracker import TrackerError

logger = logging.getLogger("tracked_ckpt")

# What `wandb.Api().run` raises for a run that does not exist (wrapped in a CommError); W&B
# versions before the class raised a bare ValueError, recognised by its message.
_RunNotFoundError: type[Exception] | None = getattr(wandb.apis.public, "RunNotFoundError", None)

try:  # wandb 0.31's client error: unwrapped from a lazy listing being iterated, or with WANDB_DEBUG set
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError as _ApiFailedError
except ImportError:  # W&B before its service API client: its errors are CommErrors
    _ApiFailedError = wandb.errors.CommError  # type: ignore[misc,assignment]

#: What a W&B read raises when it does not answer with the thing asked for (ValueError: W&B's own
#: "not found" or an answer it could not parse, unwrapped when WANDB_DEBUG is set).
READ_ERRORS = (wandb.errors.CommError, ValueError, _ApiFailedError)


@contextlib.contextmanager
def reading(what: str) -> Iterator[None]:
    """Turn a W&B read that fails (a lazy listing included, while iterated) into `no_answer`."""
    try:
        yield
    except READ_ERRORS as exc:
        raise no_answer(what, exc) from exc


def artifact_or_none(api: Any, path: str) -> Any:
    """The version `path` names, or None when W&B answers that there is none.

    Not `Api.artifact_exists`, which answers False for a server error too.

    Raises:
        TrackerError: W&B did not answer: an error is never taken for "no such version".
    """
    try:
        return api.artifact(path, type=ARTIFACT_TYPE)
    except READ_ERRORS as exc:
        if version_absent(exc):
            return None
        raise no_answer(f"artifact {path}", exc) from exc


def run_or_none(api: Any, path: str) -> Any:
    """The run `path` ("entity/project/run id") names, or None when W&B answers that there is none.

    Raises:
        TrackerError: W&B did not answer: an error is never taken for "no such run".
    """
    try:
        return api.run(path)
    except READ_ERRORS as exc:
        if run_not_found(exc):
            return None
        raise no_answer(f"run {path}", exc) from exc


def links_of(artifact: Any) -> list[Any]:
    """A version's Registry links (which W&B fetches on first read)."""
    with reading(f"artifact {artifact.qualified_name}"):
        return list(artifact.linked_artifacts)


def page_url(artifact: Any) -> str:
    """The version's page in the W&B app ("" where W&B cannot say: `Artifact.url` is recent, a Registry
    link's asks the server for the organization, and a link is no reason to fail a read)."""
    try:
        return str(getattr(artifact, "url", "") or "")
    except READ_ERRORS as exc:
        logger.debug("No W&B link for %s: %s", getattr(artifact, "qualified_name", artifact), exc)
        return ""


def version_absent(exc: Exception) -> bool:
    """Whether a W&B `Api.artifact` error means "no such version" (W&B: a ValueError "... not found ...")."""
    cause = cause_of(exc)
    return isinstance(cause, ValueError) and "not found" in str(cause)


def cause_of(exc: Exception) -> BaseException:
    """The error inside a `wandb.errors.CommError` (`wandb.Api` wraps what its code raised), or `exc`."""
    return getattr(exc, "exc", None) or exc


def no_answer(what: str, exc: Exception) -> TrackerError:
    """A W&B read that failed without an answer (not "no such thing"): one line, and what to do."""
    return TrackerError(f"Cannot read W&B {what}: {exc}. Try again once W&B answers.")


def run_not_found(exc: Exception) -> bool:
    """Whether a W&B API error means "no such run".

    W&B raises `RunNotFoundError` (0.31; a bare ValueError "Could not find run ..." in the
    versions before it had the class), which `wandb.Api` wraps in a CommError. Other
    ValueErrors (a garbled JSON answer) are not it.
    """
    cause = cause_of(exc)
    if _RunNotFoundError is not None:
        return isinstance(cause, _RunNotFoundError)
    return isinstance(cause, ValueError) and "Could not find run" in str(cause)
