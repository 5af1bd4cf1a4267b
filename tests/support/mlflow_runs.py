"""MLflow runs for tests: one trained into the active MLflow run, and the LoggedModels a run holds."""

from __future__ import annotations

import mlflow

from support.helpers import InjectMetric, make_data, make_model
from tracked_ckpt import TrackedModelCheckpoint


def train_run(
    scores,
    path: str = "ckpt/{epoch}.keras",
    *,
    monitor: str = "score",
    mode: str = "min",
    weights: bool = False,
    run_name: str | None = None,
    folder_per_run: bool = False,
) -> str:
    """One MLflow run whose checkpoint metric `monitor` follows `scores` (one value or None an epoch).

    `folder_per_run` puts the checkpoints under the run id's first 8 characters, so runs never share files.
    Returns the run id.
    """
    with mlflow.start_run(run_name=run_name) as run:
        filepath = f"{run.info.run_id[:8]}/{path}" if folder_per_run else path
        callback = TrackedModelCheckpoint(filepath, monitor=monitor, mode=mode, save_weights_only=weights)
        x, y = make_data()
        make_model().fit(
            x, y, epochs=len(scores), batch_size=8, verbose=0, callbacks=[InjectMetric(monitor, scores), callback]
        )
    return run.info.run_id


def logged_models(run_id: str, experiment_id: str | None = None):
    """The LoggedModels of a run, oldest first."""
    client = mlflow.MlflowClient()
    if experiment_id is None:
        experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1000
    )
    return sorted(models, key=lambda m: (int(m.tags["tracked_ckpt.step"]), m.creation_timestamp))
