"""The end of fit against real MLflow servers: no long hang when the tracker is down, no cut-off slow upload."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import child, sha256
from support.mlflow_runs import logged_models
from support.mlflow_server import MlflowServer
from support.tcp_proxy import TcpProxy

from tracked_ckpt import TrackedModelCheckpoint


@pytest.mark.slow
def test_unreachable_tracker_for_the_whole_fit_returns_early_and_sync_logs_each_once(tmp_path):
    """A user's script with the server down throughout, and MLflow's own (minutes-long) HTTP retries."""
    server = MlflowServer(str(tmp_path / "server"))  # its port is free: nothing answers there yet
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.url, "MLFLOW_EXPERIMENT_NAME": "down-all-along"}
    for name in (
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
        "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ):
        env.pop(name, None)  # MLflow's defaults: 7 retries backing off for minutes
    wait_timeout = 600
    # Killed (and failed) if the script waited out wait_timeout, as it did before the stall rule.
    done = subprocess.run(
        child("fit_and_report", 3, wait_timeout),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=wait_timeout / 2,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["stalled"] and result["logged"] == 0 and result["pending"] == 3, result
    assert result["waited"] < wait_timeout / 2, result
    spool = result["spool"]
    assert "No checkpoint upload made progress" in done.stderr
    assert f"3 checkpoint(s) are not logged yet and wait in {spool}" in done.stderr
    assert f"run `tracked-ckpt sync {spool}`" in done.stderr

    # A sync while the server is still down says so at once (one probe), not after --timeout or MLflow's retries.
    early = sync_cli(spool, "900", tmp_path, env)
    assert early.returncode == 1 and "3 still pending" in early.stdout, (early.stdout, early.stderr[-2000:])
    assert f"MLflow at {server.url} does not answer, so 3 checkpoint(s) still wait" in early.stderr
    assert early.stderr.count("\n") == 1, early.stderr

    server.start(timeout=300)
    try:
        sync_env = {**env, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2"}
        synced = sync_cli(spool, "120", tmp_path, sync_env)
        assert synced.returncode == 0, synced.stderr[-3000:]
        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment = client.get_experiment_by_name("down-all-along")
        models = client.search_logged_models([experiment.experiment_id], max_results=100)
        epochs = sorted(int(m.tags["tracked_ckpt.epoch"]) for m in models)
        assert epochs == [1, 2, 3]  # every checkpoint, once
        assert {str(m.status) for m in models} == {"READY"}
        for model in models:
            local = tmp_path / "ckpt" / f"d-{model.tags['tracked_ckpt.epoch']}.keras"
            assert model.tags["tracked_ckpt.sha256"] == sha256(local)
        assert len({m.source_run_id for m in models}) == 1
    finally:
        server.stop()


def sync_cli(spool: str, timeout: str, cwd, env) -> subprocess.CompletedProcess:
    """`tracked-ckpt sync SPOOL --timeout T` in a child process (itself bounded at 300 s)."""
    return subprocess.run(
        [sys.executable, "-m", "tracked_ckpt.cli", "sync", spool, "--timeout", timeout],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def wide_model() -> keras.Model:
    """About 3 MB as a .keras file with Adam's state."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(512), keras.layers.Dense(512), keras.layers.Dense(1)], name="wide"
    )
    model.compile(optimizer="adam", loss="mse")
    return model


@pytest.mark.slow
def test_an_upload_slower_than_the_stall_window_completes_within_fit(
    server_store, mlflow_server, workdir, monkeypatch, caplog
):
    stall = 1.5
    # 256 KB/s: the ~3 MB checkpoint takes about 12 s to go through, 8 stall windows.
    with TcpProxy(mlflow_server.url, upload_rate=256 * 1024) as proxy:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
        mlflow.set_tracking_uri(proxy.url)
        callback = TrackedModelCheckpoint(
            "ckpt/slow-{epoch}.keras", monitor="loss", stall_timeout=stall, wait_timeout=300
        )
        x, y = np.random.rand(32, 4), np.random.rand(32, 1)
        with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
            wide_model().fit(x, y, epochs=1, verbose=0, callbacks=[callback])
        report = callback.last_report
        assert report.ok and not report.stalled, (report, caplog.text)
        assert "No checkpoint upload made progress" not in caplog.text
        # The premise: the upload went on well past the stall window (throttled time, a lower bound).
        assert proxy.longest_upload_s > 3 * stall, proxy.longest_upload_s
        assert any(method == "PUT" and path.endswith("/data/model.keras") for method, path in proxy.requests)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # the proxy is gone: read back directly
    mlflow.set_tracking_uri(mlflow_server.url)
    ((entry, _, model_id),) = report.logged
    (model,) = logged_models(entry.destinations["mlflow"]["run_id"])
    assert model.model_id == model_id
    assert str(model.status) == "READY"
    local = workdir / "ckpt" / "slow-1.keras"
    assert model.tags["tracked_ckpt.sha256"] == sha256(local)
    loaded = mlflow.keras.load_model(f"models:/{model.model_id}")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), keras.saving.load_model(local).predict(x, verbose=0), rtol=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("when", ["after-logging", "before-saving"])
def test_exit_after_a_fit_that_raised_is_bounded_when_the_server_is_gone(tmp_path, when):
    """Interpreter exit winds the fit down; with the server gone it gives up within the stall window."""
    stall = 3
    server = MlflowServer(str(tmp_path / "server")).start(timeout=300)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_EXPERIMENT_NAME": f"gone-{when}",
        "TRACKED_CKPT_STALL_TIMEOUT": str(stall),
    }
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        env.pop(name, None)  # MLflow's defaults: retries backing off for about 4 minutes
    mlflow.MlflowClient(tracking_uri=server.url).create_experiment(f"gone-{when}")
    try:
        job = subprocess.Popen(
            child("raise_with_server_gone", when), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        while not (tmp_path / "down?").exists():
            assert job.poll() is None, job.stderr.read()[-3000:]
            time.sleep(0.05)
        server.stop()
        (tmp_path / "down").touch()
        while not (tmp_path / "raising").exists():
            assert job.poll() is None, job.stderr.read()[-3000:]
            time.sleep(0.05)
        raised = time.monotonic()
        _, err = job.communicate(timeout=300)
        took = time.monotonic() - raised
        assert job.returncode == 1 and "the job failed at epoch 2" in err, err[-3000:]
        # Not MLflow's minutes of retries: the stall window (for the upload), a probe, and the exit.
        assert took < stall + 20, f"{took:.1f}s"
        assert "run was not ended: the tracker does not answer" in err

        server.start(timeout=300)
        spool = tmp_path / "ckpt" / ".tracked_ckpt" / "spool"
        assert spool.exists() == (when == "before-saving")  # epoch 2's checkpoint waits there
        if spool.exists():
            synced = sync_cli(str(spool), "120", tmp_path, env)
            assert synced.returncode == 0, synced.stderr[-3000:]
        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment = client.get_experiment_by_name(f"gone-{when}")
        models = client.search_logged_models([experiment.experiment_id], max_results=100)
        assert sorted(int(m.tags["tracked_ckpt.epoch"]) for m in models) == [1, 2]  # each once
        assert {str(m.status) for m in models} == {"READY"}
    finally:
        server.stop()
