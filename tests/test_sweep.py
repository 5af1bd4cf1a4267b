"""Sweeps: a real Ray Tune sweep (local Ray, ASHA) and a trainer killed mid-upload, on a real MLflow server.

After the documented steps (`sync_spool(root)` after `Tuner.fit()`, then
`promote_best(name, experiment=...)`) every checkpoint file any trial wrote is
one READY LoggedModel carrying the launching repository's commit, and the
sweep's champion is the file with the best monitored value of all trials.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
from support.helpers import StopAfterEpoch, child, git, head, make_data, make_model, make_repo, sha256
from support.mlflow_runs import logged_models

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.cli import main as cli
from tracked_ckpt.spool import find_spools

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sweep_ray_tune.py"
SECRET = "ghp_sweepTokenNeverLogged"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="the git executable is required"),
]


@pytest.fixture
def launch_repo(tmp_path, monkeypatch) -> Path:
    """A throwaway repository holding the sweep script, with a remote whose URL carries a token."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Sweep Tester")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "sweep@example.com")
    repo = make_repo(tmp_path / "launch-repo", commits=0, branch="sweeps")
    shutil.copyfile(EXAMPLE, repo / EXAMPLE.name)
    git(repo, "add", EXAMPLE.name)
    git(repo, "commit", "-q", "-m", "sweep script")
    git(repo, "remote", "add", "origin", f"https://oauth2:{SECRET}@git.example.com/team/digits.git")
    return repo


def tune_results(storage: Path) -> list[dict]:
    """Every result Tune recorded: one row per (trial, epoch), read from the trials' result.json."""
    rows = []
    for path in glob.glob(str(storage / "*" / "result.json")):
        with open(path) as f:
            rows.extend(json.loads(line) for line in f if line.strip())
    return rows


def test_ray_tune_sweep_logs_every_checkpoint_once_with_provenance_and_promotes_the_best(
    server_store, launch_repo, monkeypatch
):
    epochs, experiment, registered = 2, f"sweep-{time.monotonic_ns()}", f"sweep-champion-{os.getpid()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_store, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    command = [
        sys.executable,
        EXAMPLE.name,
        "--epochs",
        str(epochs),
        "--units",
        "8",
        "--experiment",
        experiment,
        "--registered-name",
        registered,
        "--root",
        "sweep",
    ]
    sweep = subprocess.run(command, cwd=launch_repo, env=env, capture_output=True, text=True, timeout=900)
    if sweep.returncode != 0 and "timed out during startup" in sweep.stderr:
        # Ray gives its raylet a fixed 30 s to register, which an overloaded machine can miss
        # before any trial ran: start the sweep once more.
        sweep = subprocess.run(command, cwd=launch_repo, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert "sync_spool: logged" in sweep.stdout and "0 still waiting" in sweep.stdout

    # What the trials did, from Tune's own records and the files on disk.
    results = tune_results(launch_repo / "sweep" / "ray_results" / "digits-sweep")
    trials = {row["trial_id"] for row in results}
    assert len(trials) == 6
    last_epoch = {t: max(r["training_iteration"] for r in results if r["trial_id"] == t) for t in trials}
    assert any(e == 1 for e in last_epoch.values()), f"ASHA stopped no trial after its first epoch: {last_epoch}"
    checkpoint_root = launch_repo / "sweep" / "checkpoints"
    files = sorted(glob.glob(str(checkpoint_root / "*" / "*.keras")))
    expected = {str(checkpoint_root / r["trial_id"] / f"digits-{r['training_iteration']:02d}.keras") for r in results}
    assert set(files) == expected
    assert find_spools(checkpoint_root) == []  # nothing left waiting

    # What MLflow holds: one READY LoggedModel per file, none twice, each with the repo's commit.
    client = mlflow.MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    models = client.search_logged_models(experiment_ids=[experiment_id], max_results=1000)
    assert {str(m.status) for m in models} == {"READY"}
    assert len(models) == len(files)
    keys = [(m.source_run_id, m.tags["tracked_ckpt.epoch"], m.tags["tracked_ckpt.step"]) for m in models]
    assert len(set(keys)) == len(keys)
    assert sorted(m.tags["tracked_ckpt.filepath"] for m in models) == files
    commit = head(launch_repo)
    for model in models:
        assert model.tags["tracked_ckpt.git_commit"] == commit
        assert model.tags["tracked_ckpt.git_branch"] == "sweeps"
        assert model.tags["tracked_ckpt.git_remote"] == "https://git.example.com/team/digits.git"
        assert model.tags["tracked_ckpt.sha256"] == sha256(model.tags["tracked_ckpt.filepath"])
        assert SECRET not in json.dumps(model.tags)
    assert len(tracked_ckpt.list_checkpoints(experiment=experiment)) == len(files)

    # The champion is the file with the best val_loss of all trials' epochs.
    best = min(results, key=lambda r: r["val_loss"])
    best_file = str(checkpoint_root / best["trial_id"] / f"digits-{best['training_iteration']:02d}.keras")
    champion = tracked_ckpt.download_checkpoint(registered, alias="champion")
    assert sha256(champion) == sha256(best_file)


def test_half_written_model_is_never_listed_or_promoted_and_recovery_completes_it(server_store, workdir, capsys):
    marker = workdir / "stalled"
    trainer = subprocess.Popen(
        child("killed_before_ready", marker), cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert trainer.poll() is None, trainer.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the trainer never reached the epoch-3 completion"
        time.sleep(0.2)
    trainer.kill()  # SIGKILL between the LoggedModel's creation and its completion
    assert trainer.wait(60) == -9

    (run,) = mlflow.search_runs(experiment_names=[os.environ["MLFLOW_EXPERIMENT_NAME"]], output_format="list")
    run_id = run.info.run_id
    before = logged_models(run_id)
    assert [str(m.status) for m in before] == ["READY", "READY", "PENDING"]
    half = before[2]
    assert {m.key: m.value for m in half.metrics}["score"] == pytest.approx(0.1)  # the best value, if it counted

    # Never offered: not listed, not by the CLI, not promoted.
    assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(run_id=run_id)] == [1, 2]
    assert cli(["ls", "--run-id", run_id]) == 0
    out = capsys.readouterr().out
    assert half.model_id not in out and len(out.strip().splitlines()) == 3
    registered = f"half-written-{os.getpid()}-{time.monotonic_ns()}"
    result = tracked_ckpt.promote_best(registered, run_id=run_id)
    assert result.promoted and result.checkpoint.record.epoch == 2

    # The documented recovery, pointed at the job's folder, completes the same LoggedModel.
    report = tracked_ckpt.sync_spool(str(workdir), timeout=120)
    assert report.ok and len({entry.id for entry, _, _ in report.logged}) == 1
    after = logged_models(run_id)
    assert [str(m.status) for m in after] == ["READY"] * 3
    assert after[2].model_id == half.model_id
    assert after[2].tags["tracked_ckpt.sha256"] == sha256(str(workdir / "ckpt" / "h-3.keras"))
    assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(run_id=run_id)] == [1, 2, 3]
    result = tracked_ckpt.promote_best(registered, run_id=run_id)
    assert result.promoted and result.checkpoint.id == half.model_id
    assert find_spools(workdir) == []


