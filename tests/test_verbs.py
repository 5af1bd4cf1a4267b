"""The verbs beyond promote and load: rm, diff, load and pull by run and epoch or by name, ls --registered-model.

Each runs on MLflow against the real `mlflow server` (the API, and the CLI in a subprocess) and on
W&B against the contract-checked fake of `wandb.Api` (the API, and the CLI in process with
`wandb.Api` giving a client on the fake). Checkpoints are real .keras files logged through each
tracker's own `log_checkpoint` (MLflow) or named and described as `WandbTracker` does (W&B), so no
test pays for a fit. A dead port and a failing W&B answer each new command in one line:
tests/test_reads_fail_fast.py holds the MLflow cases with the other reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import uuid

import keras
import mlflow
import numpy as np
import pytest
import wandb
from mlflow.exceptions import MlflowException
from support.helpers import make_data, make_model
from support.wandb_fake import FakeServer

import tracked_ckpt
from tracked_ckpt import (
    AmbiguousCheckpointError,
    CheckpointNotFoundError,
    ProtectedCheckpointError,
    TrackedCkptError,
    TrackerError,
)
from tracked_ckpt import cli as cli_module
from tracked_ckpt import fits as fits_module
from tracked_ckpt.integrations import wandb_schema as wb
from tracked_ckpt.integrations.mlflow import MlflowTracker
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.record import CheckpointRecord, checkpoint_name

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]
# (epoch, batch, val_loss): epoch 2 has a batch-level save before its end-of-epoch one.
SAVES = [(1, None, 0.50), (2, 3, 0.45), (2, None, 0.30), (3, None, 0.35)]
NAMES = ["tiny-e0001", "tiny-e0002-b000003", "tiny-e0002", "tiny-e0003"]


def unique(name: str) -> str:
    """Registered models and experiments are global on the shared server: one per test."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[tuple[CheckpointRecord, str]]:
    """One real .keras file per save (distinct weights), and its record as the callback builds it."""
    directory = tmp_path_factory.mktemp("saves")
    model = make_model()
    best, out = None, []
    for i, (epoch, batch, val_loss) in enumerate(SAVES):
        model.layers[-1].bias.assign([float(i)])
        path = os.path.join(str(directory), f"m-{i}.keras")
        model.save(path)
        with open(path, "rb") as f:
            data = f.read()
        is_best = best is None or val_loss < best
        best = val_loss if is_best else best
        record = CheckpointRecord(
            name=checkpoint_name("tiny", epoch, batch),
            epoch=epoch,
            step=10 * i + 1,
            batch=batch,
            monitor="val_loss",
            mode="min",
            value=val_loss,
            is_best=is_best,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            format="keras",
            filepath=path,
            keras_version=keras.__version__,
            backend=keras.backend.backend(),
            git_commit=f"{i:x}" * 40,
            metrics={"val_loss": val_loss, "mae": 1.0 - val_loss},
        )
        out.append((record, path))
    return out


