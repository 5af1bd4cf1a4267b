"""The MLflow store as the MLflow tracker reaches it: tracking URIs, artifact locations, paged searches.

Owns what is about the store and not about a run or a checkpoint: which
tracking URIs are accepted, whether a server answers, a failed read as one line
naming the store, URIs made fit to print or to probe, the artifact repository of a location (and a local store's moved
folders), paged searches and quoted filter values, the model id of a
`models:/` URI, and the process-wide cache of experiment ids, shared by the
trackers of every fit in this process.

Imported through `tracked_ckpt.integrations.mlflow`, which checks the installed
MLflow before anything imports it.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

from mlflow.entities import Experiment, LoggedModel, LoggedModelStatus
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord
from tracked_ckpt.tracker import TrackerError

# Experiment ids by (tracking URI, name), shared by the trackers of every fit in this process.
_EXPERIMENT_IDS: dict[tuple[str, str, str], str] = {}
_EXPERIMENTS_LOCK = threading.Lock()


# -- tracking URIs ----------------------------------------------------------------------------


def check_tracking_uri(uri: str | None) -> None:
    """Refuse a file store (which MLflow >= 3.13 refuses) in one line naming the alternatives."""
    if uri and (uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))):
        raise TrackerError(
            f"Tracking URI {uri!r} is a file store, which MLflow >= 3.13 refuses: use a database "
            "such as 'sqlite:///mlflow.db' or a server such as 'http://127.0.0.1:5000'."
        )


def without_credentials(uri: str) -> str:
    """An HTTP URI without user, password, query or trailing slash (never printed or probed with them)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def reachable(uri: str, timeout: float = 5.0) -> bool:
    """False only when an HTTP tracking server cannot be connected to at all."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        urllib.request.urlopen(without_credentials(uri) + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # something answered (auth, proxy): let MLflow report the details
    except (OSError, ValueError):
        return False
    return True


# Stores a read found answering, by URI: when (time.monotonic()); one probe serves a command's reads.
_ANSWERED: dict[str, float] = {}
_ANSWERED_FOR = 30.0


def check_readable(uri: str, timeout: float = 5.0) -> None:
    """Refuse, in one line naming the URI and the fix, a store a read cannot use.

    A server that cannot be connected to, or whose `/health` answers 5xx (a proxy
    whose MLflow is down), fails here within `timeout`, instead of after minutes
    of MLflow's retries (which stay as configured for the user's own calls); any
    other answer, 404 included (a proxy serving MLflow under a path prefix or not
    forwarding `/health`), lets MLflow speak for itself. A sqlite store whose file does not exist is refused before
    MLflow would create an empty one as a side effect of reading.
    """
    check_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :].partition("?")[0]
        if path and path != ":memory:" and not os.path.exists(path):
            raise TrackerError(
                f"No MLflow store here: {os.path.abspath(path)} does not exist ({uri}). Run from the folder "
                "holding your mlflow.db, or point MLFLOW_TRACKING_URI (or tracking_uri=) at your store."
            )
        return
    if not uri.startswith(("http://", "https://")):
        return
    if time.monotonic() - _ANSWERED.get(uri, -_ANSWERED_FOR) < _ANSWERED_FOR:
        return
    shown = without_credentials(uri)
    try:
        urllib.request.urlopen(shown + "/health", timeout=timeout).close()
    except urllib.error.HTTPError as exc:
        # Any other answer (404 from a proxy serving MLflow under a path prefix or not
        # forwarding /health, authentication, ...) means something listens: MLflow reports the details.
        if exc.code >= 500:  # e.g. a proxy whose MLflow is down: MLflow would retry for minutes
            raise TrackerError(
                f"MLflow at {shown} fails (GET /health: HTTP {exc.code}): check the server behind that URI, "
                "or point MLFLOW_TRACKING_URI (or tracking_uri=) at one that runs."
            ) from exc
    except (OSError, ValueError) as exc:
        raise TrackerError(
            f"MLflow at {shown} does not answer: start the server there, or point "
            "MLFLOW_TRACKING_URI (or tracking_uri=) at one that runs."
        ) from exc
    _ANSWERED[uri] = time.monotonic()


# -- read errors ------------------------------------------------------------------------------

# What MLflow says of an absent registered model, alias, version or run; any other error is a failure.
ABSENT_CODES = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def read_failed(uri: str, exc: MlflowException) -> TrackerError:
    """A read that failed (not "absent"), in one line naming the store (and, for a 404, the fix)."""
    shown = without_credentials(uri) if uri.startswith(("http://", "https://")) else uri
    endpoint = re.search(r"endpoint (\S+) failed", str(exc.message))
    if exc.error_code == "ENDPOINT_NOT_FOUND":  # the URL answers, but not with MLflow's API (wrong URL or prefix)
        return TrackerError(
            f"MLflow at {shown} answers HTTP 404 to {endpoint.group(1) if endpoint else 'its API'}: point "
            "MLFLOW_TRACKING_URI (or tracking_uri=) at the MLflow server's URL, with its path prefix if it has one."
        )
    first = str(exc.message).strip().splitlines()[0] if str(exc.message).strip() else exc.error_code
    return TrackerError(f"MLflow at {shown} failed: {first}")


@contextlib.contextmanager
def reading(uri: str) -> Iterator[None]:
    """MLflow's failures of a read, as one-line `TrackerError`s naming the store."""
    try:
        yield
    except MlflowException as exc:
        raise read_failed(uri, exc) from exc


