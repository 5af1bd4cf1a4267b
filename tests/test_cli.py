"""The tracked-ckpt command on a real store: ls, show, promote, pull, sync."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mlflow
import pytest
from support.helpers import child, sha256
from support.mlflow_runs import logged_models, train_run

from tracked_ckpt.cli import main

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


HEADER = ["name", "run", "run_id", "epoch", "step", "monitor", "value", "best", "commit", "dirty", "size", "id"]


def table(out: str) -> list[dict[str, str]]:
    """The rows of `ls` as dicts by column, cut where the header's columns start (a size has a space)."""
    lines = out.strip().splitlines()
    assert lines[0].split() == HEADER
    starts = [lines[0].index(f"{name} ") if name != "id" else lines[0].rindex("id") for name in HEADER]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    return [{name: line[a:b].strip() for name, (a, b) in zip(HEADER, bounds, strict=True)} for line in lines[1:]]


def test_ls_show_promote_pull(embedded_store, workdir, capsys):
    run_id = train_run([0.4, 0.2, 0.3], "ckpt/c-{epoch}.keras", run_name="first-try")
    code, out, _ = run_cli(capsys, "ls", "--run-id", run_id)
    assert code == 0
    rows = table(out)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert rows[1]["value"] == "0.2" and rows[1]["best"] == "*"
    assert {(row["run"], row["run_id"]) for row in rows} == {("first-try", run_id)}
    assert [row["name"] for row in rows] == ["tiny-e0001", "tiny-e0002", "tiny-e0003"]

    code, out, _ = run_cli(capsys, "ls", "--run-id", run_id, "--where", "is_best=true", "--json")
    assert [json.loads(line)["epoch"] for line in out.strip().splitlines()] == [1, 2]

    code, out, _ = run_cli(capsys, "promote", "cli-model", "--run-id", run_id)
    assert code == 0 and "cli-model@champion -> version 1" in out
    assert f"tiny-e0002 of run 'first-try' ({run_id})" in out

    code, out, _ = run_cli(capsys, "show", "cli-model")
    assert code == 0 and "c-e0002" not in out  # named after the model, not the file
    assert "tiny-e0002" in out and "epoch: 2" in out and "aliases: champion" in out
    assert f"run: first-try ({run_id})" in out
    experiment_id = mlflow.get_run(run_id).info.experiment_id
    assert f"ui: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs/{run_id}" in out

    code, out, _ = run_cli(capsys, "pull", "cli-model", "--alias", "champion", "-o", str(workdir / "pulled"))
    pulled = out.strip()
    assert code == 0 and pulled == str(workdir / "pulled" / "c-2.keras")
    assert sha256(pulled) == sha256(workdir / "ckpt" / "c-2.keras")


@pytest.mark.parametrize(
    "args, message",
    [
        (["promote", "m", "--alias", "latest"], "reserved"),
        (["show", "missing-model"], "has no alias 'champion'"),
        (["ls", "--run-id", "0123456789abcdef"], "not found"),
        (["ls", "--where", "colour=red", "--run-id", "x"], ""),
        (["ls", "--tracker", "nosuch", "--run-id", "x"], "Unknown tracker 'nosuch'"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(embedded_store, workdir, capsys, args, message):
    code, _out, err = run_cli(capsys, *args)
    assert code == 1
    assert err.startswith("tracked-ckpt: error: ") and err.count("\n") == 1
    assert message in err


def help_entries(*args):
    """The first word of each indented help line: the commands or options argparse documents."""
    out = subprocess.run([*CLI, *args, "--help"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0].rstrip(",") for line in out.splitlines() if line.startswith("  ") and line.split()}


def test_help_documents_every_command_and_option():
    assert {"ls", "show", "promote", "pull", "sync", "rm", "diff"} <= help_entries()
    options = {"--run-id", "--experiment", "--tracker", "--tracking-uri", "--alias", "--monitor", "--mode", "--force"}
    assert options <= help_entries("promote")
    assert {"--run-id", "--experiment", "--where", "--json", "--registered-model"} <= help_entries("ls")
    which = {"--run-id", "--experiment", "--epoch", "--step", "--tracker", "--tracking-uri"}
    assert which | {"--force"} <= help_entries("rm")
    assert which | {"--alias", "--version", "--name", "-o"} <= help_entries("pull")
    assert {"--run-id", "--experiment", "--all", "--json", "--tracker", "--tracking-uri"} <= help_entries("diff")
    assert {"--timeout", "--retry-failed", "--tracking-uri"} <= help_entries("sync")
    assert "--tracker" not in help_entries("sync")  # sync logs to the trackers the spool names


@pytest.mark.slow
def test_sync_logs_what_a_killed_job_left_none_twice(embedded_store, workdir):
    died = subprocess.run(child("killed_while_uploading"), cwd=workdir, capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    before = logged_models(run.info.run_id)
    assert [str(m.status) for m in before] == ["PENDING"], "the kill should land mid-upload"
    spool = workdir / "ckpt" / ".tracked_ckpt" / "spool"
    assert len([f for f in os.listdir(spool) if f.endswith(".json")]) == 4

    # Folders that overlap (a root, a folder beneath it, the spool itself): each spool is synced once.
    synced = subprocess.run([*CLI, "sync", ".", "ckpt", str(spool)], cwd=workdir, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert "logged 4 checkpoint(s), 0 still pending" in synced.stdout
    assert synced.stdout.count("checkpoint(s)") == 1, synced.stdout
    after = logged_models(run.info.run_id)
    assert [m.name for m in after] == [f"tiny-e000{i}" for i in range(1, 5)]
    assert {str(m.status) for m in after} == {"READY"}
    assert after[0].model_id == before[0].model_id  # the interrupted one was completed, not duplicated
    for model in after:
        local = workdir / "ckpt" / f"k-{model.tags['tracked_ckpt.epoch']}.keras"
        assert model.tags["tracked_ckpt.sha256"] == sha256(local)
    assert not spool.exists()
    # A second sync finds nothing left and logs nothing again.
    again = subprocess.run([*CLI, "sync"], cwd=workdir, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to sync" in again.stdout
    assert len(logged_models(run.info.run_id)) == 4


@pytest.mark.slow
def test_sync_logs_to_a_store_that_moved(embedded_store, workdir):
    died = subprocess.run(child("killed_while_uploading"), cwd=workdir, capture_output=True, text=True)
    assert died.returncode == -9, died.stderr[-2000:]
    (run,) = mlflow.search_runs(experiment_names=["Default"], output_format="list")
    mlflow.set_tracking_uri(None)
    os.rename(workdir / "mlflow.db", workdir / "moved.db")  # the URI the spool recorded no longer holds the runs
    moved = f"sqlite:///{workdir}/moved.db"

    synced = subprocess.run([*CLI, "sync", "--tracking-uri", moved], cwd=workdir, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr[-2000:]
    assert "logged 4 checkpoint(s), 0 still pending" in synced.stdout
    client = mlflow.MlflowClient(moved)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
    )
    assert sorted(m.name for m in models) == [f"tiny-e000{i}" for i in range(1, 5)]
    assert {str(m.status) for m in models} == {"READY"}
    assert not (workdir / "ckpt" / ".tracked_ckpt" / "spool").exists()
