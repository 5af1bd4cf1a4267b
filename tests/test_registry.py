"""promote_best, list_checkpoints, load_model and download_checkpoint on real MLflow stores."""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid

import keras
import mlflow
import numpy as np
import pytest
from support.helpers import head, make_data, make_model, make_repo
from support.mlflow_runs import train_run

import tracked_ckpt
from tracked_ckpt import ChecksumError, TrackedModelCheckpoint
from tracked_ckpt.cli import main
from tracked_ckpt.integrations.mlflow import MlflowTracker


def unique(name: str) -> str:
    """Registered-model names are global on the shared server: one per test."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


# One run whose checkpoint metric follows `scores`, in a folder of its own; returns the run id.
train = functools.partial(train_run, folder_per_run=True)


@pytest.mark.parametrize("mode, best_epoch", [("min", 4), ("max", 2)])
def test_promote_picks_the_true_best_with_missing_metrics(store, workdir, mode, best_epoch):
    scores = [0.5, 0.9, None, 0.1, None]
    run_id = train(scores, mode=mode)
    name = unique("reg-best")
    result = tracked_ckpt.promote_best(name, run_id=run_id)
    assert result.promoted, result.reason
    assert result.checkpoint.record.epoch == best_epoch
    assert result.version == "1"
    version = mlflow.MlflowClient().get_model_version_by_alias(name, "champion")
    assert version.source == f"models:/{result.checkpoint.id}"
    assert version.tags["tracked_ckpt.epoch"] == str(best_epoch)
    assert version.tags["tracked_ckpt.sha256"] == result.checkpoint.record.sha256


def test_promote_across_the_runs_of_an_experiment(embedded_store, workdir):
    mlflow.set_experiment("sweep")
    train([0.5, 0.4])
    second = train([0.6, 0.2, 0.3])
    result = tracked_ckpt.promote_best("reg-sweep", experiment="sweep")
    assert result.checkpoint.run_id == second
    assert result.checkpoint.record.value == 0.2


def test_only_if_better_keeps_a_better_champion(embedded_store, workdir):
    good = train([0.3, 0.2])
    worse = train([0.5, 0.4])
    assert tracked_ckpt.promote_best("reg-keep", run_id=good).promoted
    kept = tracked_ckpt.promote_best("reg-keep", run_id=worse)
    assert not kept.promoted and "not better" in kept.reason
    assert kept.previous.run_id == good
    holder = mlflow.MlflowClient().get_model_version_by_alias("reg-keep", "champion")
    assert holder.run_id == good
    forced = tracked_ckpt.promote_best("reg-keep", run_id=worse, only_if_better=False)
    assert forced.promoted and forced.version == "2"
    better = train([0.1])
    assert tracked_ckpt.promote_best("reg-keep", run_id=better).promoted


def test_promoting_the_same_checkpoint_twice_creates_one_version(store, workdir):
    run_id = train([0.3, 0.2])
    name = unique("reg-idem")
    first = tracked_ckpt.promote_best(name, run_id=run_id)
    second = tracked_ckpt.promote_best(name, run_id=run_id)
    assert first.promoted and not second.promoted
    assert second.version == first.version
    # Even when the alias was moved away in between, the existing version is reused.
    tracked_ckpt.promote_best(name, run_id=run_id, alias="staging")
    versions = mlflow.MlflowClient().search_model_versions(f"name = '{name}'")
    assert len(versions) == 1


@pytest.mark.parametrize("alias", ["latest", "Latest", "v3", "bad alias"])
def test_reserved_or_invalid_alias_is_refused(alias):
    with pytest.raises(ValueError, match="(reserved|Invalid alias)"):
        tracked_ckpt.promote_best("any", alias=alias)


def test_promote_uses_a_constant_number_of_tracker_calls(embedded_store, workdir, monkeypatch):
    calls = []
    original = mlflow.MlflowClient.search_logged_models

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("max_results"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "search_logged_models", counting)
    short = train([0.3, 0.2])
    calls.clear()
    tracked_ckpt.promote_best("reg-calls-a", run_id=short)
    few = len(calls)
    long = train([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.35])
    calls.clear()
    tracked_ckpt.promote_best("reg-calls-b", run_id=long)
    assert len(calls) == few == 2
    assert all(n == 1 for n in calls)  # server-side ordering, one row each


def test_load_by_alias_predicts_like_the_local_file(store, workdir):
    run_id = train([0.4, 0.1, 0.3])
    name = unique("reg-load")
    result = tracked_ckpt.promote_best(name, run_id=run_id)
    loaded = tracked_ckpt.load_model(name, alias="champion")
    local = keras.saving.load_model(result.checkpoint.record.filepath)
    x, _ = make_data()
    np.testing.assert_allclose(loaded.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-6)
    by_version = tracked_ckpt.load_model(name, version=result.version)
    np.testing.assert_allclose(by_version.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-6)


def test_cache_is_warm_and_corruption_is_detected(embedded_store, workdir, monkeypatch, caplog):
    run_id = train([0.4, 0.1])
    tracked_ckpt.promote_best("reg-cache", run_id=run_id)
    fetches = []
    original = MlflowTracker.fetch

    def counting(self, checkpoint, directory):
        fetches.append(checkpoint.id)
        return original(self, checkpoint, directory)

    monkeypatch.setattr(MlflowTracker, "fetch", counting)
    path = tracked_ckpt.download_checkpoint("reg-cache", alias="champion")
    assert tracked_ckpt.download_checkpoint("reg-cache", alias="champion") == path
    assert len(fetches) == 1  # the warm call transferred nothing
    verified_at = json.load(open(path + ".verified"))["stamp"]["mtime_ns"]
    with open(path, "r+b") as f:  # corrupt the cached copy, same size
        f.seek(100)
        f.write(b"\x00corrupt\x00")
    # A coarse filesystem clock may give the write the download's own mtime: make it later.
    os.utime(path, ns=(os.stat(path).st_atime_ns, max(os.stat(path).st_mtime_ns, verified_at + 1)))
    with caplog.at_level(logging.WARNING, logger="tracked_ckpt"):
        model = tracked_ckpt.load_model("reg-cache", alias="champion")
    assert "corrupted" in caplog.text
    assert len(fetches) == 2
    assert isinstance(model, keras.Model)
    # verify=True re-hashes even a file whose stamp did not change.
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00again\x00")
    os.utime(path, ns=(os.stat(path).st_atime_ns, json.load(open(path + ".verified"))["stamp"]["mtime_ns"]))
    tracked_ckpt.download_checkpoint("reg-cache", alias="champion", verify=True)
    assert len(fetches) == 3


def test_checksum_mismatch_on_download_is_an_error(embedded_store, workdir):
    run_id = train([0.2])
    result = tracked_ckpt.promote_best("reg-tamper", run_id=run_id)
    stored = os.path.join(result.checkpoint.location, "data", "model.keras")
    with open(stored, "r+b") as f:  # the tracker's copy is damaged
        f.seek(50)
        f.write(b"tampered")
    with pytest.raises(ChecksumError, match="Checksum mismatch"):
        tracked_ckpt.load_model("reg-tamper", alias="champion")


def test_weights_only_checkpoint_needs_a_model(embedded_store, workdir):
    run_id = train([0.3, 0.2], path="ckpt/{epoch}.weights.h5", weights=True)
    result = tracked_ckpt.promote_best("reg-weights", run_id=run_id)
    with pytest.raises(ValueError, match="weights-only.*model="):
        tracked_ckpt.load_model("reg-weights", alias="champion")
    model = tracked_ckpt.load_model("reg-weights", alias="champion", model=make_model())
    local = make_model()
    local.load_weights(result.checkpoint.record.filepath)
    x, _ = make_data()
    # The champion's weights, not the fresh model's random ones.
    np.testing.assert_allclose(model.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-6)
    assert not np.allclose(make_model().predict(x, verbose=0), local.predict(x, verbose=0))


def test_list_checkpoints_filters_by_schema_fields(store, workdir):
    run_id = train([0.5, 0.6, 0.2])
    everything = tracked_ckpt.list_checkpoints(run_id=run_id)
    assert [c.record.epoch for c in everything] == [1, 2, 3]
    best = tracked_ckpt.list_checkpoints(run_id=run_id, where={"is_best": True})
    assert [c.record.epoch for c in best] == [1, 3]
    (second,) = tracked_ckpt.list_checkpoints(run_id=run_id, where={"epoch": 2})
    assert second.record.value == 0.6
    assert tracked_ckpt.list_checkpoints(run_id=run_id, where={"git_commit": "0" * 40}) == []
    # Default scope: the run the last fit in this process logged to.
    assert [c.id for c in tracked_ckpt.list_checkpoints()] == [c.id for c in everything]
    with pytest.raises(tracked_ckpt.UnknownKeyError, match="Cannot filter on"):
        tracked_ckpt.list_checkpoints(run_id=run_id, where={"colour": "red"})


def test_missing_registered_model_or_alias_is_a_clear_error(embedded_store, workdir):
    with pytest.raises(LookupError, match="has no alias 'champion'.*promote"):
        tracked_ckpt.load_model("no-such-model")
    run_id = train([0.2])
    tracked_ckpt.promote_best("reg-exists", run_id=run_id)
    with pytest.raises(LookupError, match="has no alias 'prod'"):
        tracked_ckpt.load_model("reg-exists", alias="prod")


def test_promotion_goes_to_the_store_the_last_fit_logged_to(embedded_store, mlflow_server, workdir):
    # The process default is the embedded store, but the fit logged to a server.
    callback = TrackedModelCheckpoint(
        "ckpt/s-{epoch}.keras", tracker=MlflowTracker(tracking_uri=mlflow_server.url, experiment=unique("elsewhere"))
    )
    x, y = make_data()
    make_model().fit(x, y, validation_split=0.25, epochs=2, verbose=0, callbacks=[callback])
    name = unique("reg-elsewhere")
    result = tracked_ckpt.promote_best(name)
    assert result.promoted
    server = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    assert server.get_model_version_by_alias(name, "champion").source == f"models:/{result.checkpoint.id}"
    assert mlflow.MlflowClient().search_registered_models(f"name = '{name}'") == []


def test_a_lost_race_to_set_a_new_alias_is_retried(embedded_store, workdir, monkeypatch):
    # What MLflow's SQL store does when two jobs set a fresh alias at once: the loser's insert fails.
    original = mlflow.MlflowClient.set_registered_model_alias
    calls = []

    def loses_the_first_race(self, name, alias, version):
        calls.append(version)
        if len(calls) == 1:
            original(self, name, alias, version)  # the other job's insert lands first...
            raise mlflow.exceptions.MlflowException(
                'duplicate key value violates unique constraint "registered_model_alias_pk"'
            )
        return original(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", loses_the_first_race)
    run_id = train([0.3, 0.2])
    result = tracked_ckpt.promote_best("reg-race", run_id=run_id)
    assert result.promoted and len(calls) == 2
    assert str(mlflow.MlflowClient().get_model_version_by_alias("reg-race", "champion").version) == result.version


def test_a_tie_goes_to_the_checkpoint_that_reached_the_value_first(store, workdir):
    run_id = train([0.5, 0.2, 0.2, 0.3])
    result = tracked_ckpt.promote_best(unique("reg-tie"), run_id=run_id)
    assert result.checkpoint.record.epoch == 2
    assert result.checkpoint.record.is_best  # the same one the is_best flag names


def test_a_monitor_no_checkpoint_has_is_an_error_listing_the_metrics(embedded_store, workdir):
    run_id = train([0.3, 0.2])
    with pytest.raises(tracked_ckpt.UnknownKeyError, match=r"'scor'.*score") as raised:
        tracked_ckpt.promote_best("reg-typo", run_id=run_id, monitor="scor", mode="min")
    assert isinstance(raised.value, (tracked_ckpt.TrackedCkptError, ValueError))
    with pytest.raises(tracked_ckpt.UnknownKeyError, match=r"'scor'.*score"):
        tracked_ckpt.best_checkpoint(run_id=run_id, monitor="scor", mode="min")
    assert mlflow.MlflowClient().search_registered_models("name = 'reg-typo'") == []
    code = main(["promote", "reg-typo", "--run-id", run_id, "--monitor", "val_los"])
    assert code == 1  # a CI step fails


def test_where_reads_booleans_and_commit_prefixes_as_users_write_them(embedded_store, workdir, isolated_git):
    make_repo(workdir)
    run_id = train([0.5, 0.6, 0.2])
    commit = head(workdir)
    for word in ("yes", "true", "1", True):
        assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(run_id=run_id, where={"is_best": word})] == [1, 3]
    for word in ("no", "False", "0"):
        assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(run_id=run_id, where={"is_best": word})] == [2]
    with pytest.raises(ValueError, match="not a boolean"):
        tracked_ckpt.list_checkpoints(run_id=run_id, where={"is_best": "maybe"})
    for prefix in (commit[:7], commit[:8], commit.upper()[:12], commit):
        assert len(tracked_ckpt.list_checkpoints(run_id=run_id, where={"git_commit": prefix})) == 3, prefix
    assert tracked_ckpt.list_checkpoints(run_id=run_id, where={"git_commit": "0000000"}) == []
    with pytest.raises(tracked_ckpt.UnknownKeyError, match="Cannot filter on.*git_commit"):
        tracked_ckpt.list_checkpoints(run_id=run_id, where={"commit": commit[:8]})


def test_listing_is_oldest_first_across_fits_and_runs(embedded_store, workdir, capsys):
    mlflow.set_experiment("stages")
    x, y = make_data()
    with mlflow.start_run(run_name="two-stages") as run:
        for stage in ("digits", "digits-2"):  # a fine-tune's second stage counts steps from 0 again
            callback = TrackedModelCheckpoint(f"ckpt/{stage}-{{epoch}}.keras", name=stage, monitor="loss")
            make_model().fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[callback])
    later = train([0.3], run_name="later")
    listed = tracked_ckpt.list_checkpoints(experiment="stages")
    names = [c.record.name for c in listed]
    assert names == ["digits-e0001", "digits-e0002", "digits-2-e0001", "digits-2-e0002", "tiny-e0001"]
    assert [c.run_id for c in listed] == [run.info.run_id] * 4 + [later]
    assert [c.record.name for c in tracked_ckpt.list_checkpoints(run_id=run.info.run_id)] == names[:4]
    # Every experiment, grouped by run: another experiment's run is listed too.
    mlflow.set_experiment("elsewhere")
    other = train([0.4], run_name="other")
    assert main(["ls", "--all-experiments"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[1:]]
    assert [row[1] for row in rows] == ["two-stages"] * 4 + ["later", "other"]
    assert [row[2] for row in rows][-1] == other


def test_the_promotion_names_the_champions_run_and_trial(embedded_store, workdir):
    mlflow.set_experiment("tuning")
    train([0.5], run_name="tune-trial-01")
    best = train([0.4, 0.1], run_name="tune-trial-02")
    result = tracked_ckpt.promote_best("reg-trial", experiment="tuning")
    assert result.checkpoint.run_id == best
    assert (result.run_name, result.trial) == ("tune-trial-02", "02")
    assert result.reason.startswith(f"'champion' now points at tiny-e0002 of run 'tune-trial-02' ({best}, trial 02)")
