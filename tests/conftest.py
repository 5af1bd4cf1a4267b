"""Shared fixtures: a real MLflow server, the embedded sqlite store, tiny Keras models."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import mlflow  # noqa: E402
import pytest  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on a free 127.0.0.1 port.

    `stop()` and `start()` keep the same store and port, so a test can take the
    server away in the middle of training and bring it back.
    """

    def __init__(self, root: str):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = os.path.join(root, "mlflow.db")
        self.artifacts = os.path.join(root, "artifacts")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90.0) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        log = open(os.path.join(self.root, "server.log"), "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{self.db}",
                "--artifacts-destination", self.artifacts,
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            ],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not become healthy in {timeout}s: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.proc = None

    def log_tail(self) -> str:
        try:
            with open(os.path.join(self.root, "server.log"), "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server shared by the session."""
    server = MlflowServer(str(tmp_path_factory.mktemp("mlflow-server")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test from an empty directory (MLflow's ./mlruns, spools and checkpoints land here)."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # MLflow keeps the fluent experiment in a module global; don't let it leak into the next test.
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it


def _use_tracking_uri(monkeypatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> str:
    """An empty MLflow database with its schema created once (migrations take seconds)."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return str(path)


@pytest.fixture
def embedded_store(workdir, monkeypatch, migrated_db):
    """MLflow's embedded sqlite store in the test's directory; yields its tracking URI."""
    shutil.copyfile(migrated_db, workdir / "mlflow.db")
    with sqlite3.connect(workdir / "mlflow.db") as db:  # the Default experiment's root was fixed at creation
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(workdir / "mlruns"),))
    uri = f"sqlite:///{workdir}/mlflow.db"
    _use_tracking_uri(monkeypatch, uri)
    yield uri
    mlflow.set_tracking_uri(None)


@pytest.fixture
def server_store(workdir, mlflow_server, monkeypatch):
    """The real MLflow server; yields its URI, with a fresh experiment per test."""
    _use_tracking_uri(monkeypatch, mlflow_server.url)
    experiment = f"test-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    yield mlflow_server.url
    mlflow.set_tracking_uri(None)


@pytest.fixture(params=["server", "embedded"])
def store(request):
    """Each test using this runs against the real server and the embedded store."""
    name = "server_store" if request.param == "server" else "embedded_store"
    return request.getfixturevalue(name)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    # Downloads must not land in (or be served from) the real ~/.cache.
    monkeypatch.setenv("TRACKED_CKPT_CACHE", str(tmp_path_factory.mktemp("cache")))


def have_git() -> bool:
    return shutil.which("git") is not None
