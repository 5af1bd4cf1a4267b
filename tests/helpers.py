"""Test helpers shared by test modules (tiny models, data, metric injection, queries)."""

from __future__ import annotations

import keras
import mlflow
import numpy as np


# -- tiny models and data -------------------------------------------------------------------


def make_model(name: str = "tiny") -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)],
        name=name,
    )
    model.compile(optimizer="adam", loss="mse", metrics=["mae"])
    return model


def make_data(n: int = 40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 4)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5], [0.3]], dtype="float32")).astype("float32")
    return x, y


class InjectMetric(keras.callbacks.Callback):
    """Put a scripted value into the epoch logs (callbacks share the logs dict, in list order)."""

    def __init__(self, key: str, values: list[float | None]):
        super().__init__()
        self.key, self.values = key, values

    def on_epoch_end(self, epoch, logs=None):
        value = self.values[epoch]
        if value is None:
            logs.pop(self.key, None)
        else:
            logs[self.key] = value


def logged_models(run_id: str, experiment_id: str | None = None):
    """The LoggedModels of a run, oldest first."""
    client = mlflow.MlflowClient()
    if experiment_id is None:
        experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'", max_results=1000
    )
    return sorted(models, key=lambda m: (int(m.tags["tracked_ckpt.step"]), m.creation_timestamp))
