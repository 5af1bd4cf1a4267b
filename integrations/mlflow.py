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

import json
import logging
import os
import platform
import shutil
import tempfile
import threading
import time
from typing import Any, Mapping

import mlflow
from mlflow.entities import LoggedModelOutput, LoggedModelStatus, Metric
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from tracked_ckpt.record import TAG_PREFIX, CheckpointRecord
from tracked_ckpt.tracker import TrackerError

logger = logging.getLogger("tracked_ckpt")

GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_BRANCH_TAG = "mlflow.source.git.branch"
METADATA_FILE = "tracked_ckpt.json"
KERAS_DATA_DIR = "data"


class MlflowTracker:
    """Log checkpoints to MLflow.

    Args:
        tracking_uri: the tracking server or store; default: MLflow's own
            resolution (`MLFLOW_TRACKING_URI`, else `sqlite:///mlflow.db` in the CWD).
        experiment: experiment name used when this tracker starts a run
            (default: MLflow's, i.e. `MLFLOW_EXPERIMENT_NAME` or "Default").
        run_id: log into this existing run instead of the active or a new one.
        run_name: name of the run this tracker starts, if it starts one.
        pip_requirements: requirements written into keras-flavor models;
            default: the installed keras and tensorflow (MLflow's inference
            costs seconds per call, so it is never used).

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
        self.pip_requirements = pip_requirements or _default_requirements()
        self._started: str | None = None  # "fluent" or "client" when this tracker started the run
        self._destination: dict[str, Any] = {}
        self._clients: dict[str, MlflowClient] = {}
        self._lock = threading.Lock()

    # -- run lifecycle (training thread) ------------------------------------------------

    def start(self, run_name: str | None = None) -> dict[str, Any]:
        """Attach to the active run (or `run_id`), or start a run; return the destination."""
        uri = self.tracking_uri or mlflow.get_tracking_uri()
        _check_tracking_uri(uri)
        client = self.client(uri)
        active = mlflow.active_run() if self.tracking_uri is None else None
        if self.run_id:
            run = client.get_run(self.run_id)
            if run.info.status != "RUNNING":
                client.update_run(self.run_id, status="RUNNING")
                self._started = "client"
        elif active is not None:
            run = active
        elif self.tracking_uri is None and self.experiment is None:
            run = mlflow.start_run(run_name=run_name or self.run_name)
            self._started = "fluent"
        else:
            experiment_id = self._experiment_id(client)
            run = client.create_run(experiment_id, run_name=run_name or self.run_name)
            self._started = "client"
        self._destination = {
            "tracking_uri": uri,
            "experiment_id": run.info.experiment_id,
            "run_id": run.info.run_id,
        }
        return dict(self._destination)

    def finish(self, success: bool = True) -> None:
        """End the run if `start` started it."""
        started, self._started = self._started, None
        status = "FINISHED" if success else "FAILED"
        if started == "fluent":
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self._destination.get("run_id"):
                mlflow.end_run(status=status)
                return
            started = "client"  # ended from another thread (atexit): end it by id
        if started == "client":
            self.client(self._destination["tracking_uri"]).set_terminated(
                self._destination["run_id"], status=status
            )

    def run_url(self, destination: Mapping[str, Any]) -> str | None:
        """The run's page in the MLflow UI, for an HTTP tracking server."""
        uri = destination.get("tracking_uri", "")
        if not uri.startswith(("http://", "https://")) or "run_id" not in destination:
            return None
        return f"{uri.rstrip('/')}/#/experiments/{destination['experiment_id']}/runs/{destination['run_id']}"

    # -- logging (publisher thread) -----------------------------------------------------

    def log_checkpoint(
        self, record: CheckpointRecord, path: str, destination: Mapping[str, Any]
    ) -> str:
        """Log one checkpoint as a LoggedModel; return its model id. Idempotent."""
        client = self.client(destination["tracking_uri"])
        run_id = destination["run_id"]
        experiment_id = destination["experiment_id"]
        existing = self.find_logged(client, experiment_id, run_id, record)
        if existing is not None and existing.status == LoggedModelStatus.READY:
            return existing.model_id
        model = existing or client.create_logged_model(
            experiment_id=experiment_id,
            name=record.name,
            source_run_id=run_id,
            tags=checkpoint_tags(record),
        )
        with tempfile.TemporaryDirectory(prefix="tracked-ckpt-") as tmp:
            self._build_artifacts(record, path, tmp, model.model_id, run_id, model.artifact_location)
            client.log_model_artifacts(model.model_id, tmp)
        if record.metrics:
            timestamp = int(time.time() * 1000)
            client.log_batch(
                run_id,
                metrics=[
                    Metric(key, value, timestamp, record.epoch, model_id=model.model_id)
                    for key, value in record.metrics.items()
                ],
            )
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=record.epoch)])
        client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
        return model.model_id

    @staticmethod
    def find_logged(client: MlflowClient, experiment_id: str, run_id: str, record: CheckpointRecord):
        """The LoggedModel already holding this record (same run, epoch, step, sha256), if any."""
        filter_string = (
            f"source_run_id = '{run_id}'"
            f" AND tags.`{TAG_PREFIX}sha256` = '{record.sha256}'"
            f" AND tags.`{TAG_PREFIX}epoch` = '{record.epoch}'"
            f" AND tags.`{TAG_PREFIX}step` = '{record.step}'"
        )
        found = client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=filter_string, max_results=10
        )
        # A READY one wins over a PENDING leftover of an interrupted attempt.
        ordered = sorted(found, key=lambda m: m.status != LoggedModelStatus.READY)
        return ordered[0] if ordered else None

    def _build_artifacts(
        self, record: CheckpointRecord, path: str, out: str, model_id: str, run_id: str, artifact_uri: str
    ) -> None:
        with open(os.path.join(out, METADATA_FILE), "w") as f:
            json.dump(record.metadata(), f, indent=1, sort_keys=True)
        if record.format != "keras":
            _link_or_copy(path, os.path.join(out, os.path.basename(record.filepath)))
            return
        # The MLflow keras flavor's layout (mlflow.keras.save_model), around Keras's own file.
        data = os.path.join(out, KERAS_DATA_DIR)
        os.makedirs(data)
        _link_or_copy(path, os.path.join(data, "model.keras"))
        with open(os.path.join(data, "keras_module.txt"), "w") as f:
            f.write("keras")
        mlmodel = Model(artifact_path=artifact_uri, run_id=run_id, model_id=model_id, model_uuid=model_id)
        mlmodel.add_flavor(
            "keras",
            data=KERAS_DATA_DIR,
            keras_version=record.keras_version,
            keras_backend=record.backend,
            save_exported_model=False,
        )
        mlflow.pyfunc.add_to_model(
            mlmodel, loader_module="mlflow.keras", conda_env="conda.yaml", python_env="python_env.yaml"
        )
        mlmodel.model_size_bytes = record.size_bytes
        mlmodel.save(os.path.join(out, "MLmodel"))
        _write_environment(out, self.pip_requirements)

    # -- helpers --------------------------------------------------------------------------

    def client(self, uri: str) -> MlflowClient:
        """A client per tracking URI (clients are thread-safe; creating one is not free)."""
        with self._lock:
            if uri not in self._clients:
                self._clients[uri] = MlflowClient(tracking_uri=uri)
            return self._clients[uri]

    def _experiment_id(self, client: MlflowClient) -> str:
        name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return os.environ.get("MLFLOW_EXPERIMENT_ID", "0")
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        return client.create_experiment(name)


def checkpoint_tags(record: CheckpointRecord) -> dict[str, str]:
    """LoggedModel tags for a record: the schema under `tracked_ckpt.`, plus MLflow's git tags."""
    tags = {TAG_PREFIX + key: value for key, value in record.string_metadata().items()}
    if record.git_commit:
        # MLflow's own detection looks at the main script and misses pytest / `python -m`.
        tags[GIT_COMMIT_TAG] = record.git_commit
    if record.git_branch:
        tags[GIT_BRANCH_TAG] = record.git_branch
    return tags


def _check_tracking_uri(uri: str | None) -> None:
    if uri and (uri.startswith("file:") or "://" not in uri and not uri.startswith("databricks")):
        raise TrackerError(
            f"Tracking URI {uri!r} is a file store, which MLflow >= 3.13 refuses: use a database "
            "such as 'sqlite:///mlflow.db' or a server such as 'http://127.0.0.1:5000'."
        )


def _default_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    requirements = []
    for package in ("keras", "tensorflow"):
        try:
            requirements.append(f"{package}=={version(package)}")
        except PackageNotFoundError:
            continue
    return requirements


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


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
