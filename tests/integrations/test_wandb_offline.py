"""W&B offline runs read from disk: list, rank and load an offline run's checkpoints without a server.

Real offline fits (the wandb SDK writing its transaction log, real Keras training); the
checkpoints read back from the run's folder are checked against the records the fit logged,
through the registry helper and through the `tracked-ckpt` command in a subprocess. A log cut
anywhere (a run still being written) reads as the checkpoints complete before the cut.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import wandb
from support.wandb_records import run_dirs
from test_wandb import train

import tracked_ckpt
from tracked_ckpt import ChecksumError
from tracked_ckpt.files import sha256_file
from tracked_ckpt.integrations import wandb_offline
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.tracker import TrackerError

CLI = [sys.executable, "-m", "tracked_ckpt.cli"]


def offline_fit(root, monkeypatch, run_name="tune-trial-03", wandb_dir="wandb_dir", **kwargs):
    """A real offline fit of the tiny model (val_loss 0.5, 0.7, 0.4); returns the callback and its run folder."""
    monkeypatch.setenv("WANDB_NAME", run_name)
    checkpoint = train(str(root / "ckpt" / "m-{epoch:02d}.keras"), **kwargs)
    (run_dir,) = run_dirs(str(root / wandb_dir))
    return checkpoint, run_dir


def logged_records(checkpoint):
    return [entry.record for entry, tracker, _ in checkpoint.last_report.logged if tracker == "wandb"]


def cli(*args, cwd):
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True)


def test_an_offline_fit_is_listed_ranked_and_loaded_from_its_folder(wandb_env, monkeypatch):
    checkpoint, run_dir = offline_fit(wandb_env, monkeypatch)
    run_id = checkpoint.session.destinations["wandb"]["run_id"]
    records = logged_records(checkpoint)
    assert [r.epoch for r in records] == [1, 2, 3]

    # WANDB_MODE=offline and the last fit logged offline: its folder, no server.
    listed = tracked_ckpt.list_checkpoints(tracker="wandb")
    assert [c.record.metadata() for c in listed] == [r.metadata() for r in records]
    assert [c.record.metrics for c in listed] == [pytest.approx(dict(r.metrics)) for r in records]
    for c, record in zip(listed, records):
        assert (c.run_id, c.extra["run_name"], c.tracker) == (run_id, "tune-trial-03", "wandb")
        assert c.id == f"tracked-ckpt-test/tiny-{run_id}:epoch-{record.epoch}"  # what the fit's log said
        assert c.location.startswith(run_dir + os.sep)
        assert sha256_file(c.location) == (record.sha256, record.size_bytes)
    # As W&B will hold them once synced: `best` and `latest` moved on to epoch 3.
    assert [c.aliases for c in listed] == [("epoch-1",), ("epoch-2",), ("best", "epoch-3", "latest")]

    # The same run by its folder, by its id, by its project, and every offline run of a folder.
    for scope in ({"run_id": run_dir}, {"run_id": run_id}, {"experiment": "tracked-ckpt-test"}):
        assert [c.id for c in tracked_ckpt.list_checkpoints(tracker="wandb", **scope)] == [c.id for c in listed]
    monkeypatch.delenv("WANDB_MODE")  # a folder is read from disk in any mode
    by_folder = tracked_ckpt.list_checkpoints(tracker="wandb", experiment=str(wandb_env / "wandb_dir"))
    assert [c.id for c in by_folder] == [c.id for c in listed]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(tracker="wandb", where={"is_best": True})] == [1, 3]
    assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(tracker="wandb", where={"step": "6"})] == [2]
    with pytest.raises(LookupError, match=rf"No W&B offline run nope in .*: it has tracked-ckpt-test/{run_id}\."):
        tracked_ckpt.list_checkpoints(tracker="wandb", run_id="nope")

    best = tracked_ckpt.best_checkpoint(tracker="wandb")
    assert (best.record.epoch, best.record.value) == (3, pytest.approx(0.4))
    assert tracked_ckpt.best_checkpoint(tracker="wandb", monitor="val_loss", mode="max").record.epoch == 2
    model = tracked_ckpt.load_model(checkpoint=best, tracker="wandb", cache_dir=wandb_env / "cache")
    local = keras.saving.load_model(str(wandb_env / "ckpt" / "m-03.keras"))
    x = np.random.default_rng(1).random((8, 4)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-6)

    # Promoting needs the server: one line naming the best and the folder to `wandb sync`.
    with pytest.raises(TrackerError) as refused:
        tracked_ckpt.promote_best("tiny-clf", tracker="wandb")
    message = str(refused.value)
    assert "\n" not in message and message.startswith(
        f"The best checkpoint is tiny-e0003 of W&B offline run 'tune-trial-03' ({run_id}), val_loss=0.4, "
    )
    assert (
        f"Run `wandb sync {run_dir}`, then promote in online mode with run_id='tracked-ckpt-test/{run_id}'." in message
    )

    # A run folder moved elsewhere still loads; bytes that no longer match the record do not.
    moved = shutil.move(run_dir, wandb_env / "elsewhere")
    (first, *_) = tracked_ckpt.list_checkpoints(tracker="wandb", run_id=str(moved))
    assert first.location.startswith(str(moved) + os.sep)
    assert tracked_ckpt.load_model(checkpoint=first, tracker="wandb", cache_dir=wandb_env / "cache").name == "tiny"
    os.remove(first.location)  # a hard link to the Keras file: write new bytes, not through the link
    with open(first.location, "wb") as f:
        f.write(b"not the checkpoint")
    with pytest.raises(ChecksumError):
        tracked_ckpt.load_model(checkpoint=first, tracker="wandb", cache_dir=wandb_env / "fresh")


def test_the_cli_lists_an_offline_run_and_names_its_best(wandb_env, monkeypatch):
    checkpoint, run_dir = offline_fit(wandb_env, monkeypatch, run_name="digits-a")
    run_id = checkpoint.session.destinations["wandb"]["run_id"]
    monkeypatch.delenv("WANDB_MODE")  # `--offline` says it

    listed = cli("ls", "--tracker", "wandb", "--offline", cwd=wandb_env)  # WANDB_DIR: the newest offline run
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == [
        "name", "run", "run_id", "epoch", "step", "monitor", "value", "best", "commit", "dirty", "size", "file",
    ]  # fmt: skip
    assert [row.split()[:5] for row in rows] == [["tiny-e0001", "digits-a", run_id, "1", "3"],
                                                 ["tiny-e0002", "digits-a", run_id, "2", "6"],
                                                 ["tiny-e0003", "digits-a", run_id, "3", "9"]]  # fmt: skip
    assert all(row.split()[-1].startswith(run_dir + os.sep) for row in rows)

    as_json = cli("ls", "--tracker", "wandb", "--offline", run_dir, "--json", cwd=wandb_env)
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(d["epoch"], d["sha256"], d["run_name"]) for d in lines] == [
        (r.epoch, r.sha256, "digits-a") for r in logged_records(checkpoint)
    ]
    assert all(sha256_file(d["location"])[0] == d["sha256"] for d in lines)

    promoted = cli("promote", "digits-clf", "--tracker", "wandb", "--offline", cwd=wandb_env)
    assert promoted.returncode == 1 and promoted.stdout == ""
    assert promoted.stderr.count("\n") == 1, promoted.stderr
    assert promoted.stderr.startswith("tracked-ckpt: error: The best checkpoint is tiny-e0003 of W&B offline run")
    assert f"`wandb sync {run_dir}`" in promoted.stderr and f"--run-id tracked-ckpt-test/{run_id}" in promoted.stderr

    for argv, message in [
        (["--offline", str(wandb_env / "ckpt")], "No W&B offline run in "),
        (["--offline", str(wandb_env / "nowhere")], "is not a folder"),
        (["--offline", "--run-id", "nope"], "No W&B offline run nope in"),
    ]:
        failed = cli("ls", "--tracker", "wandb", *argv, cwd=wandb_env)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1 and message in failed.stderr, failed.stderr
    assert "pass --tracker wandb" in cli("ls", "--offline", cwd=wandb_env).stderr


def test_a_log_cut_anywhere_reads_as_the_checkpoints_written_before_the_cut(wandb_env, monkeypatch, caplog):
    """A run still being written: every prefix of its log reads without error, checkpoint by checkpoint."""
    # A version per batch, into a W&B folder of the tracker's own: the last fit's run is found there.
    (wandb_env / "own").mkdir()
    tracker = WandbTracker(dir=wandb_env / "own")
    _, run_dir = offline_fit(wandb_env, monkeypatch, wandb_dir="own", save_freq=1, epochs=2, tracker=tracker)
    assert [c.record.step for c in tracked_ckpt.list_checkpoints(tracker="wandb")] == [1, 2, 3, 4, 5, 6]
    (log,) = [os.path.join(run_dir, n) for n in os.listdir(run_dir) if n.endswith(".wandb")]
    with open(log, "rb") as f:
        data = f.read()
    whole = wandb_offline.checkpoints([wandb_offline.read_run(run_dir)])
    assert [c.record.step for c, _ in whole] == [1, 2, 3, 4, 5, 6]
    assert wandb_offline.read_run(run_dir).finished

    cut_dir = wandb_env / "cut" / "offline-run-cut"
    cut_dir.mkdir(parents=True)
    cut_log = cut_dir / os.path.basename(log)

    def steps_read(size):
        cut_log.write_bytes(data[:size])
        run = wandb_offline.read_run(str(cut_dir))
        assert not run.finished
        return [c.record.step for c, _ in wandb_offline.checkpoints([run])]

    seen = []
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        for size in [0, 3, *range(7, len(data), 101), len(data) - 1]:
            steps = steps_read(size)
            assert steps == [1, 2, 3, 4, 5, 6][: len(steps)], size
            seen.append((len(steps), size))
    assert [n for n, _ in seen] == sorted(n for n, _ in seen) and {n for n, _ in seen} == set(range(7)), seen
    assert "damaged" not in caplog.text

    # A damaged chunk mid-log: a warning, and what came before it. The 4th version's record ends at `end`.
    first_seen = min(size for n, size in seen if n == 4)
    end = next(size for size in range(first_seen - 101, first_seen + 1) if len(steps_read(size)) == 4)
    cut_log.write_bytes(data[: end - 1] + bytes([data[end - 1] ^ 0xFF]) + data[end:])
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        steps = [c.record.step for c, _ in wandb_offline.checkpoints([wandb_offline.read_run(str(cut_dir))])]
    assert steps == [1, 2, 3] and f"{cut_log} is damaged at byte" in caplog.text
    # A file that is not a transaction log this reader knows: one line naming the installed wandb.
    cut_log.write_bytes(b":W&B\xe1\xbe\x01" + data[7:])
    with pytest.raises(TrackerError, match=rf"not a W&B transaction log .*wandb {wandb.__version__}"):
        wandb_offline.read_run(str(cut_dir))