class MlflowCase:
    """The real MLflow server: an experiment of the test's own; the CLI in a subprocess."""

    name = "mlflow"

    def __init__(self, url: str, workdir):
        self.url, self.workdir = url, workdir
        self.experiment = unique("verbs")
        self.tracker = MlflowTracker(tracking_uri=url)

    def log(self, records, run: str, config=None) -> str:
        """Log `records` into a new run named `run` with params `config`; return its id."""
        tracker = MlflowTracker(tracking_uri=self.url, experiment=self.experiment, run_name=run)
        destination = tracker.start()
        for key, value in (config or {}).items():
            mlflow.MlflowClient(self.url).log_param(destination["run_id"], key, value)
        for record, path in records:
            tracker.log_checkpoint(record, path, destination)
        tracker.finish()
        return destination["run_id"]

    def exists(self, checkpoint_id: str) -> bool:
        try:
            mlflow.MlflowClient(self.url).get_logged_model(checkpoint_id)
        except MlflowException:
            return False
        return True

    def cli(self, *args: str) -> tuple[int, str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        done = subprocess.run(
            [*CLI, *args, "--tracking-uri", self.url], cwd=self.workdir, env=env, capture_output=True, text=True
        )
        return done.returncode, done.stdout, done.stderr


class WandbCase:
    """The W&B fake: runs are written into it as `WandbTracker` names them; the CLI runs in process."""

    name = "wandb"

    def __init__(self, monkeypatch, capsys):
        self.server = FakeServer(entity="team", project="proj")
        self.experiment = "proj"
        self.tracker = WandbTracker(project="proj", api=self.server.api())
        self.capsys = capsys
        monkeypatch.delenv("WANDB_MODE", raising=False)
        monkeypatch.setenv("WANDB_PROJECT", "proj")
        monkeypatch.setattr(wandb, "Api", lambda overrides=None: self.server.api())

    def log(self, records, run: str, config=None) -> str:
        self.server.configs[("team", "proj", run)] = dict(config or {})
        for record, path in records:
            with open(path, "rb") as f:
                data = f.read()
            self.server.log(
                wb.collection_name(record, run),
                {os.path.basename(path): data},
                wb.artifact_metadata(record, run),
                wb.checkpoint_aliases(record),
                run_id=run,
            )
        return run

    def exists(self, checkpoint_id: str) -> bool:
        try:
            self.server.resolve(checkpoint_id)
        except KeyError:
            return False
        return True

    def cli(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = cli_module.main([*args, "--tracker", "wandb"])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture(params=["mlflow", "wandb"])
def case(request, workdir, monkeypatch, capsys):
    monkeypatch.setattr(fits_module, "_LAST_DESTINATIONS", {})  # as in a new process
    if request.param == "mlflow":
        return MlflowCase(request.getfixturevalue("mlflow_server").url, workdir)
    return WandbCase(monkeypatch, capsys)


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tracked-ckpt: error: "), err
    return lines[0]


def predictions(model) -> np.ndarray:
    x, _ = make_data()
    return model.predict(x, verbose=0)


def test_load_and_pull_by_run_and_epoch_or_by_name(case, records, workdir):
    run = case.log(records, "first")
    t = case.tracker
    # An epoch means its end-of-epoch save, not the batch-level save of the same epoch.
    assert tracked_ckpt.find_checkpoint(run_id=run, epoch=2, tracker=t).record.name == "tiny-e0002"
    by_step = tracked_ckpt.find_checkpoint(run_id=run, epoch=2, step=records[1][0].step, tracker=t)
    assert by_step.record.name == "tiny-e0002-b000003"
    assert tracked_ckpt.find_checkpoint("tiny", epoch=3, run_id=run, tracker=t).record.name == "tiny-e0003"
    loaded = tracked_ckpt.load_model(run_id=run, epoch=2, tracker=t)
    expected = predictions(keras.saving.load_model(records[2][1]))
    np.testing.assert_allclose(predictions(loaded), expected, rtol=1e-6)
    by_name = tracked_ckpt.load_model(name="tiny-e0003", experiment=case.experiment, tracker=t)
    np.testing.assert_allclose(predictions(by_name), predictions(keras.saving.load_model(records[3][1])), rtol=1e-6)
    path = tracked_ckpt.download_checkpoint(name="tiny", epoch=1, run_id=run, tracker=t)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == records[0][0].sha256

    code, out, err = case.cli("pull", "--run-id", run, "--epoch", "3", "-o", str(workdir / "pulled"))
    assert code == 0, err
    assert hashlib.sha256(open(out.strip(), "rb").read()).hexdigest() == records[3][0].sha256

    # Nothing found names what exists; a registered name and a logged checkpoint at once is refused.
    with pytest.raises(
        CheckpointNotFoundError, match=f"No checkpoint matches epoch 9 in run {run}: it has {', '.join(NAMES)}"
    ):
        tracked_ckpt.load_model(run_id=run, epoch=9, tracker=t)
    with pytest.raises(ValueError, match="not both"):
        tracked_ckpt.load_model("some-model", run_id=run, epoch=1, tracker=t)


def test_a_name_in_two_runs_is_ambiguous_and_lists_both(case, records):
    first = case.log(records, "first")
    second = case.log(records[:1], "second")
    t = case.tracker
    with pytest.raises(AmbiguousCheckpointError, match="2 checkpoints match tiny-e0001 in experiment") as raised:
        tracked_ckpt.find_checkpoint("tiny-e0001", experiment=case.experiment, tracker=t)
    message = str(raised.value)
    assert first in message and second in message and "pass run_id= to choose one" in message
    assert tracked_ckpt.find_checkpoint("tiny-e0001", run_id=second, tracker=t).run_id == second
    code, _, err = case.cli("rm", "tiny-e0001", "--experiment", case.experiment)
    line = one_line_error(code, err)
    assert "2 checkpoints match tiny-e0001" in line and "pass --run-id to choose one" in line, line
    assert len(tracked_ckpt.list_checkpoints(experiment=case.experiment, tracker=t)) == 5  # nothing deleted


def test_rm_refuses_a_promoted_checkpoint_unless_forced(case, records):
    run = case.log(records, "first")
    t = case.tracker
    model = unique("verbs-rm")
    promoted = tracked_ckpt.promote_best(model, run_id=run, tracker=t)
    champion = promoted.checkpoint
    assert champion.record.name == "tiny-e0002"

    with pytest.raises(ProtectedCheckpointError, match=r"tiny-e0002 of run .* 'champion'.*force=True") as raised:
        tracked_ckpt.delete_checkpoint(run_id=run, epoch=2, tracker=t)
    assert isinstance(raised.value, TrackedCkptError) and "\n" not in str(raised.value)
    code, _, err = case.cli("rm", "tiny-e0002", "--run-id", run)
    line = one_line_error(code, err)
    assert model in line and "'champion'" in line and "--force" in line, line
    assert case.exists(champion.id)

    # An unprotected one is deleted by the API and by the CLI, through the tracker's delete path.
    first = tracked_ckpt.find_checkpoint("tiny-e0001", run_id=run, tracker=t)
    deletion = tracked_ckpt.delete_checkpoint("tiny-e0001", run_id=run, tracker=t)
    assert deletion.checkpoint.id == first.id and deletion.unregistered == ()
    assert not case.exists(first.id)
    last = tracked_ckpt.find_checkpoint(run_id=run, epoch=3, tracker=t)
    code, out, err = case.cli("rm", last.id, "--run-id", run)  # by id, as ls prints it
    assert code == 0 and out.startswith("Deleted tiny-e0003 of run"), err
    assert not case.exists(last.id)

    # Forced: the registered version goes first, so no alias is left pointing at a deleted checkpoint.
    code, out, err = case.cli("rm", "tiny-e0002", "--run-id", run, "--force")
    assert code == 0, err
    assert re.match(
        rf"Deleted tiny-e0002 of run .*, after removing \S*{model} version v?[01] \(alias 'champion'\)", out
    )
    assert not case.exists(champion.id)
    with pytest.raises(LookupError, match="has no alias 'champion'"):
        tracked_ckpt.registered_checkpoint(model, tracker=t)
    assert [c.record.name for c in tracked_ckpt.list_checkpoints(run_id=run, tracker=t)] == ["tiny-e0002-b000003"]

    # Deleting what is gone says what is left.
    with pytest.raises(
        CheckpointNotFoundError, match=f"No checkpoint matches tiny-e0001 in run {run}: it has tiny-e0002-b"
    ):
        tracked_ckpt.delete_checkpoint("tiny-e0001", run_id=run, tracker=t)


def test_diff_compares_metrics_epoch_commit_config_size_and_run(case, records):
    run = case.log(records, "first", config={"lr": 0.01, "batch_size": 8})
    other = case.log(records[3:], "second", config={"lr": 0.001, "batch_size": 8})
    t = case.tracker
    diff = tracked_ckpt.compare_checkpoints("tiny-e0001", "tiny-e0003", run_id=run, tracker=t)
    differing = {field: (a, b) for field, a, b in diff.differences}
    assert differing["epoch"] == (1, 3) and differing["step"] == (1, 31)
    assert differing["metric.val_loss"] == pytest.approx((0.50, 0.35))
    assert differing["git_commit"] == ("0" * 40, "3" * 40)
    assert differing["sha256"] == (records[0][0].sha256, records[3][0].sha256)
    assert "run_id" not in differing and "monitor" not in differing and "keras_version" not in differing
    assert "config.lr" not in differing  # one run
    rows = {field: (a, b) for field, a, b in diff.rows}
    assert rows["size_bytes"] == (records[0][0].size_bytes, records[3][0].size_bytes)
    assert tuple(map(str, rows["config.batch_size"])) == ("8", "8")

    # The same file logged by two runs: only where it was logged differs.
    a = tracked_ckpt.find_checkpoint("tiny-e0003", run_id=run, tracker=t)
    b = tracked_ckpt.find_checkpoint("tiny-e0003", run_id=other, tracker=t)
    code, out, err = case.cli("diff", a.id, b.id, "--json")
    assert code == 0, err
    answer = json.loads(out)
    # (W&B's checkpoints do not carry their run's display name: "run" is the same there.)
    assert {"id", "run_id", "config.lr"} <= set(answer["differences"]) <= {"id", "run", "run_id", "config.lr"}
    assert answer["a"]["run_id"] == run and answer["b"]["run_id"] == other
    assert (str(answer["a"]["config.lr"]), str(answer["b"]["config.lr"])) == ("0.01", "0.001")
    code, out, err = case.cli("diff", "tiny-e0001", "tiny-e0003", "--run-id", run)
    assert code == 0, err
    table = {line.split()[0]: line.split()[1:] for line in out.strip().splitlines()[1:]}
    assert table["epoch"] == ["1", "3", "*"] and table["metric.val_loss"] == ["0.5", "0.35", "*"]
    assert "backend" not in table  # the same in both: shown with --all only


def test_ls_by_registered_model_lists_versions_and_aliases(case, records):
    first = case.log(records, "first")
    second = case.log(records[3:], "second")
    t = case.tracker
    model = unique("verbs-ls")
    tracked_ckpt.promote_best(model, run_id=first, tracker=t)
    tracked_ckpt.promote_best(model, run_id=second, tracker=t, alias="challenger", only_if_better=False)
    versions = tracked_ckpt.registered_versions(model, tracker=t)
    assert [(c.record.name, c.run_id, c.aliases) for c in versions] == [
        ("tiny-e0002", first, ("champion",)),
        ("tiny-e0003", second, ("challenger",)),
    ]
    assert [c.extra["version"] for c in versions] == (["1", "2"] if case.name == "mlflow" else ["v0", "v1"])

    code, out, err = case.cli("ls", "--registered-model", model)
    assert code == 0, err
    rows = [line.split() for line in out.strip().splitlines()]
    assert rows[0][:3] == ["version", "aliases", "name"]
    assert [(row[1], row[2]) for row in rows[1:]] == [("champion", "tiny-e0002"), ("challenger", "tiny-e0003")]
    code, out, err = case.cli("ls", "--registered-model", model, "--json")
    assert [json.loads(line)["run_id"] for line in out.strip().splitlines()] == [first, second]

    missing = unique("verbs-none")
    with pytest.raises(LookupError, match=f"No (registered model|Registry collection) .*{missing}"):
        tracked_ckpt.registered_versions(missing, tracker=t)
    line = one_line_error(*case.cli("ls", "--registered-model", missing)[::2])
    assert missing in line


def test_w_and_b_offline_or_failing_says_so_in_one_line(records, monkeypatch, capsys):
    """Deleting, comparing and listing versions need the W&B server: offline, or failing, one line."""
    monkeypatch.setattr(fits_module, "_LAST_DESTINATIONS", {})
    offline = WandbTracker(project="proj", mode="offline")
    # Offline, checkpoints are read from the offline runs on disk (`wandb_offline`): none here.
    for verb in (
        lambda t: tracked_ckpt.delete_checkpoint("tiny-e0001", run_id="r1", tracker=t),
        lambda t: tracked_ckpt.compare_checkpoints("tiny-e0001", "tiny-e0002", run_id="r1", tracker=t),
        lambda t: tracked_ckpt.load_model(run_id="r1", epoch=1, tracker=t),
    ):
        with pytest.raises(LookupError, match=r"^No W&B offline run in \S+: train with WANDB_MODE=offline") as failed:
            verb(offline)
        assert "\n" not in str(failed.value)
    with pytest.raises(TrackerError, match="offline mode.*needs the W&B server: run `wandb sync"):
        tracked_ckpt.registered_versions("clf", tracker=offline)
    case = WandbCase(monkeypatch, capsys)
    case.log(records, "r1")
    case.server.failure = "http"
    for argv in (
        ["rm", "tiny-e0001", "--run-id", "r1"],
        ["diff", "tiny-e0001", "tiny-e0002", "--run-id", "r1"],
        ["ls", "--registered-model", "clf"],
        ["pull", "--run-id", "r1", "--epoch", "1"],
    ):
        line = one_line_error(*case.cli(*argv)[::2])
        assert re.match(r"^tracked-ckpt: error: Cannot read W&B \S+ \S+: HTTP 503.*Try again once W&B answers\.$", line)


def test_w_and_b_a_version_a_person_aliased_is_kept_unless_forced(records, monkeypatch, capsys):
    """On W&B an alias a person gave the logged version protects it too (as it does from `keep_top_k`)."""
    monkeypatch.setattr(fits_module, "_LAST_DESTINATIONS", {})
    case = WandbCase(monkeypatch, capsys)
    case.log(records, "r1")
    path = tracked_ckpt.find_checkpoint("tiny-e0003", run_id="r1", tracker=case.tracker).id
    artifact = case.server.api().artifact(path)
    artifact.aliases = [*artifact.aliases, "keep-me"]
    artifact.save()
    with pytest.raises(
        ProtectedCheckpointError, match=r"^tiny-e0003 of run r1 is held by \S+ version v3 \(alias 'keep-me'\)"
    ):
        tracked_ckpt.delete_checkpoint("tiny-e0003", run_id="r1", tracker=case.tracker)
    assert case.exists(path)
    deletion = tracked_ckpt.delete_checkpoint("tiny-e0003", run_id="r1", tracker=case.tracker, force=True)
    assert [(r.version, r.aliases) for r in deletion.unregistered] == [("v3", ("keep-me",))]
    assert not case.exists(path)
    assert [c.record.name for c in tracked_ckpt.list_checkpoints(run_id="r1", tracker=case.tracker)] == NAMES[:3]
