"""Bad input gets one clear error naming the problem and the fix; nothing logged is lost."""

from __future__ import annotations

import logging
import os
import sys

import pytest
from support.helpers import InjectMetric, fit, make_data, make_model
from support.mlflow_runs import logged_models

import tracked_ckpt
from tracked_ckpt import TrackedModelCheckpoint
from tracked_ckpt.files import safe_file_name


def one_line(exc: BaseException) -> str:
    text = str(exc.args[-1] if isinstance(exc, OSError) and exc.args else exc)
    assert "\n" not in text.strip("'\""), text
    return text


def test_tracker_package_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    monkeypatch.delitem(sys.modules, "tracked_ckpt.integrations.wandb", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'tracked-ckpt\[wandb\]'") as info:
        TrackedModelCheckpoint("ckpt/x.keras", tracker="wandb")
    one_line(info.value)


def test_placeholder_missing_from_the_logs(embedded_store, workdir):
    callback = TrackedModelCheckpoint("ckpt/{epoch}-{val_acc:.2f}.keras")
    with pytest.raises(
        KeyError, match=r"uses {val_acc}, which is not in the epoch logs \(available: .*val_loss"
    ) as info:
        fit(callback, epochs=1)
    one_line(info.value)


def test_monitor_missing_warns_once_and_logs_without_value(embedded_store, workdir, caplog):
    callback = TrackedModelCheckpoint("ckpt/m-{epoch}.keras", monitor="val_loss")
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        fit(callback, epochs=3, validation=False)
    warnings = [r for r in caplog.records if "is not in the epoch logs" in r.getMessage()]
    assert len(warnings) == 1 and "Pass validation data" in warnings[0].getMessage()
    models = logged_models(callback.session.destinations["mlflow"]["run_id"])
    assert len(models) == 3
    assert all("tracked_ckpt.value" not in m.tags and m.tags["tracked_ckpt.is_best"] == "false" for m in models)


@pytest.mark.parametrize("mode", ["auto", "min", "max"])
@pytest.mark.parametrize("save_freq", ["epoch", 4], ids=["epoch-level", "batch-level"])  # 4 batches an epoch
def test_a_misspelt_monitor_never_costs_a_checkpoint(embedded_store, workdir, caplog, mode, save_freq):
    # mode="auto" used to crash at the first save, inside Keras's direction inference.
    callback = TrackedModelCheckpoint("ckpt/t-{epoch}.keras", monitor="val_los", mode=mode, save_freq=save_freq)
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        fit(callback, epochs=3)
    warnings = [r.getMessage() for r in caplog.records if "'val_los' is not in the" in r.getMessage()]
    assert len(warnings) == 1
    assert ("val_loss" if save_freq == "epoch" else "available: loss") in warnings[0]  # names what exists
    assert callback.last_report.ok
    assert len(logged_models(callback.session.destinations["mlflow"]["run_id"])) == 3


def test_a_logged_metric_of_unknown_direction_still_asks_for_mode(embedded_store, workdir):
    # Not a typo: the key is in the logs, and only `mode=` can say which way is better (Keras's error).
    callback = TrackedModelCheckpoint("ckpt/f-{epoch}.keras", monitor="val_f1", save_best_only=True)
    with pytest.raises(ValueError, match="mode="):
        fit(callback, epochs=2, extra=[InjectMetric("val_f1", [0.1, 0.9])])


def test_unwritable_checkpoint_folder_fails_before_training(embedded_store, workdir):
    if os.geteuid() == 0:
        target = "/proc/tracked-ckpt-test/x.keras"  # root ignores permissions; /proc refuses new folders
    else:
        locked = workdir / "locked"
        locked.mkdir(mode=0o555)
        target = str(locked / "x.keras")
    callback = TrackedModelCheckpoint(target)
    started = []
    with pytest.raises(OSError, match="Cannot write checkpoints to .*choose another filepath") as info:
        x, y = make_data()
        make_model().fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[callback],
        )
    one_line(info.value)
    assert not started


def test_full_disk_while_saving_is_explained_and_earlier_checkpoints_are_kept(embedded_store, workdir):
    os.makedirs("ckpt")
    os.symlink("/dev/full", "ckpt/e2.keras")  # writing it fails with ENOSPC, like a full disk
    callback = TrackedModelCheckpoint("ckpt/e{epoch}.keras", upload="sync")
    with pytest.raises(OSError, match="No space left on device. Free some space") as info:
        fit(callback, epochs=3)
    one_line(info.value)
    # Epoch 1 was saved and logged before the failure.
    (model,) = logged_models(callback.session.destinations["mlflow"]["run_id"])
    assert model.tags["tracked_ckpt.epoch"] == "1"
    assert os.path.getsize("ckpt/e1.keras") > 0


@pytest.mark.parametrize("name", ["../evil.keras", "a/../../b.keras", "..", "", "/etc/passwd", "x\\..\\y"])
def test_download_names_that_escape_the_folder_are_refused(name):
    with pytest.raises(ValueError, match="escape"):
        safe_file_name(name)


def test_safe_file_name_keeps_plain_names():
    assert safe_file_name("digits-03.keras") == "digits-03.keras"


def test_unknown_registered_model(embedded_store, workdir):
    with pytest.raises(LookupError, match="has no alias 'champion'") as info:
        tracked_ckpt.download_checkpoint("nope", alias="champion")
    one_line(info.value)
