"""Train on scikit-learn's bundled digits, log every checkpoint, promote the best, load it back.

Run with `make demo` (or `.venv/bin/python examples/train_digits.py`). With no
MLFLOW_TRACKING_URI set, everything goes to MLflow's embedded store
`sqlite:///mlflow.db` in the working directory; browse it with

    .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db

and open the printed link (the experiment's Models view, in MLflow's "Model training" mode).
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import mlflow
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint


def load_data(seed: int = 0):
    digits = load_digits()  # ships inside scikit-learn: nothing is downloaded
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_train, x_test, y_train, y_test


def build_model() -> keras.Model:
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--experiment", default="digits-demo")
    parser.add_argument("--registered-name", default="digits-classifier")
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    keras.utils.set_random_seed(0)
    x_train, x_test, y_train, y_test = load_data()
    mlflow.set_experiment(args.experiment)

    with mlflow.start_run(run_name="digits-demo") as run:
        checkpoint = TrackedModelCheckpoint(
            os.path.join(args.checkpoint_dir, "digits-{epoch:02d}.keras"),
            monitor="val_accuracy",
            verbose=1,
        )
        model = build_model()
        model.fit(
            x_train,
            y_train,
            validation_split=0.2,
            epochs=args.epochs,
            batch_size=64,
            callbacks=[checkpoint],
            verbose=2,
        )

    print(f"\nCheckpoints logged to MLflow ({mlflow.get_tracking_uri()}), run {run.info.run_id}:")
    print(f"{'epoch':>5}  {'val_loss':>8}  {'val_acc':>7}  {'best':>4}  {'commit':<8}  model id")
    for ckpt in tracked_ckpt.list_checkpoints(run_id=run.info.run_id):
        record = ckpt.record
        print(
            f"{record.epoch:>5}  {record.metrics.get('val_loss', float('nan')):>8.4f}  "
            f"{record.metrics.get('val_accuracy', float('nan')):>7.4f}  "
            f"{'yes' if record.is_best else '':>4}  {(record.git_commit or '-')[:8]:<8}  {ckpt.id}"
        )

    result = tracked_ckpt.promote_best(args.registered_name, run_id=run.info.run_id, alias="champion")
    print(f"\nPromotion: {result.reason} ({args.registered_name} version {result.version})")

    champion = tracked_ckpt.load_model(args.registered_name, alias="champion")
    _, accuracy = champion.evaluate(x_test, y_test, verbose=0)
    print(f"Loaded {args.registered_name}@champion back: test accuracy {accuracy:.4f}")
    if not mlflow.get_tracking_uri().startswith(("http://", "https://")):
        print(
            f"\nList them again with `tracked-ckpt ls`; browse them with "
            f"`.venv/bin/mlflow ui --backend-store-uri {mlflow.get_tracking_uri()}` and open\n"
            f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/models?workflowType=machine_learning"
        )


if __name__ == "__main__":
    main()
