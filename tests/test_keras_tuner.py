"""A real KerasTuner search against a real MLflow server: one run per trial, every save once, the best promoted."""

from __future__ import annotations

import os
import sys

import mlflow
import pytest
from support.mlflow_runs import logged_models

keras_tuner = pytest.importorskip("keras_tuner")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import sweep_keras_tuner  # noqa: E402

from tracked_ckpt.fits import live_sessions  # noqa: E402

TRIALS, EPOCHS = 3, 3


def test_keras_tuner_search_logs_each_trial_in_its_own_run_and_promotes_the_tuners_best(server_store, workdir):
    experiment = os.environ["MLFLOW_EXPERIMENT_NAME"]
    found = sweep_keras_tuner.main(
        ["--trials", str(TRIALS), "--epochs", str(EPOCHS), "--experiment", experiment, "--workdir", str(workdir)]
    )
    assert not live_sessions()
    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list")
    assert len(runs) == TRIALS == found["trials"]
    assert {r.info.status for r in runs} == {"FINISHED"}  # none left RUNNING after search() returned
    assert sorted(r.info.run_name for r in runs) == sorted(f"trial-{t}" for t in ("0", "1", "2"))
    for run in runs:
        assert {"units", "learning_rate"} <= set(run.data.params)
        models = logged_models(run.info.run_id)
        # Every save of the trial once, in its run, though every trial wrote the same file names.
        assert [m.name for m in models] == [f"digits-e{e:04d}" for e in range(1, EPOCHS + 1)]
        assert {m.status.name if hasattr(m.status, "name") else str(m.status) for m in models} <= {"READY"}
    promoted = found["promoted"].checkpoint
    assert promoted.record.value == pytest.approx(found["best_score"], rel=1e-6)


def test_a_tuner_callback_copied_without_a_run_of_the_users_gets_one_run_per_trial(embedded_store, workdir):
    x_train, x_val, y_train, y_val = sweep_keras_tuner.load_data()
    tuner = keras_tuner.RandomSearch(
        sweep_keras_tuner.build_model,
        objective="val_loss",
        max_trials=2,
        seed=2,
        directory=str(workdir),
        project_name="plain",
        overwrite=True,
    )
    from tracked_ckpt import TrackedModelCheckpoint

    checkpoint = TrackedModelCheckpoint(str(workdir / "ckpt" / "d.keras"), monitor="val_loss", save_best_only=True)
    tuner.search(
        x_train[:200],
        y_train[:200],
        validation_data=(x_val[:100], y_val[:100]),
        epochs=2,
        verbose=0,
        callbacks=[checkpoint],
    )
    assert checkpoint.session is None  # KerasTuner only ever runs copies
    runs = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        assert logged_models(run.info.run_id)
