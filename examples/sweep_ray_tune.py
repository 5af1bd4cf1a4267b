"""Sweep digits classifiers with Ray Tune: every trial's checkpoints logged once, the sweep's best promoted.

Six trials (one learning rate each) run on a local Ray instance under ASHA,
which stops the losing trials early: Tune ends a stopped trial from inside
`on_epoch_end`, before Keras's `on_train_end`, so its last uploads may still
wait in its spool. Each trial runs in its own folder under Ray's session
directory, logs to its own MLflow run of one experiment, and still records the
git commit of the repository this script was launched from.

The documented steps after `Tuner.fit()`:

1. `tracked_ckpt.sync_spool(CHECKPOINT_ROOT)` logs whatever any trial left in
   its spool (a LoggedModel a killed upload left half-written is completed,
   never duplicated; nothing is logged twice);
2. `tracked_ckpt.promote_best(NAME, experiment=EXPERIMENT)` promotes the best
   checkpoint of all trials to `@champion`.

Run after `make demo` (scikit-learn's digits ship with it: nothing downloads):

    .venv/bin/python examples/sweep_ray_tune.py

With no MLFLOW_TRACKING_URI everything goes to `sqlite:///mlflow.db` in the
working directory (`.venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db`).
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Reusing a worker for the next trial waits this long for the stopped trial's thread to end
# (Ray's default, 2 s, is missed on a busy machine and the trial errors); workers inherit it.
os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")

import keras
import mlflow
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.integrations.mlflow import MlflowTracker

MONITOR = "val_loss"  # continuous, so two trials rarely tie for the best
LEARNING_RATES = [0.03, 0.01, 0.003, 0.001, 0.0003, 0.0001]


def digits_split(seed: int = 0):
    """(x_train, x_test, y_train, y_test) of scikit-learn's bundled 8x8 digits."""
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    return train_test_split(x, digits.target.astype("int32"), test_size=0.2, random_state=seed, stratify=digits.target)


class ReportToTune(keras.callbacks.Callback):
    """Report each epoch's logs to Tune, which may stop the trial right here (SystemExit)."""

    def on_epoch_end(self, epoch, logs=None):
        tune.report({key: float(value) for key, value in (logs or {}).items()})


def train_trial(config: dict) -> None:
    """One trial: runs in a Ray worker, in the trial's own working directory."""
    keras.utils.set_random_seed(0)
    x_train, _, y_train, _ = digits_split()
    trial = tune.get_context().get_trial_id()
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(config["units"], activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(config["learning_rate"]),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    checkpoint = TrackedModelCheckpoint(
        # An absolute root, so the driver finds every trial's checkpoints (and spool) afterwards.
        os.path.join(config["checkpoint_root"], trial, "digits-{epoch:02d}.keras"),
        monitor=MONITOR,
        tracker=MlflowTracker(
            tracking_uri=config["tracking_uri"], experiment=config["experiment"], run_name=f"trial-{trial}"
        ),
    )
    # The checkpoint callback goes first: an epoch Tune stops on still has its checkpoint logged.
    model.fit(
        x_train,
        y_train,
        validation_split=0.2,
        epochs=config["epochs"],
        batch_size=64,
        verbose=0,
        callbacks=[checkpoint, ReportToTune()],
    )


def absolute_tracking_uri() -> str:
    """MLflow's tracking URI, with a relative sqlite path made absolute (trials run in other folders)."""
    uri = mlflow.get_tracking_uri()
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not os.path.isabs(uri[len(prefix) :]):
        uri = prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a trial ASHA does not stop")
    parser.add_argument("--units", type=int, default=32, help="hidden units of every trial's model")
    parser.add_argument("--experiment", default="digits-sweep")
    parser.add_argument("--registered-name", default="digits-sweep-classifier")
    parser.add_argument("--root", default="sweep", help="folder for checkpoints and Ray's results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    root = os.path.abspath(args.root)
    checkpoint_root = os.path.join(root, "checkpoints")
    tracking_uri = absolute_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_experiment(args.experiment)  # created here once, not by six trials racing

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        train_trial,
        param_space={
            "learning_rate": tune.grid_search(LEARNING_RATES),
            "units": args.units,
            "epochs": args.epochs,
            "checkpoint_root": checkpoint_root,
            "tracking_uri": tracking_uri,
            "experiment": args.experiment,
        },
        tune_config=tune.TuneConfig(
            metric=MONITOR,
            mode="min",
            scheduler=ASHAScheduler(max_t=args.epochs, grace_period=1, reduction_factor=2),
            reuse_actors=True,  # two worker processes for all six trials
        ),
        run_config=tune.RunConfig(name="digits-sweep", storage_path=os.path.join(root, "ray_results"), verbose=0),
    )
    results = tuner.fit()
    ray.shutdown()  # every trial process is gone: what they had not uploaded waits in their spools

    # Step 1: log what stopped trials left behind (each into its own trial's run).
    report = tracked_ckpt.sync_spool(checkpoint_root, timeout=600)
    print(
        f"sync_spool: logged {len({entry.id for entry, _, _ in report.logged})} checkpoint(s) trials left "
        f"in their spools; {len(report.pending) + len(report.failed)} still waiting."
    )

    print(f"\n{'trial':<12} {'epochs':>6}  {MONITOR:>8}")
    for result in sorted(results, key=lambda r: r.config["learning_rate"], reverse=True):
        if result.error is not None or "training_iteration" not in result.metrics:
            print(f"{'?':<12} {'-':>6}  {'-':>8}  lr={result.config['learning_rate']}  (error: {result.error})")
            continue
        stopped = result.metrics["training_iteration"] < args.epochs
        print(
            f"{result.metrics['trial_id']:<12} {result.metrics['training_iteration']:>6}  "
            f"{result.metrics[MONITOR]:>8.4f}  lr={result.config['learning_rate']}"
            f"{'  (stopped by ASHA)' if stopped else ''}"
        )

    checkpoints = tracked_ckpt.list_checkpoints(experiment=args.experiment)
    commits = {(c.record.git_commit or "none")[:8] for c in checkpoints}
    print(f"\n{len(checkpoints)} checkpoints logged in experiment {args.experiment!r}, git commit {', '.join(commits)}")

    # Step 2: the best checkpoint of the whole sweep becomes @champion.
    promoted = tracked_ckpt.promote_best(args.registered_name, experiment=args.experiment)
    print(f"Promotion: {promoted.reason}")

    _, x_test, _, y_test = digits_split()
    champion = tracked_ckpt.load_model(args.registered_name, alias="champion")
    _, accuracy = champion.evaluate(x_test, y_test, verbose=0)
    print(f"Loaded {args.registered_name}@champion back: test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
