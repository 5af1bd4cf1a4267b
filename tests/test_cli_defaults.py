"""`tracked-ckpt` with no flags, as a new user types it after a fit: the store in the current folder."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tokenize

import mlflow
import pytest
from support.helpers import make_data, make_model

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint, fits
from tracked_ckpt.cli import in_cli_terms, main

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]


def cli(workdir, *args) -> subprocess.CompletedProcess:
    """The command in a new process, with no tracking URI set: MLflow's default store in `workdir`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run([*CLI, *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=300)


def demo_fit(experiment: str, epochs: int) -> str:
    mlflow.set_experiment(experiment)
    x, y = make_data()
    with mlflow.start_run() as run:
        make_model("demo").fit(
            x,
            y,
            validation_split=0.25,
            epochs=epochs,
            batch_size=8,
            verbose=0,
            callbacks=[
                TrackedModelCheckpoint(f"checkpoints/{experiment}-{{epoch:02d}}.keras", monitor="val_loss"),
            ],
        )
    return run.info.run_id


def test_ls_with_no_flags_lists_the_most_recent_run(embedded_store, workdir):
    assert embedded_store == f"sqlite:///{workdir}/mlflow.db"  # what MLflow picks in this folder by default
    older = demo_fit("older-demo", epochs=3)
    newer = demo_fit("digits-demo", epochs=2)
    done = cli(workdir, "ls")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:5] == ["name", "run", "run_id", "epoch", "step"]
    ids = [line.split()[-1] for line in lines[1:]]
    client = mlflow.MlflowClient()
    newest = client.search_logged_models(
        experiment_ids=[client.get_experiment_by_name("digits-demo").experiment_id],
        filter_string=f"source_run_id = '{newer}'",
    )
    assert sorted(ids) == sorted(m.model_id for m in newest) and len(ids) == 2
    assert [line.split()[3] for line in lines[1:]] == ["1", "2"]
    assert {line.split()[2] for line in lines[1:]} == {newer}
    assert not set(ids) & {
        m.model_id
        for m in client.search_logged_models(
            experiment_ids=[client.get_experiment_by_name("older-demo").experiment_id],
            filter_string=f"source_run_id = '{older}'",
        )
    }


def test_ls_in_a_store_without_checkpoints_names_the_flags(embedded_store, workdir, monkeypatch, capsys):
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})  # as in a new process: no fit logged yet
    assert main(["ls"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"tracked-ckpt: error: No checkpoints logged at {embedded_store}: "), error
    assert "--run-id" in error and "--experiment" in error, error
    assert "run_id=" not in error and "this process" not in error, error


@pytest.mark.parametrize(
    "message, expected",
    [
        (
            "No run to look in: pass run_id= or experiment= (no fit has logged in this process).",
            "No run to look in: pass --run-id or --experiment.",
        ),
        (
            "W&B run ids are per project: pass run_id='<project>/1a2b' or experiment='<project>'.",
            "W&B run ids are per project: pass --run-id <project>/1a2b or --experiment <project>.",
        ),
        (
            "Name a registered model (with alias= or version=) or pass checkpoint=.",
            "Name a registered model (with --alias or --version) or pass checkpoint=.",
        ),
        (
            "W&B is in offline mode (WANDB_MODE or mode=), and listing needs the server",
            "W&B is in offline mode (WANDB_MODE or mode=), and listing needs the server",
        ),
        (
            "MLflow run 'x' not found at sqlite:///mlflow.db: check run_id= and MLFLOW_TRACKING_URI.",
            "MLflow run 'x' not found at sqlite:///mlflow.db: check --run-id and MLFLOW_TRACKING_URI.",
        ),
        (
            "point MLFLOW_TRACKING_URI (or tracking_uri=) at your store. Pass one of those as monitor=.",
            "point MLFLOW_TRACKING_URI (or --tracking-uri) at your store. Pass one of those as --monitor.",
        ),
        (
            "promote a checkpoint first (promote_best('digits', tracker='wandb')) or check the name.",
            "promote a checkpoint first (tracked-ckpt promote digits --tracker wandb) or check the name.",
        ),
        ("(promote_best('digits'))", "(tracked-ckpt promote digits)"),
    ],
)
def test_library_messages_speak_in_flags_on_the_command_line(message, expected):
    assert in_cli_terms(message) == expected


# The flags of options that are keyword arguments in Python: a library message names the keyword.
_FLAG = re.compile(r"--(run-id|experiment|alias|version|monitor|mode|tracker|tracking-uri|name|all-experiments)\b")


def test_library_messages_name_keywords_not_flags():
    package = os.path.dirname(tracked_ckpt.__file__)
    sources = [os.path.join(package, f) for f in os.listdir(package) if f.endswith(".py") and f != "cli.py"]
    # Its own folder: `integrations/` in a checkout, mapped into the package by the packaging.
    integrations = os.path.dirname(importlib.import_module("tracked_ckpt.integrations").__file__)
    sources += [os.path.join(integrations, f) for f in os.listdir(integrations)]
    flagged = []
    for path in sorted(s for s in sources if s.endswith(".py")):
        with open(path) as f:
            tokens = list(tokenize.generate_tokens(f.readline))
        strings = [t for t in tokens if t.type in (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1))]
        flagged += [f"{os.path.basename(path)}:{t.start[0]}" for t in strings if _FLAG.search(t.string)]
    assert flagged == []


def test_the_api_speaks_python_and_the_cli_flags(embedded_store, workdir, monkeypatch, capsys):
    monkeypatch.setattr(fits, "_LAST_DESTINATIONS", {})
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(LookupError) as caught:
        tracked_ckpt.list_checkpoints(run_id=missing)
    assert "check run_id= and MLFLOW_TRACKING_URI" in str(caught.value) and "--" not in str(caught.value)
    assert main(["ls", "--run-id", missing]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "check --run-id and MLFLOW_TRACKING_URI" in error and "run_id=" not in error, error
    with pytest.raises(LookupError) as caught:
        tracked_ckpt.load_model("never-promoted")
    assert "(promote_best('never-promoted'))" in str(caught.value)
    assert main(["show", "never-promoted"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "(tracked-ckpt promote never-promoted)" in error and "promote_best" not in error, error
