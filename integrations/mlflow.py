"""MLflow tracker: each checkpoint is one MLflow 3 LoggedModel of the training run.

A full-model `.keras` checkpoint becomes a keras-flavor MLflow model built
around the file Keras already wrote (no second serialisation), loadable with
`mlflow.keras.load_model("models:/<model_id>")`. `.h5` and `.weights.h5`
checkpoints are carried as the model's artifact under their Keras file name.
The schema is stored as LoggedModel tags `tracked_ckpt.<key>`, and the epoch's
logs as the model's metrics at `step=epoch`, so the Models tab shows them and
`search_logged_models` can order by them.

Logging runs on a background thread, where MLflow's fluent active run is not
visible, so everything below the training thread uses `MlflowClient` with
explicit ids.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.versions import check_supported

check_supported("mlflow", "sqlalchemy", extra="mlflow")  # before importing it (mlflow < 3.9 breaks on SQLAlchemy 2.1)

import mlflow
import numpy as np
from mlflow.entities import Experiment, LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric, Run, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.store.artifact.artifact_repo import ArtifactRepository
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags
from mlflow.types import Schema, TensorSpec
from mlflow.utils.uri import add_databricks_profile_info_to_artifact_uri

from tracked_ckpt.files import link_or_copy, safe_file_name
from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord, format_value
from tracked_ckpt.tracker import LoggedCheckpoint, Tracker, TrackerError, TrackerJobKeys, TrackerRegistry

logger = logging.getLogger("tracked_ckpt")

GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_BRANCH_TAG = "mlflow.source.git.branch"
METADATA_FILE = "tracked_ckpt.json"
DEFERRED_TAG = "tracked_ckpt.deferred_id"  # run tag: the run made for a deferred start
JOB_KEY_TAG = "tracked_ckpt.job_key"  # run tags of resume="<job key>" (tracked_ckpt.resume)
JOB_TAGS = {"key": JOB_KEY_TAG, "lease": "tracked_ckpt.job_lease"}
KERAS_DATA_DIR = "data"
# MLflow's UI shows none of a LoggedModel's tags, but its params both on the model page and as
# "Parameters" columns of the experiment's Models table: these schema keys are logged as params too.
MODEL_PARAMS = ("epoch", "step", "is_best", "monitor", "format", "size_bytes", "git_commit", "git_branch", "git_dirty")
# MLflow 3's UI opens in its GenAI mode unless the link asks for "Model training" (an experiment
# tag does not switch it): every link we print carries this query.
UI_TRAINING_VIEW = "?workflowType=machine_learning"
# Run tags the UI reads off a LoggedModel for "Created by" and "Logged from"; MLflow's fluent API
# copies them from the context, `MlflowClient.create_logged_model` does not.
RUN_CONTEXT_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type")


# Experiment ids by (tracking URI, name), shared by the trackers of every fit in this process.
_EXPERIMENT_IDS: dict[tuple[str, str, str], str] = {}
_EXPERIMENTS_LOCK = threading.Lock()


class MlflowTracker(Tracker, TrackerRegistry, TrackerJobKeys):
    """Log checkpoints to MLflow.

    Args:
        tracking_uri: the tracking server or store; default: MLflow's own
            resolution (`MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the CWD).
        experiment: experiment name used when this tracker starts a run
            (default: MLflow's, i.e. `MLFLOW_EXPERIMENT_NAME` or "Default").
        run_id: log into this existing run instead of the active or a new one.
        run_name: name of the run this tracker starts, if it starts one.
        pip_requirements: requirements written into keras-flavor models (after
            `mlflow`), replacing the default: the installed keras, the checkpoint's
            backend package and every installed distribution its saved Keras config
            references (`record.requirements`, e.g. `keras-hub==0.21.1`), all pinned.
            MLflow's inference costs seconds per call, so it is never used.

    Example:

    ```python
    from tracked_ckpt import TrackedModelCheckpoint
    from tracked_ckpt.integrations.mlflow import MlflowTracker

    tracker = MlflowTracker(tracking_uri="http://127.0.0.1:5000", experiment="digits")
    checkpoint = TrackedModelCheckpoint("ckpt/{epoch:02d}.keras", tracker=tracker)
    ```
    """

    name = "mlflow"
    display_name = "MLflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        pip_requirements: list[str] | None = None,
    ):
        _check_tracking_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_id = run_id
        self.run_name = run_name
        self.pip_requirements = pip_requirements  # None: keras and the checkpoint's backend, as installed
        self._reset_runtime()

    #: What a tracker holds while it serves one fit; never copied (see `__deepcopy__`).
    _RUNTIME = (
        "_started",
        "_destination",
        "_clients",
        "_resolved",
        "_orphans",
        "_scope_uri",
        "_context_tags",
        "_hidden",
        "_lock",
    )

    def _reset_runtime(self) -> None:
        self._started: str | None = None  # "client" or "deferred" when this tracker started the run
        self._destination: dict[str, Any] = {}
        self._clients: dict[str, MlflowClient] = {}
        self._resolved: dict[str, dict[str, Any]] = {}
        self._orphans: list[dict[str, Any]] = []
        self._scope_uri: str | None = None
        self._context_tags: dict[str, dict[str, str]] = {}
        self._hidden: dict[str, str] = {}  # model id -> artifact location: soft-deleted, files still to delete
        self._lock = threading.Lock()

    # A copy is the configuration (a subclass's attributes too): no run, no clients, no lock. KerasTuner
    # deep-copies callbacks per trial, Ray pickles them; the values are shared, never mutated.
    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key not in self._RUNTIME}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def __deepcopy__(self, memo: dict[int, Any]) -> MlflowTracker:
        return copy.copy(self)

    # -- run lifecycle (training thread) ------------------------------------------------

    @override
    def start(self, resume: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Attach to the active run (or `run_id`, or the resumed one), or start a run; return the destination.

        A run this tracker starts is created through the client, never pushed on MLflow's
        thread-local fluent stack: a fit that ends by an exception (which Keras does not
        report to callbacks) then cannot leave it active for the user's next `mlflow.start_run`.
        """
        uri = (resume or {}).get("tracking_uri") or self.tracking_uri or mlflow.get_tracking_uri()
        _check_tracking_uri(uri)
        if not _reachable(uri):
            return self._defer(uri, resume)
        if resume and resume.get("deferred") and "run_id" not in resume:
            resume = self._resolve(resume)  # the interrupted job never reached the server's run
        client = self.client(uri)
        active = mlflow.active_run() if self.tracking_uri is None else None
        run_id = self.run_id or (resume or {}).get("run_id")
        if run_id:
            if active is not None and active.info.run_id != run_id:
                logger.warning("Logging to run %s (resumed), not to the active run %s.", run_id, active.info.run_id)
            run = client.get_run(run_id)
            if run.info.status != "RUNNING":
                client.update_run(run_id, status="RUNNING")
                self._started = "client"
            elif (resume or {}).get("owned") and (active is None or active.info.run_id != run_id):
                self._started = "client"  # our earlier, interrupted job started it: end it as it would have
        elif active is not None:
            run = active
        else:
            run = self._create_run(client, self.run_name)
            self._started = "client"
        self._destination = {
            "tracking_uri": uri,
            "experiment_id": run.info.experiment_id,
            "run_id": run.info.run_id,
            "owned": self._started is not None,
        }
        tags = run.data.tags or {}
        with self._lock:  # the first upload need not read the run back for them
            self._context_tags[run.info.run_id] = {key: tags[key] for key in RUN_CONTEXT_TAGS if key in tags}
        return dict(self._destination)

    def _defer(self, uri: str, resume: Mapping[str, Any] | None) -> dict[str, Any]:
        """The server is down: hand out a destination whose run is created on the first upload."""
        if resume and (resume.get("run_id") or resume.get("deferred")):
            self._destination = dict(resume)
        elif self.run_id:
            # The run named by the caller, whose experiment is looked up once the server answers.
            self._destination = {"tracking_uri": uri, "run_id": self.run_id, "owned": False}
        else:
            self._destination = {
                "tracking_uri": uri,
                "deferred": uuid.uuid4().hex,
                "experiment_name": self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME"),
                "run_name": self.run_name,
                "owned": True,
            }
        self._started = "deferred"
        logger.warning(
            "MLflow at %s is unreachable: training goes on and checkpoints wait in the spool; they are "
            "logged when the server answers again (or later with `tracked-ckpt sync`).",
            uri,
        )
        return dict(self._destination)

    def _resolve(self, destination: Mapping[str, Any]) -> Mapping[str, Any]:
        """The concrete run of a deferred destination, created once (found again by its tag)."""
        if "run_id" in destination:
            if "experiment_id" in destination:
                return destination
            run = self.client(destination["tracking_uri"]).get_run(destination["run_id"])
            return {**destination, "experiment_id": run.info.experiment_id}
        key = destination["deferred"]
        with self._lock:
            if key in self._resolved:
                return self._resolved[key]
        client = self.client(destination["tracking_uri"])
        name = destination.get("experiment_name")
        experiment_id = "0"
        if name:
            found = client.get_experiment_by_name(name)
            experiment_id = found.experiment_id if found else client.create_experiment(name)
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{DEFERRED_TAG}` = '{key}'", max_results=1)
        run = (
            runs[0]
            if runs
            else client.create_run(experiment_id, run_name=destination.get("run_name"), tags={DEFERRED_TAG: key})
        )
        resolved = {
            "tracking_uri": destination["tracking_uri"],
            "experiment_id": run.info.experiment_id,
            "run_id": run.info.run_id,
            "owned": True,
        }
        with self._lock:
            self._resolved[key] = resolved
            if self._destination.get("deferred") == key:
                self._destination, self._started = resolved, "client"
            elif not runs:
                self._orphans.append(resolved)  # made for another process's spool (sync): end it in finish
        return resolved

    @property
    @override
    def destination(self) -> dict[str, Any]:
        """Where this tracker logs now (a deferred start's run once it exists)."""
        return dict(self._destination)

    @override
    def finish(self, success: bool = True) -> None:
        """End the run if `start` started it (after dropping unfinished duplicates of its checkpoints)."""
        self._drop_unfinished_twins(self._destination)
        started, self._started = self._started, None
        status = "FINISHED" if success else "FAILED"
        for orphan in self._orphans:
            self.client(orphan["tracking_uri"]).set_terminated(orphan["run_id"], status=status)
        self._orphans.clear()
        if started == "client":
            self.client(self._destination["tracking_uri"]).set_terminated(self._destination["run_id"], status=status)

    def _drop_unfinished_twins(self, destination: Mapping[str, Any]) -> None:
        """Delete PENDING LoggedModels of the run that duplicate a READY one (same sha256, epoch, step).

        An overloaded server can apply a create request and lose its response (uvicorn kills a
        worker that misses its 5 s health check); MLflow's HTTP session then resends the POST
        and the server creates a second model, of which only the second is ever completed.
        """
        run_id, experiment_id = destination.get("run_id"), destination.get("experiment_id")
        if not run_id or not experiment_id:
            return
        uri = destination["tracking_uri"]
        if not _reachable(uri):
            return  # never keep the end of training waiting on a server that is down
        try:
            client = self.client(uri)
            models = [
                model
                for page in _pages(
                    client.search_logged_models,
                    experiment_ids=[experiment_id],
                    filter_string=f"source_run_id = '{_quote(run_id)}'",
                    max_results=1000,
                )
                for model in page
            ]

            def key(model: LoggedModel) -> tuple[str | None, ...]:
                return tuple(model.tags.get(f"{TAG_PREFIX}{k}") for k in ("sha256", "epoch", "step"))

            ready = {key(m) for m in models if m.status == LoggedModelStatus.READY}
            for model in models:
                if model.status != LoggedModelStatus.READY and key(model)[0] and key(model) in ready:
                    client.delete_logged_model(model.model_id)
                    get_artifact_repository(model.artifact_location, tracking_uri=uri).delete_artifacts()
                    logger.info(
                        "Deleted %s (%s), an unfinished duplicate of a logged checkpoint.", model.model_id, model.name
                    )
        except Exception as exc:  # never let the clean-up keep the run from ending
            logger.debug("Could not look for duplicate checkpoints of run %s: %s", run_id, exc)

    @override
    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """The run's page in the MLflow UI, for an HTTP tracking server."""
        uri = destination.get("tracking_uri", "")
        if "run_id" not in destination:
            return None
        if not uri.startswith(("http://", "https://")):
            # A local store has no server: point at the UI `mlflow ui` serves by default.
            return (
                f"http://127.0.0.1:5000/#/experiments/{destination['experiment_id']}/runs/"
                f"{destination['run_id']}{UI_TRAINING_VIEW} (after `mlflow ui --backend-store-uri {uri}`)"
            )
        return (
            f"{_without_credentials(uri)}/#/experiments/{destination['experiment_id']}/runs/"
            f"{destination['run_id']}{UI_TRAINING_VIEW}"
        )

    # -- logging (publisher thread) -----------------------------------------------------

    @override
    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any], *, first_attempt: bool = False
    ) -> str:
        """Log one checkpoint as a LoggedModel; return its model id. Idempotent.

        `first_attempt=True` (the publisher's word that no earlier call for this
        checkpoint ever started) skips the look-up for a model left by an earlier
        attempt, which could find nothing.
        """
        destination = self._resolve(destination)
        client = self.client(destination["tracking_uri"])
        run_id = destination["run_id"]
        experiment_id = destination["experiment_id"]
        existing = None if first_attempt else self.find_logged(client, experiment_id, run_id, record)
        if existing is not None and existing.status == LoggedModelStatus.READY:
            return existing.model_id
        model = existing or client.create_logged_model(
            experiment_id=experiment_id,
            name=record.name,
            source_run_id=run_id,
            tags={**self._run_context_tags(client, run_id), **checkpoint_tags(record)},
            params=checkpoint_params(record),
        )
        with tempfile.TemporaryDirectory(prefix="tracked-ckpt-") as tmp:
            self._build_artifacts(record, path, tmp, model.model_id, run_id, model.artifact_location)
            # Not client.log_model_artifacts: it would GET the model again just for artifact_location.
            _artifact_repository(client, model.artifact_location).log_artifacts(tmp)
        retry = existing is not None  # a PENDING leftover of an interrupted attempt
        if record.metrics and not (existing is not None and existing.metrics):  # `retry`, for mypy
            timestamp = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[
                    Metric(key, value, timestamp, record.epoch, model_id=model.model_id)
                    for key, value in record.metrics.items()
                ],
            )
        linked = retry and any(
            o.model_id == model.model_id for o in (getattr(client.get_run(run_id).outputs, "model_outputs", None) or [])
        )
        if not linked:  # a second link of the same output is refused by the store
            client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=record.epoch)])
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    @override
    def delete_checkpoint(self, ref: str, destination: Mapping[str, Any]) -> bool:
        """Delete a LoggedModel and its files, unless it is a registered model version's source.

        `delete_logged_model` alone is a soft delete that keeps the bytes, so the
        artifacts are removed too (what `mlflow gc` would do later), after the model
        is hidden from searches.
        """
        destination = self._resolve(destination)
        client = self.client(destination["tracking_uri"])
        versions = client.search_model_versions(f"run_id = '{_quote(destination['run_id'])}'")
        if any(v.source == f"models:/{ref}" for v in versions):
            return False
        with self._lock:
            location = self._hidden.get(ref)
        if location is None:  # not hidden by an earlier attempt whose file delete failed
            try:
                location = client.get_logged_model(ref).artifact_location
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return True  # deleted already (by hand, or by another process)
                raise
            # Hidden from searches first, so nothing picks a model whose files are going away;
            # then the location is kept so a failed file delete is retried (a hidden model
            # cannot be read back). Another process finds it gone: `mlflow gc` removes such files.
            client.delete_logged_model(ref)
            with self._lock:
                self._hidden[ref] = location
        get_artifact_repository(location, tracking_uri=destination["tracking_uri"]).delete_artifacts()
        with self._lock:
            self._hidden.pop(ref, None)
        return True

    def _run_context_tags(self, client: MlflowClient, run_id: str) -> dict[str, str]:
        """The run's user and source tags, read once per run."""
        with self._lock:
            cached = self._context_tags.get(run_id)
        if cached is None:
            tags = client.get_run(run_id).data.tags
            cached = {key: tags[key] for key in RUN_CONTEXT_TAGS if key in tags}
            with self._lock:
                self._context_tags[run_id] = cached
        return cached

    @override
    def is_reachable(self, destination: Mapping[str, Any]) -> bool:
        """Whether the destination's server answers now (asked while an upload seems stuck)."""
        return _reachable(destination.get("tracking_uri") or self.tracking_uri or mlflow.get_tracking_uri())

    @staticmethod
    @override
    def is_permanent(exc: Exception) -> bool:
        """Errors no retry can fix: the run or model is gone, or MLflow refuses the request."""
        return isinstance(exc, MlflowException) and exc.error_code in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
            "INVALID_STATE",
        )

    @staticmethod
    def find_logged(
        client: MlflowClient, experiment_id: str, run_id: str, record: CheckpointRecord
    ) -> LoggedModel | None:
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

    def _build_artifacts(
        self, record: CheckpointRecord, path: str, out: str, model_id: str, run_id: str, artifact_uri: str
    ) -> None:
        # Every file is one more request (and server CPU) per checkpoint: only what loading needs.
        if record.format != "keras":
            with open(os.path.join(out, METADATA_FILE), "w") as f:
                json.dump(record.metadata(), f, indent=1, sort_keys=True)
            link_or_copy(path, os.path.join(out, os.path.basename(record.filepath)))
            return
        # The MLflow keras flavor's layout (mlflow.keras.save_model), around Keras's own file; its
        # keras_module.txt is never read back by Keras 3's loader, and the schema rides in MLmodel.
        data = os.path.join(out, KERAS_DATA_DIR)
        os.makedirs(data)
        link_or_copy(path, os.path.join(data, "model.keras"))
        mlmodel = Model(
            artifact_path=artifact_uri,
            run_id=run_id,
            model_id=model_id,
            model_uuid=model_id,
            metadata={"tracked_ckpt": record.metadata()},
        )
        mlmodel.add_flavor(
            "keras",
            data=KERAS_DATA_DIR,
            keras_version=record.keras_version,
            keras_backend=record.backend,
            save_exported_model=False,
        )
        code = _copy_code(record, out)
        mlflow.pyfunc.add_to_model(
            mlmodel,
            # With code, a loader in the model's code/ folder imports it first, then hands over to mlflow.keras.
            loader_module=CODE_LOADER if code else "mlflow.keras",
            code=CODE_DIR if code else None,
            conda_env="conda.yaml",
            python_env="python_env.yaml",
        )
        mlmodel.model_size_bytes = record.size_bytes
        mlmodel.signature = model_signature(record)
        if mlmodel.signature is None:
            logger.debug("%s is logged without a signature: its inputs and outputs cannot be described.", record.name)
        mlmodel.save(os.path.join(out, "MLmodel"))
        _write_environment(out, self.pip_requirements or model_requirements(record))

    # -- registry (TrackerRegistry, for tracked_ckpt.registry) ------------------------------

    @override
    def scope(
        self, run_id: str | None, experiment: str | None, *, last: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """A run or a whole experiment; default: `last`, the run the last `fit` in this process logged
        to, else the run that logged the store's most recent checkpoint."""
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        found = self._scope(uri, run_id, experiment, last)
        self._scope_uri = found["tracking_uri"]
        return found

    def _scope(
        self, uri: str, run_id: str | None, experiment: str | None, last: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        client = self.client(uri)
        run_id = run_id or self.run_id
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException as exc:
                raise LookupError(
                    f"MLflow run {run_id!r} not found at {uri}: check --run-id / MLFLOW_TRACKING_URI."
                ) from exc
            return {"tracking_uri": uri, "experiment_ids": [run.info.experiment_id], "run_id": run_id}
        experiment = experiment or self.experiment
        if experiment:
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise LookupError(
                    f"MLflow experiment {experiment!r} not found at {uri}: check the name or MLFLOW_TRACKING_URI."
                )
            return {"tracking_uri": uri, "experiment_ids": [found.experiment_id]}
        if last is not None and "run_id" not in last:
            raise LookupError(
                "The last fit could not reach MLflow, so its checkpoints wait in the spool: run "
                "`tracked-ckpt sync`, then pass run_id= or experiment=."
            )
        if last is not None:
            return {
                "tracking_uri": last["tracking_uri"],
                "experiment_ids": [last["experiment_id"]],
                "run_id": last["run_id"],
            }
        latest = self._latest_checkpoint_run(client)
        if latest is None:
            raise LookupError(
                f"No checkpoints logged at {uri}: train with TrackedModelCheckpoint first, or pass run_id= or "
                "experiment= (and check MLFLOW_TRACKING_URI)."
            )
        logger.info("Looking in run %s, the most recent run with checkpoints at %s.", latest, uri)
        return self._scope(uri, latest, None)

    @staticmethod
    def _latest_checkpoint_run(client: MlflowClient) -> str | None:
        """The run that logged the store's most recent tracked checkpoint (two requests, for up to 1000 experiments)."""
        experiment_ids = [e.experiment_id for page in _pages(client.search_experiments) for e in page]
        if not experiment_ids:
            return None
        found = client.search_logged_models(
            experiment_ids=experiment_ids,
            filter_string=f"tags.`{TAG_PREFIX}sha256` LIKE '%'",
            order_by=[{"field_name": "creation_timestamp", "ascending": False}],
            max_results=1,
        )
        return found[0].source_run_id if found else None

    @override
    def search_checkpoints(
        self,
        scope: Mapping[str, Any],
        *,
        where: Mapping[str, Any] | None = None,
        order_by: tuple[str, str] | None = None,
        max_results: int | None = None,
    ) -> list[LoggedCheckpoint]:
        """Tracked LoggedModels of a scope; ordering by a metric happens on the server."""
        client = self.client(scope["tracking_uri"])
        # Only finished checkpoints: a LoggedModel a killed upload left PENDING is not offered
        # (nor promoted) until `tracked-ckpt sync` completes it. The store compares the status
        # column, which holds the enum's number.
        clauses = [f"tags.`{TAG_PREFIX}sha256` LIKE '%'", f"status = '{LoggedModelStatus.READY.to_int()}'"]
        if scope.get("run_id"):
            clauses.append(f"source_run_id = '{_quote(scope['run_id'])}'")
        for key, value in (where or {}).items():
            if key == "name":
                clauses.append(f"name LIKE '{_quote(str(value))}-e%'")
            else:
                clauses.append(f"tags.`{TAG_PREFIX}{key}` = '{_quote(format_value(value))}'")
        order = None
        if order_by is not None:
            metric, mode = order_by
            # Ties go to the earliest checkpoint, the one that first reached the value (as is_best does).
            order = [
                {"field_name": f"metrics.{metric}", "ascending": mode == "min"},
                {"field_name": "creation_timestamp", "ascending": True},
            ]
        found: list[LoggedModel] = []
        for page in _pages(
            client.search_logged_models,
            experiment_ids=list(scope["experiment_ids"]),
            filter_string=" AND ".join(clauses),
            order_by=order,
            max_results=max_results or 1000,
        ):
            found.extend(m for m in page if m.status == LoggedModelStatus.READY)
            if max_results is not None and len(found) >= max_results:
                break
        return [self._checkpoint(m, tracking_uri=scope["tracking_uri"]) for m in found[: max_results or None]]

    @override
    def alias_holder(self, registered_name: str, alias: str) -> LoggedCheckpoint | None:
        """The checkpoint `registered_name@alias` points at, or None."""
        client = self.client(self._registry_uri())
        try:
            version = client.get_model_version_by_alias(registered_name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise
        return self._version_checkpoint(client, version)

    @override
    def register(self, registered_name: str, checkpoint: LoggedCheckpoint, alias: str) -> str:
        """Register the checkpoint's LoggedModel (once) and move `alias` onto that version."""
        # In the registry of the store the checkpoint lives in (the last fit's server, say).
        client = self.client(checkpoint.extra.get("tracking_uri") or self._registry_uri())
        source = f"models:/{checkpoint.id}"
        try:
            client.create_registered_model(registered_name, description="Promoted by tracked-ckpt")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        existing = [
            v
            for v in client.search_model_versions(
                f"name = '{_quote(registered_name)}' AND run_id = '{_quote(checkpoint.run_id)}'"
            )
            if v.source == source
        ]
        if existing:
            version = str(min(int(v.version) for v in existing))
        else:
            tags = {TAG_PREFIX + k: v for k, v in checkpoint.record.string_metadata().items()}
            tags[TAG_PREFIX + "name"] = checkpoint.record.name
            created = client.create_model_version(
                registered_name,
                source=source,
                run_id=checkpoint.run_id,
                tags=tags,
                model_id=checkpoint.id,
                description=checkpoint.record.summary(),  # the tags are for machines; this line is for people
            )
            version = str(created.version)
        try:
            client.set_registered_model_alias(registered_name, alias, version)
        except MlflowException:
            # MLflow's SQL store sets an alias by look-up-then-insert: when jobs of a sweep
            # promote at the same moment, all but one insert a duplicate and fail. The alias
            # exists now, so a second call updates it.
            client.set_registered_model_alias(registered_name, alias, version)
        return version

    @override
    def resolve(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """The checkpoint behind `registered_name@alias` or `registered_name/version`."""
        client = self.client(self._registry_uri())
        try:
            if alias is not None:
                mv = client.get_model_version_by_alias(registered_name, alias)
            elif version is not None:
                mv = client.get_model_version(registered_name, str(version))
            else:
                raise ValueError("Pass alias= or version=.")
        except MlflowException as exc:
            what = f"alias {alias!r}" if alias is not None else f"version {version}"
            raise LookupError(
                f"Registered model {registered_name!r} has no {what} at {client.tracking_uri}: "
                f"promote a checkpoint first (tracked-ckpt promote {registered_name}) or check the name."
            ) from exc
        found = self._version_checkpoint(client, mv)
        if found is None:
            raise LookupError(
                f"{registered_name} version {mv.version} was not registered by tracked-ckpt "
                f"(source {mv.source}): load it with mlflow.keras.load_model instead."
            )
        return found

    @override
    def resolve_for_load(self, registered_name: str, *, alias: str | None, version: str | None) -> LoggedCheckpoint:
        """`resolve` in one request, for loading: the record from the registered version's tags.

        `register()` copied the schema there; the LoggedModel (metrics, location)
        is read only on a cache miss, by `fetch`. The downloaded bytes are still
        checked against the recorded sha256.
        """
        client = self.client(self._registry_uri())
        try:
            mv = (
                client.get_model_version_by_alias(registered_name, alias)
                if alias is not None
                else client.get_model_version(registered_name, str(version))
                if version is not None
                else None
            )
        except MlflowException:
            mv = None  # resolve() says what is missing
        model_id = _model_id_from_source(getattr(mv, "source", None))
        tags = getattr(mv, "tags", None) or {}
        if mv is None or model_id is None or TAG_PREFIX + "sha256" not in tags:
            return self.resolve(registered_name, alias=alias, version=version)
        metadata = _schema_from_tags(tags)
        name = metadata.pop("name", "")
        return LoggedCheckpoint(
            id=model_id,
            run_id=mv.run_id or "",
            record=CheckpointRecord.from_metadata(metadata, name=name),
            tracker=self.name,
            location="",
            aliases=tuple(mv.aliases or ()),
            extra={"tracking_uri": client.tracking_uri, "version": str(mv.version), "registered_name": mv.name},
        )

    @override
    def fetch(self, checkpoint: LoggedCheckpoint, directory: str) -> str:
        """Download just the checkpoint file of a LoggedModel into `directory`."""
        tracking_uri = checkpoint.extra.get("tracking_uri") or self.tracking_uri or mlflow.get_tracking_uri()
        location = checkpoint.location or self.client(tracking_uri).get_logged_model(checkpoint.id).artifact_location
        relative = (
            f"{KERAS_DATA_DIR}/model.keras"
            if checkpoint.record.format == "keras"
            else safe_file_name(os.path.basename(checkpoint.record.filepath))
        )
        # tracked-ckpt shows its own bar (only on a terminal); MLflow's would print into logs too.
        previous = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        try:
            return mlflow.artifacts.download_artifacts(
                artifact_uri=f"{_relocated(location, tracking_uri).rstrip('/')}/{relative}",
                dst_path=directory,
                tracking_uri=tracking_uri,
            )
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
            else:
                os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = previous

    def _registry_uri(self) -> str:
        """This tracker's URI, else the store `scope()` last looked in, else MLflow's default."""
        return self.tracking_uri or self._scope_uri or mlflow.get_tracking_uri()

    def _version_checkpoint(self, client: MlflowClient, version: ModelVersion) -> LoggedCheckpoint | None:
        model_id = _model_id_from_source(version.source)
        if model_id is None:
            return None
        try:
            model = client.get_logged_model(model_id)
        except MlflowException:
            return None
        found = self._checkpoint(model, tracking_uri=client.tracking_uri)
        return dataclasses.replace(
            found,
            aliases=tuple(version.aliases or ()),
            extra={**found.extra, "version": str(version.version), "registered_name": version.name},
        )

    def _checkpoint(self, model: LoggedModel, tracking_uri: str | None = None) -> LoggedCheckpoint:
        metadata = _schema_from_tags(model.tags)
        metrics: dict[str, float] = {}
        for metric in sorted(model.metrics or [], key=lambda m: (m.step, m.timestamp)):
            metrics[metric.key] = metric.value  # the latest value wins, as in MLflow's ordering
        record = CheckpointRecord.from_metadata(metadata, name=model.name, metrics=metrics)
        return LoggedCheckpoint(
            id=model.model_id,
            run_id=model.source_run_id or "",
            record=record,
            tracker=self.name,
            location=model.artifact_location,
            extra={
                "tracking_uri": tracking_uri or self.tracking_uri or mlflow.get_tracking_uri(),
                "status": str(model.status),
            },
        )

    # -- job keys (TrackerJobKeys, for resume="<job key>") ----------------------------------

    @override
    def find_job(self, job_key: str) -> dict[str, Any] | None:
        """The run of this tracker's experiment tagged with `job_key` (the earliest), as a destination."""
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        _check_tracking_uri(uri)
        if not _reachable(uri):
            raise TrackerError(f"MLflow at {_without_credentials(uri)} is unreachable")
        client = self.client(uri)
        active = mlflow.active_run() if self.tracking_uri is None else None
        experiment_id = active.info.experiment_id if active is not None else self._experiment_id(client)
        runs = client.search_runs(
            [experiment_id], filter_string=f"tags.`{JOB_KEY_TAG}` = '{_quote(job_key)}'", max_results=100
        )
        if not runs:
            return None
        run = min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))
        return {"tracking_uri": uri, "experiment_id": run.info.experiment_id, "run_id": run.info.run_id, "owned": True}

    @override
    def job_info(self, destination: Mapping[str, Any]) -> dict[str, str]:
        """The run's job key and lease tags."""
        destination = self._resolve(destination)
        tags = self.client(destination["tracking_uri"]).get_run(destination["run_id"]).data.tags
        return {name: tags[tag] for name, tag in JOB_TAGS.items() if tag in tags}

    @override
    def set_job_info(self, destination: Mapping[str, Any], values: Mapping[str, str]) -> None:
        """Set the run's job key and lease tags (one call)."""
        destination = self._resolve(destination)
        self.client(destination["tracking_uri"]).log_batch(
            destination["run_id"], tags=[RunTag(JOB_TAGS[name], value) for name, value in values.items()]
        )

    @override
    def job_checkpoints(self, destination: Mapping[str, Any], name: str | None) -> list[LoggedCheckpoint]:
        """The run's READY LoggedModels (interrupted uploads stay PENDING and are skipped)."""
        destination = self._resolve(destination)
        scope = {
            "tracking_uri": destination["tracking_uri"],
            "experiment_ids": [destination["experiment_id"]],
            "run_id": destination["run_id"],
        }
        found = self.search_checkpoints(scope, where={"name": name} if name else None)
        return [c for c in found if c.extra.get("status") == str(LoggedModelStatus.READY)]

    # -- helpers --------------------------------------------------------------------------

    def _create_run(self, client: MlflowClient, run_name: str | None) -> Run:
        """Create a run as `mlflow.start_run` would (its experiment, context tags), but through the client."""
        experiment_id = None
        if self.tracking_uri is None and self.experiment is None:
            # MLflow's own choice for a new run (mlflow.set_experiment(), MLFLOW_EXPERIMENT_ID, a Databricks
            # notebook's experiment); MLFLOW_EXPERIMENT_NAME below, cached and safe against a creation race.
            fluent = mlflow.tracking.fluent
            experiment_id = getattr(fluent, "_active_experiment_id", None) or (
                None if os.environ.get("MLFLOW_EXPERIMENT_NAME") else fluent._get_experiment_id()
            )
        tags = resolve_tags()
        if experiment_id is not None:
            return client.create_run(experiment_id, run_name=run_name, tags=tags)
        try:
            return client.create_run(self._experiment_id(client), run_name=run_name, tags=tags)
        except MlflowException:
            if not self._forget_experiment(client):
                raise
            return client.create_run(self._experiment_id(client), run_name=run_name, tags=tags)  # deleted meanwhile

    def client(self, uri: str) -> MlflowClient:
        """A client per tracking URI (clients are thread-safe; creating one is not free)."""
        with self._lock:
            if uri not in self._clients:
                self._clients[uri] = MlflowClient(tracking_uri=uri)
            return self._clients[uri]

    def _experiment_id(self, client: MlflowClient) -> str:
        """The id of the experiment new runs go to, looked up (or created) once per process and store."""
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
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

    def _forget_experiment(self, client: MlflowClient) -> bool:
        """Drop a cached experiment id (the experiment was deleted); True if one was cached."""
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        with _EXPERIMENTS_LOCK:
            return _EXPERIMENT_IDS.pop(_experiment_key(client, name), None) is not None


def _experiment_key(client: MlflowClient, name: str | None) -> tuple[str, str, str]:
    # The working directory too: a relative sqlite URI names another database in another folder.
    return str(getattr(client, "tracking_uri", "")), os.getcwd(), str(name)


def checkpoint_tags(record: CheckpointRecord) -> dict[str, str]:
    """LoggedModel tags for a record: the schema under `tracked_ckpt.`, plus MLflow's git tags."""
    tags = {TAG_PREFIX + key: value for key, value in record.string_metadata().items()}
    if record.git_commit:
        # MLflow's own detection looks at the main script and misses pytest / `python -m`.
        tags[GIT_COMMIT_TAG] = record.git_commit
    if record.git_branch:
        tags[GIT_BRANCH_TAG] = record.git_branch
    return tags


def _schema_from_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """The schema values in `tracked_ckpt.*` tags (a LoggedModel's or a registered version's)."""
    return {key[len(TAG_PREFIX) :]: value for key, value in (tags or {}).items() if key.startswith(TAG_PREFIX)}


def _pages(search: Callable[..., Any], **kwargs: Any) -> Iterator[Any]:
    """The pages of a paged MLflow search, one request each, as they are read (`page_token` in, `.token` out)."""
    token = None
    while True:
        page = search(page_token=token, **kwargs)
        yield page
        token = page.token
        if not token:
            return


def checkpoint_params(record: CheckpointRecord) -> dict[str, str]:
    """LoggedModel params for a record: the schema keys worth a column in MLflow's Models table."""
    metadata = record.string_metadata()
    return {key: metadata[key] for key in MODEL_PARAMS if key in metadata}


def _artifact_repository(client: MlflowClient, artifact_location: str) -> ArtifactRepository:
    """The artifact repository of a location, as `MlflowClient` builds it for a LoggedModel."""
    uri = add_databricks_profile_info_to_artifact_uri(artifact_location, client.tracking_uri)
    return get_artifact_repository(uri, tracking_uri=client.tracking_uri)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def _model_id_from_source(source: str | None) -> str | None:
    """`ModelVersion.model_id` is None on the open-source registry: the id is in `source`."""
    if source and source.startswith("models:/m-") and "/" not in source[len("models:/") :]:
        return source[len("models:/") :]
    return None


def _relocated(location: str, tracking_uri: str) -> str:
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


def _without_credentials(uri: str) -> str:
    """An HTTP URI without user, password, query or trailing slash (never printed or probed with them)."""
    parts = urllib.parse.urlsplit(uri)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/"), "", ""))


def _reachable(uri: str, timeout: float = 5.0) -> bool:
    """False only when an HTTP tracking server cannot be connected to at all."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        urllib.request.urlopen(_without_credentials(uri) + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # something answered (auth, proxy): let MLflow report the details
    except (OSError, ValueError):
        return False
    return True


def _check_tracking_uri(uri: str | None) -> None:
    if uri and (uri.startswith("file:") or ("://" not in uri and not uri.startswith("databricks"))):
        raise TrackerError(
            f"Tracking URI {uri!r} is a file store, which MLflow >= 3.13 refuses: use a database "
            "such as 'sqlite:///mlflow.db' or a server such as 'http://127.0.0.1:5000'."
        )


def model_signature(record: CheckpointRecord) -> ModelSignature | None:
    """The MLflow signature of a checkpoint, from the Keras model's input and output specs.

    A single input (or output) is unnamed, so `mlflow models serve` takes a plain
    tensor; several are named after the Keras inputs. The batch dimension is -1.
    None when the record has no specs or they do not map onto MLflow tensor specs.
    """
    specs = record.io_specs or {}
    if not specs.get("inputs") or not specs.get("outputs"):
        return None

    def schema(tensors: list[dict[str, Any]]) -> Schema:
        named = len(tensors) > 1
        return Schema(
            [
                TensorSpec(
                    np.dtype(t["dtype"]),
                    tuple(-1 if d is None else int(d) for d in t["shape"]),
                    t.get("name") if named else None,
                )
                for t in tensors
            ]
        )

    try:
        return ModelSignature(inputs=schema(specs["inputs"]), outputs=schema(specs["outputs"]))
    except (TypeError, ValueError, KeyError, MlflowException) as exc:
        logger.debug("No signature for %s: %s", record.name, exc)
        return None


# The package that runs each Keras backend, for the requirements of a logged model.
_BACKEND_PACKAGES = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}


def _default_requirements(backend: str = "tensorflow") -> list[str]:
    requirements = []
    for package in ("keras", _BACKEND_PACKAGES.get(backend, "tensorflow")):
        try:
            requirements.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return requirements


def model_requirements(record: CheckpointRecord) -> list[str]:
    """A keras-flavor model's pip requirements (besides mlflow): keras, the backend, then what its config needs.

    Example (a KerasHub model written on TensorFlow):
        >>> record = CheckpointRecord.from_metadata(
        ...     {"epoch": 3, "step": 30, "sha256": "", "backend": "tensorflow", "requirements": "keras-hub==0.21.1"},
        ...     name="bert-e0003",
        ... )
        >>> model_requirements(record)  # doctest: +ELLIPSIS
        ['keras==...', 'tensorflow==...', 'keras-hub==0.21.1']
    """
    merged: dict[str, str] = {}
    for requirement in [*_default_requirements(record.backend), *(record.requirements or ())]:
        name = re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0]
        merged.setdefault(re.sub(r"[-_.]+", "-", name).lower(), requirement)
    return list(merged.values())


CODE_DIR = "code"
#: The module, written into a model's code/ folder, that pyfunc imports to load a model with code paths.
CODE_LOADER = "_tracked_ckpt_loader"
_CODE_LOADER_SOURCE = '''"""Written by tracked-ckpt: load this MLflow model together with the code logged beside it.

`mlflow.pyfunc.load_model` (and `mlflow models serve`) put this folder on sys.path and
call `_load_pyfunc`. It imports every module and package of the folder, so that their
Keras classes are registered, offers their classes and functions to Keras by name
(for classes that were never registered), and hands over to MLflow's keras flavor.
"""

import importlib
import os
import sys


def _code_modules(code_dir):
    for entry in sorted(os.listdir(code_dir)):
        if entry == __name__ + ".py" or entry.startswith("."):
            continue
        if entry.endswith(".py"):
            yield entry[:-3]
        elif os.path.isfile(os.path.join(code_dir, entry, "__init__.py")):
            yield entry


def _load_pyfunc(path, model_config=None):
    import keras
    from mlflow import keras as mlflow_keras

    root = path if os.path.isfile(os.path.join(path, "MLmodel")) else os.path.dirname(path)
    code_dir = os.path.join(root, "code")
    if code_dir not in sys.path:
        sys.path.insert(0, code_dir)
    objects = {}
    for name in _code_modules(code_dir):
        module = importlib.import_module(name)
        objects.update({key: value for key, value in vars(module).items()
                        if callable(value) and getattr(value, "__module__", None) == module.__name__})
    with keras.saving.custom_object_scope(objects):
        return mlflow_keras._load_pyfunc(path)
'''


def _copy_code(record: CheckpointRecord, out: str) -> bool:
    """Copy the record's code paths into the model's code/ folder, with the loader; False when there are none.

    A path gone since training started is left out with a warning (the checkpoint is still logged).
    """
    copied = False
    for source in record.code_paths or ():
        target = os.path.join(out, CODE_DIR, os.path.basename(os.path.normpath(source)))
        try:
            if os.path.isdir(source):
                shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
        except OSError as exc:
            logger.warning("%s is logged without its code path %s: %s", record.name, source, exc)
            continue
        copied = True
    if copied:
        with open(os.path.join(out, CODE_DIR, CODE_LOADER + ".py"), "w") as f:
            f.write(_CODE_LOADER_SOURCE)
    return copied


def _write_environment(out: str, requirements: list[str]) -> None:
    python = platform.python_version()
    with open(os.path.join(out, "requirements.txt"), "w") as f:
        f.write("\n".join([f"mlflow=={mlflow.__version__}", *requirements]) + "\n")
    with open(os.path.join(out, "python_env.yaml"), "w") as f:
        f.write(
            f"python: {python}\nbuild_dependencies:\n- pip\n- setuptools\n- wheel\n"
            "dependencies:\n- -r requirements.txt\n"
        )
    deps = "".join(f"    - {r}\n" for r in [f"mlflow=={mlflow.__version__}", *requirements])
    with open(os.path.join(out, "conda.yaml"), "w") as f:
        f.write(f"channels:\n- conda-forge\ndependencies:\n- python={python}\n- pip\n- pip:\n{deps}name: mlflow-env\n")
