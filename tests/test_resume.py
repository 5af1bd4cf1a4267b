"""resume=True: a job killed mid-training continues in the same run with the right best value."""

from __future__ import annotations

import json
import os
import subprocess

import mlflow
import pytest
from support.helpers import InjectMetric, child, make_data, make_model
from support.mlflow_runs import logged_models

from tracked_ckpt import TrackedModelCheckpoint

SCORES = [0.5, 0.2, 0.4, 0.3, 0.1]


def test_resume_continues_the_same_run_with_the_best_value(embedded_store, workdir):
    died = subprocess.run(child("train_and_die", json.dumps(SCORES)), cwd=workdir, capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    assert os.path.exists(workdir / "ckpt" / ".tracked_ckpt" / "resume.json")
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")

    model = make_model()
    x, y = make_data()
    callback = TrackedModelCheckpoint(
        "ckpt/r-{epoch}.keras", monitor="score", mode="min", resume=True, wait_timeout=120
    )
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0, callbacks=[InjectMetric("score", SCORES), callback])

    assert callback.last_report.ok, callback.last_report.errors
    assert history.epoch == [3, 4]  # fit started after the third epoch
    assert int(model.optimizer.iterations.numpy()) == 5 * 5  # 5 batches an epoch: optimizer state came back
    models = logged_models(run.info.run_id)
    # Every epoch exactly once, in the same run, including the one in flight at the kill.
    assert [int(m.tags["tracked_ckpt.epoch"]) for m in models] == [1, 2, 3, 4, 5]
    # 0.3 at epoch 4 is not a new best: 0.2 (epoch 2) survived the restart.
    assert [m.tags["tracked_ckpt.is_best"] for m in models] == ["true", "true", "false", "false", "true"]
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"
    assert len(mlflow.search_runs(experiment_names=["Default"], output_format="list")) == 1
    # The job completed: its resume state is gone and the next fit starts afresh.
    assert not os.path.exists(workdir / "ckpt" / ".tracked_ckpt")


@pytest.mark.parametrize("content", ["{not json", '{"last": {"filepath": "ckpt/f-1.keras"}}', "[]"])
def test_an_unreadable_or_misshapen_state_is_refused_and_kept(embedded_store, workdir, content):
    state = workdir / "ckpt" / ".tracked_ckpt" / "resume.json"
    state.parent.mkdir(parents=True)
    state.write_text(content)
    callback = TrackedModelCheckpoint("ckpt/f-{epoch}.keras", resume=True)
    x, y = make_data()
    with pytest.raises(
        ValueError, match=r"^Cannot resume: .*resume\.json is unreadable \(.*\); delete it to start afresh\.$"
    ):
        make_model().fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert state.read_text() == content


def test_resume_without_state_starts_afresh(embedded_store, workdir):
    callback = TrackedModelCheckpoint("ckpt/f-{epoch}.keras", resume=True)
    x, y = make_data()
    history = make_model().fit(x, y, validation_split=0.25, epochs=2, verbose=0, callbacks=[callback])
    assert history.epoch == [0, 1]
