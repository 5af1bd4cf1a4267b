"""`wandb_env`: a hermetic W&B for a test (offline, everything under its tmp_path, no network).

A pytest plugin (`tests/conftest.py` loads it): W&B is imported when the fixture is used, never
at collection, so tests that do not use W&B need no `[wandb]` extra.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """A hermetic W&B: offline, everything under tmp_path, nothing in $HOME, no network."""
    import wandb

    for name in (
        "WANDB_API_KEY",
        "WANDB_ENTITY",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_NAME",
        "WANDB_RUN_GROUP",
        "WANDB_JOB_TYPE",
        "WANDB_TAGS",
        "WANDB_NOTES",
        "WANDB_BASE_URL",
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_RUN_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    dirs = {
        "HOME": tmp_path / "home",
        "WANDB_DIR": tmp_path / "wandb_dir",
        "WANDB_DATA_DIR": tmp_path / "wandb_data",
        "WANDB_CACHE_DIR": tmp_path / "wandb_cache",
        "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
        "WANDB_ARTIFACT_DIR": tmp_path / "artifacts",
    }
    for name, path in dirs.items():
        path.mkdir()
        monkeypatch.setenv(name, str(path))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_PROJECT", "tracked-ckpt-test")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    monkeypatch.setenv("WANDB_X_DISABLE_STATS", "true")
    monkeypatch.chdir(tmp_path)
    # wandb caches its settings (and WANDB_* env) process-wide at the first init: reset it.
    wandb.teardown()
    yield tmp_path
    if wandb.run is not None:
        wandb.run.finish()
    wandb.teardown()
