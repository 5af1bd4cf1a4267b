"""A KerasTuner search on scikit-learn's bundled digits: one MLflow run per trial, then promote the best.

KerasTuner deep-copies the callbacks it is given for every trial, so the one
`TrackedModelCheckpoint` below is configuration; each trial's copy logs into a
run of its own. `TrackedTuner.run_trial` names that run after the trial and
records the trial's hyperparameters on it (the run is the user's then, and the
callback logs into it). Afterwards `promote_best` over the experiment finds the
checkpoint with the tuner's best score.

Run with `.venv/bin/python examples/sweep_keras_tuner.py` (MLflow's embedded
store `sqlite:///mlflow.db` unless MLFLOW_TRACKING_URI is set).
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import keras_tuner
import mlflow
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint


def load_data(seed: int = 0):
    digits = load_digits()  # ships inside scikit-learn: nothing is downloaded
    x = (digits.data / 16.0).astype("float32")
    x_train, x_val, y_train, y_val = train_test_split(
        x, digits.target, test_size=0.25, random_state=seed, stratify=digits.target
    )
    return x_train, x_val, y_train, y_val


def build_model(hp: keras_tuner.HyperParameters) -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(hp.Int("units", 16, 64, step=16), activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(hp.Float("learning_rate", 1e-3, 1e-2, sampling="log")),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


class TrackedTuner(keras_tuner.RandomSearch):
    """A RandomSearch whose trials each run in an MLflow run named after the trial, with its hyperparameters."""

    def run_trial(self, trial, *args, **kwargs):
        with mlflow.start_run(run_name=f"trial-{trial.trial_id}"):
            mlflow.log_params(trial.hyperparameters.values)
            return super().run_trial(trial, *args, **kwargs)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--experiment", default="digits-keras-tuner")
    parser.add_argument("--workdir", default=None, help="where the tuner and checkpoints write (default: a temp dir)")
    args = parser.parse_args(argv)

    mlflow.set_experiment(args.experiment)
    workdir = args.workdir or tempfile.mkdtemp(prefix="keras-tuner-")
    x_train, x_val, y_train, y_val = load_data()
    tuner = TrackedTuner(
        build_model,
        objective="val_loss",
        max_trials=args.trials,
        seed=1,
        directory=workdir,
        project_name="digits",
        overwrite=True,
    )
    # Every trial writes the same file names: each trial's run keeps its own checkpoints apart.
    checkpoint = TrackedModelCheckpoint(os.path.join(workdir, "ckpt", "digits-{epoch:02d}.keras"), monitor="val_loss")
    tuner.search(
        x_train, y_train, validation_data=(x_val, y_val), epochs=args.epochs, verbose=0, callbacks=[checkpoint]
    )

    best_trial = tuner.oracle.get_best_trials(1)[0]
    result = tracked_ckpt.promote_best("digits-tuned", experiment=args.experiment, monitor="val_loss")
    print(
        f"best trial {best_trial.trial_id}: val_loss {best_trial.score:.4f}; promoted {result.checkpoint.record.name} "
        f"(val_loss {result.checkpoint.record.value:.4f}) from run {result.checkpoint.run_id} as "
        f"digits-tuned@champion"
    )
    return {"best_score": best_trial.score, "promoted": result, "trials": len(tuner.oracle.trials)}


if __name__ == "__main__":
    main()
