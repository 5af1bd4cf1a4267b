"""MLflow tracker: each checkpoint is one MLflow 3 LoggedModel of the training run.

`MlflowTracker` owns the run and the logging: it attaches to (or starts, or
resumes, or defers until the server answers) a run, logs each checkpoint as a
LoggedModel of it, deletes checkpoints for retention and ends the run. What a
LoggedModel holds (tags, params, the keras-flavor folder loadable with
`mlflow.keras.load_model("models:/<model_id>")`) is in `mlflow_model`, and an
incremental one's (a manifest, its chunks in the experiment's store) in `mlflow_chunks`; the
registry side (list, promote, load, job keys) is `mlflow_registry.MlflowRegistry`,
a base class of the tracker, composed of one module per concern (`mlflow_fetch`,
`mlflow_versions`, `mlflow_jobs` on `mlflow_reads`); tracking URIs, artifact
locations, read errors, paged searches and the process-wide experiment cache are
in `mlflow_store`. The epoch's logs are the model's metrics at `step=epoch`, so
the Models tab shows them and `search_logged_models` can order by them.

Logging runs on a background thread, where MLflow's fluent active run is not
visible, so everything below the training thread uses `MlflowClient` with
explicit ids.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

if sys.version_info >= (3, 12):
    from typing import override
else:
    from typing_extensions import override

from tracked_ckpt.versions import check_supported

check_supported("mlflow", "sqlalchemy", extra="mlflow")  # before importing it (mlflow < 3.9 breaks on SQLAlchemy 2.1)

import mlflow
from mlflow.entities import LoggedModel, LoggedModelOutput, LoggedModelStatus, Metric, Run
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from tracked_ckpt.integrations.mlflow_chunks import IncrementalUploads, description_tags
from tracked_ckpt.integrations.mlflow_jobs import JOB_KEY_TAG, JOB_TAGS
from tracked_ckpt.integrations.mlflow_manifests import collect_experiment_garbage, model_file_artifact
from tracked_ckpt.integrations.mlflow_model import (
    CODE_DIR,
    CODE_LOADER,
    GIT_BRANCH_TAG,
    GIT_COMMIT_TAG,
    KERAS_DATA_DIR,
    METADATA_FILE,
    MODEL_PARAMS,
    build_model_folder,
    checkpoint_params,
    checkpoint_tags,
    model_requirements,
    model_signature,
)
from tracked_ckpt.integrations.mlflow_registry import MlflowRegistry
from tracked_ckpt.integrations.mlflow_store import (
    artifact_repository,
    cached_experiment_id,
    check_tracking_uri,
    find_logged,
    forget_experiment_id,
    pages,
    quote,
    reachable,
    without_credentials,
)
from tracked_ckpt.packgc import StoreCollected
from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord
from tracked_ckpt.tracker import Tracker, TrackerChunkStores

__all__ = [
    "CODE_DIR",
    "CODE_LOADER",
    "DEFERRED_TAG",
    "GIT_BRANCH_TAG",
    "GIT_COMMIT_TAG",
    "JOB_KEY_TAG",
    "JOB_TAGS",
    "KERAS_DATA_DIR",
    "METADATA_FILE",
    "MODEL_PARAMS",
    "RUN_CONTEXT_TAGS",
    "UI_TRAINING_VIEW",
    "MlflowTracker",
    "checkpoint_params",
    "checkpoint_tags",
    "model_requirements",
    "model_signature",
]

logger = logging.getLogger("tracked_ckpt")

DEFERRED_TAG = "tracked_ckpt.deferred_id"  # run tag: the run made for a deferred start
# MLflow 3's UI opens in its GenAI mode unless the link asks for "Model training" (an experiment
# tag does not switch it): every link we print carries this query.
UI_TRAINING_VIEW = "?workflowType=machine_learning"
# Run tags the UI reads off a LoggedModel for "Created by" and "Logged from"; MLflow's fluent API
# copies them from the context, `MlflowClient.create_logged_model` does not.
RUN_CONTEXT_TAGS = ("mlflow.user", "mlflow.source.name", "mlflow.source.type")


class MlflowTracker(Tracker, MlflowRegistry, TrackerChunkStores):
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
    stores_incremental = True
    #: Makes the tracker's `IncrementalUploads` (what `storage="incremental"` runs through).
    incremental_uploads = IncrementalUploads

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_id: str | None = None,
        run_name: str | None = None,
        pip_requirements: list[str] | None = None,
    ):
        check_tracking_uri(tracking_uri)
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
        "_chunks",
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
        self._chunks = self.incremental_uploads()
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
        check_tracking_uri(uri)
        if not reachable(uri):
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

    @override
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
        self._end_runs("FINISHED" if success else "FAILED", users_run=False)

    @override
    def finish_preempted(self, exit_code: int) -> None:
        """End the run as KILLED, MLflow's status for a run stopped from outside; the user's own run too.

        The process ends right after (as the signal would have made it), so nothing else
        would end a run the user started; a resumed job sets it running again.
        """
        self._end_runs("KILLED", users_run=True)

    def _end_runs(self, status: str, *, users_run: bool) -> None:
        self._drop_unfinished_twins(self._destination)
        started, self._started = self._started, None
        for orphan in self._orphans:
            self.client(orphan["tracking_uri"]).set_terminated(orphan["run_id"], status=status)
        self._orphans.clear()
        if started == "client" or (users_run and self._destination.get("run_id")):
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
        if not reachable(uri):
            return  # never keep the end of training waiting on a server that is down
        try:
            client = self.client(uri)
            models = [
                model
                for page in pages(
                    client.search_logged_models,
                    experiment_ids=[experiment_id],
                    filter_string=f"source_run_id = '{quote(run_id)}'",
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
            f"{without_credentials(uri)}/#/experiments/{destination['experiment_id']}/runs/"
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
        existing = None if first_attempt else find_logged(client, experiment_id, run_id, record)
        if existing is not None and existing.status == LoggedModelStatus.READY:
            return existing.model_id
        # Incremental: the packs first, so a LoggedModel exists once they do and says what they cost.
        stored = self._chunks.store(client, experiment_id, record, path)
        model = existing or client.create_logged_model(
            experiment_id=experiment_id,
            name=record.name,
            source_run_id=run_id,
            tags={**self._run_context_tags(client, run_id), **checkpoint_tags(record), **description_tags(stored)},
            params=checkpoint_params(record),
        )
        with tempfile.TemporaryDirectory(prefix="tracked-ckpt-") as tmp:
            self._build_artifacts(record, path, tmp, model.model_id, run_id, model.artifact_location)
            if stored is not None:
                # The model folder without its file (signature, requirements, code): the file's bytes
                # are in the chunk store; promotion (`mlflow_manifests.materialize`) puts it back.
                file = os.path.join(tmp, *model_file_artifact(record).split("/"))
                os.remove(file)
                if os.path.dirname(file) != tmp:
                    os.rmdir(os.path.dirname(file))  # `data/` held the file alone: no empty folder logged
                self._chunks.write_manifest(stored, tmp)
            # Not client.log_model_artifacts: it would GET the model again just for artifact_location.
            artifact_repository(client, model.artifact_location).log_artifacts(tmp)
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
        is hidden from searches. An incremental checkpoint's artifacts are its manifest:
        the packs it references stay, since others may share them, until
        `collect_chunk_garbage` finds them unreferenced.
        """
        destination = self._resolve(destination)
        client = self.client(destination["tracking_uri"])
        versions = client.search_model_versions(f"run_id = '{quote(destination['run_id'])}'")
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

    @override
    def collect_chunk_garbage(self, scope: Mapping[str, Any], *, grace_seconds: float) -> list[StoreCollected]:
        """One garbage collection of each experiment's chunk store (`mlflow_manifests.collect_experiment_garbage`)."""
        client = self.client(scope["tracking_uri"])
        return [
            collect_experiment_garbage(client, experiment_id, grace_seconds=grace_seconds)
            for experiment_id in scope["experiment_ids"]
        ]

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
        return reachable(destination.get("tracking_uri") or self.tracking_uri or mlflow.get_tracking_uri())

    @staticmethod
    @override
    def is_permanent(exc: Exception) -> bool:
        """Errors no retry can fix: the run or model is gone, or MLflow refuses the request."""
        return isinstance(exc, MlflowException) and exc.error_code in (
            "RESOURCE_DOES_NOT_EXIST",
            "INVALID_PARAMETER_VALUE",
            "INVALID_STATE",
        )

    def _build_artifacts(
        self, record: CheckpointRecord, path: str, out: str, model_id: str, run_id: str, artifact_uri: str
    ) -> None:
        """Write the LoggedModel's files into `out` (`mlflow_model.build_model_folder`)."""
        build_model_folder(
            record,
            path,
            out,
            model_id=model_id,
            run_id=run_id,
            artifact_uri=artifact_uri,
            pip_requirements=self.pip_requirements,
        )

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

    @override
    def client(self, uri: str) -> MlflowClient:
        """A client per tracking URI (clients are thread-safe; creating one is not free)."""
        with self._lock:
            if uri not in self._clients:
                self._clients[uri] = MlflowClient(tracking_uri=uri)
            return self._clients[uri]

    @override
    def _experiment_id(self, client: MlflowClient) -> str:
        """The id of the experiment new runs go to, looked up (or created) once per process and store."""
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
        return cached_experiment_id(client, name)

    def _forget_experiment(self, client: MlflowClient) -> bool:
        """Drop a cached experiment id (the experiment was deleted); True if one was cached."""
        return forget_experiment_id(client, self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME"))