# -- artifacts --------------------------------------------------------------------------------


@contextlib.contextmanager
def without_progress_bar() -> Iterator[None]:
    """MLflow's download progress bar off for the block: tracked-ckpt shows its own (only on a
    terminal), and MLflow's would print into logs too."""
    previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous


def artifact_repository(client: MlflowClient, artifact_location: str) -> ArtifactRepository:
    """The artifact repository of a location, as `MlflowClient` builds it for a LoggedModel."""
    uri = add_databricks_profile_info_to_artifact_uri(artifact_location, client.tracking_uri)
    return get_artifact_repository(uri, tracking_uri=client.tracking_uri)


def relocated(location: str, tracking_uri: str) -> str:
    """A local artifact folder of an embedded store that was moved (`mlflow.db` + `mlruns/` copied
    elsewhere, e.g. a volume mounted at another path): the same folder under the database's folder.

    The store keeps absolute artifact paths; they point into the old folder after a move.
    """
    path = location[len("file://") :] if location.startswith("file://") else location
    if not tracking_uri.startswith("sqlite:///") or "://" in path or not os.path.isabs(path) or os.path.exists(path):
        return location
    root = os.path.dirname(os.path.abspath(tracking_uri[len("sqlite:///") :]))
    parts = path.strip(os.sep).split(os.sep)
    for start in range(1, len(parts)):
        candidate = os.path.join(root, *parts[start:])
        if os.path.isdir(candidate):
            return candidate
    return location


def model_id_from_source(source: str | None) -> str | None:
    """`ModelVersion.model_id` is None on the open-source registry: the id is in `source`."""
    if source and source.startswith("models:/m-") and "/" not in source[len("models:/") :]:
        return source[len("models:/") :]
    return None


# -- searches ---------------------------------------------------------------------------------


def pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """The pages of a paged MLflow search, one request each, as they are read (`page_token` in, `.token` out)."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield page
        token = page.token
        if not token:
            return


def quote(value: str) -> str:
    """A value for a single-quoted string of an MLflow filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


# -- experiments ------------------------------------------------------------------------------


def cached_experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment `name` in the client's store, looked up (or created) once per process and store."""
    key = _experiment_key(client, name)
    with _EXPERIMENTS_LOCK:
        known = _EXPERIMENT_IDS.get(key)
    if known is not None:
        return known  # many short fits in one process (a sweep): one request less per fit
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        found = experiment.experiment_id
    else:
        try:
            found = client.create_experiment(name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Jobs of a sweep starting together: another one created it since we looked.
            created: Experiment | None = client.get_experiment_by_name(name)
            if created is None:  # and deleted since: the creation's error says it
                raise
            found = created.experiment_id
    with _EXPERIMENTS_LOCK:
        _EXPERIMENT_IDS[key] = found
    return found


def forget_experiment_id(client: MlflowClient, name: str | None) -> bool:
    """Drop a cached experiment id (the experiment was deleted); True if one was cached."""
    with _EXPERIMENTS_LOCK:
        return _EXPERIMENT_IDS.pop(_experiment_key(client, name), None) is not None


def _experiment_key(client: MlflowClient, name: str | None) -> tuple[str, str, str]:
    # The working directory too: a relative sqlite URI names another database in another folder.
    return str(getattr(client, "tracking_uri", "")), os.getcwd(), str(name)


def find_logged(client: MlflowClient, experiment_id: str, run_id: str, record: CheckpointRecord) -> LoggedModel | None:
    """The LoggedModel already holding this record (same run, epoch, step, sha256), if any."""
    filter_string = (
        f"source_run_id = '{run_id}'"
        f" AND tags.`{TAG_PREFIX}sha256` = '{record.sha256}'"
        f" AND tags.`{TAG_PREFIX}epoch` = '{record.epoch}'"
        f" AND tags.`{TAG_PREFIX}step` = '{record.step}'"
    )
    found = client.search_logged_models(experiment_ids=[experiment_id], filter_string=filter_string, max_results=10)
    # A READY one wins over a PENDING leftover of an interrupted attempt.
    ordered = sorted(found, key=lambda m: m.status != LoggedModelStatus.READY)
    return ordered[0] if ordered else None
