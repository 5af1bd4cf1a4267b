"""Shared fixtures: a real MLflow server, the embedded sqlite store, an isolated environment.

Nothing here imports a tracker at import time: MLflow is imported by the fixtures that need it,
so the core's tests run without the `[mlflow]` extra (tests/test_pure.py checks that).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

# Fixtures kept with their support code: `wandb_env` (imports W&B on use), `installed_folder_tracker`.
pytest_plugins = ["support.wandb_env", "support.folder_plugin"]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server shared by the session."""
    from support.mlflow_server import MlflowServer

    server = MlflowServer(str(tmp_path_factory.mktemp("mlflow-server")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_server(tmp_path_factory, workdir, monkeypatch):
    """A server of this test's own, which the test may stop and restart on the same store."""
    from support.mlflow_server import MlflowServer

    server = MlflowServer(str(tmp_path_factory.mktemp("own-server")))
    server.start()
    # MLflow's own HTTP retries back off for minutes (7 tries, factor 2); the spool retries
    # on its own, so fail fast and let it: recovery follows the server within seconds.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    _use_tracking_uri(monkeypatch, server.url)
    yield server
    server.stop()
    sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture(scope="session")
def production_stack(tmp_path_factory):
    """PostgreSQL + S3 (moto) + mlflow server, for the session; skipped only where it cannot exist."""
    from support.production_stack import ProductionStack, StackUnavailable

    stack = ProductionStack(str(tmp_path_factory.mktemp("production-stack")))
    try:
        stack.start()
    except StackUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"production stack unavailable on CI: {exc}")
        pytest.skip(f"production stack unavailable: {exc}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in stack.timings.items() if v is not None)
    print(f"\nproduction stack up: {timings}", file=sys.stderr)
    yield stack
    stack.stop()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run the test from an empty directory (MLflow's ./mlruns, spools and checkpoints land here)."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:  # never imported: no fluent state to reset
        return
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # MLflow keeps the fluent experiment in a module global; don't let it leak into the next test.
    mlflow.tracking.fluent._active_experiment_id = None
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)  # mlflow.set_experiment exports it


def _use_tracking_uri(monkeypatch, uri: str) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> str:
    """An empty MLflow database with its schema created once (migrations take seconds)."""
    import mlflow

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
    sys.modules["mlflow"].set_tracking_uri(None)


@pytest.fixture
def server_store(workdir, mlflow_server, monkeypatch):
    """The real MLflow server; yields its URI, with a fresh experiment per test."""
    _use_tracking_uri(monkeypatch, mlflow_server.url)
    experiment = f"test-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    yield mlflow_server.url
    sys.modules["mlflow"].set_tracking_uri(None)


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
    # Each test sees its own first warning about missing git provenance (once per process, per reason).
    from tracked_ckpt import git as git_provenance

    monkeypatch.setattr(git_provenance, "_WARNED", set())


@pytest.fixture
def isolated_git(monkeypatch, tmp_path):
    """No user/system git config, a fixed identity, and no GIT_* variables from the caller."""
    for var in (
        "GIT_DIR",
        "GIT_WORK_TREE",
        "GIT_INDEX_FILE",
        "GIT_OBJECT_DIRECTORY",
        "GIT_ALTERNATE_OBJECT_DIRECTORIES",
        "GIT_COMMON_DIR",
        "GIT_NAMESPACE",
        "GIT_CEILING_DIRECTORIES",
        "GIT_DISCOVERY_ACROSS_FILESYSTEM",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    for role in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{role}_NAME", "Test User")
        monkeypatch.setenv(f"GIT_{role}_EMAIL", "test@example.com")


def have_git() -> bool:
    return shutil.which("git") is not None