def test_find_spools_beneath_a_sweep_root(tmp_path):
    trial = tmp_path / "trial_0"
    (trial / ".tracked_ckpt" / "spool").mkdir(parents=True)
    (trial / ".tracked_ckpt" / "spool" / "20261129T120000-0123456789ab.json").write_text("{}")
    (trial / "result.json").write_text("{}")  # Ray's own files are not spools
    (trial / "params.json").write_text("{}")
    parked = tmp_path / "custom-spool"  # a spool_dir of the user's choosing, one entry parked
    parked.mkdir()
    (parked / "20261129T120001-ba9876543210.failed").write_text("{}")
    (tmp_path / "trial_1" / ".tracked_ckpt" / "spool").mkdir(parents=True)  # emptied: nothing waits
    venv = tmp_path / ".venv"  # a virtualenv in the working folder is not searched, whatever it holds
    (venv / "lib" / "spool").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "lib" / "spool" / "20261129T120002-0123456789ab.json").write_text("{}")
    assert find_spools(tmp_path) == [str(parked), str(trial / ".tracked_ckpt" / "spool")]
    assert find_spools(parked) == [str(parked)]
    assert find_spools(tmp_path / "missing") == []


def test_fit_stopped_by_systemexit_in_a_trial_thread_finishes_uploads_and_run(embedded_store, workdir):
    callback = TrackedModelCheckpoint("ckpt/s-{epoch}.keras")
    x, y = make_data()

    # What Ray Tune does to a trial it stops: SystemExit from `tune.report` inside on_epoch_end.
    stop_like_tune = StopAfterEpoch(2, SystemExit, 0)

    def trial() -> None:  # as Ray's trial thread runs the training function
        try:
            make_model().fit(x, y, validation_split=0.25, epochs=5, verbose=0, callbacks=[callback, stop_like_tune])
        except SystemExit:
            pass

    thread = threading.Thread(target=trial)
    thread.start()
    thread.join()  # on_train_end never ran
    client = mlflow.MlflowClient()
    deadline = time.monotonic() + 120
    while (run := client.search_runs(["0"])[0]).info.status == "RUNNING":
        assert time.monotonic() < deadline, "the cut-off fit's run was never ended"
        time.sleep(0.2)
    assert run.info.status == "FINISHED"
    models = logged_models(run.info.run_id)
    assert [(m.tags["tracked_ckpt.epoch"], str(m.status)) for m in models] == [("1", "READY"), ("2", "READY")]
    assert find_spools(workdir) == []
