"""The registry helper (promote_best, list_checkpoints, load_model, ...) and retention on W&B.

`WandbTracker(api=...)` runs against `wandb_fake.FakeServer`, the in-memory W&B
whose surface a contract test keeps identical to the real `wandb.Api` /
`wandb.Artifact` / `Run` / `ArtifactCollection`. Most runs are written into the
fake directly; one is a real offline training run, synced into the fake the
way `wandb sync` would upload it, promoted and loaded back.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re

import keras
import numpy as np
import pytest
import wandb.errors
from support.wandb_fake import FakeApi, FakeArtifact, FakeServer
from test_wandb import the_run_dir, train

import tracked_ckpt
from tracked_ckpt import CheckpointRecord, ChecksumError
from tracked_ckpt import fits as fits_module
from tracked_ckpt.integrations import wandb_schema as wb
from tracked_ckpt.integrations.wandb import WandbTracker
from tracked_ckpt.tracker import Tracker, TrackerError

REGISTRY = "wandb-registry-model"


def log_run(server: FakeServer, run_id: str, values, *, mode="min", name="tiny", project=None, run_name=None):
    """Log one run's checkpoints into the fake as the tracker names them; return their version paths.

    `values` are the monitored metric per epoch (None: missing from the logs); `run_name`, the run's display name.
    """
    best, paths = None, []
    for epoch, value in enumerate(values, 1):
        improved = value is not None and (best is None or (value < best if mode == "min" else value > best))
        best = value if improved else best
        data = f"{run_id} epoch {epoch}".encode()
        record = CheckpointRecord(
            name=f"{name}-e{epoch:04d}",
            epoch=epoch,
            step=10 * epoch,
            monitor="val_loss",
            mode=mode,
            is_best=improved,
            value=value,
            sha256=hashlib.sha256(data).hexdigest(),
            size_bytes=len(data),
            format="keras",
            filepath=f"/ckpt/{run_id}/m-{epoch:02d}.keras",
            keras_version=keras.__version__,
            backend="tensorflow",
        )
        logged = server.log(
            wb.collection_name(record, run_id),
            {os.path.basename(record.filepath): data},
            wb.artifact_metadata(record, run_id),
            wb.checkpoint_aliases(record),
            project=project,
            run_id=run_id,
            run_name=run_name,
        )
        paths.append(logged.qualified_name)
    return paths


@pytest.fixture
def server():
    return FakeServer(entity="team", project="proj")


@pytest.fixture
def tracker(server, monkeypatch):
    """A tracker on the fake, with no last fit in this process."""
    monkeypatch.delitem(fits_module._LAST_DESTINATIONS, "wandb", raising=False)
    return WandbTracker(project="proj", api=server.api())


def registry_versions(server, name):
    try:
        return server.live_versions(f"{REGISTRY}/{name}")
    except KeyError:
        return []


def champion_source(server, name, alias="champion"):
    return server.api().artifact(f"{REGISTRY}/{name}:{alias}").source_qualified_name


def test_tracker_is_a_registry_backend(tracker):
    assert isinstance(tracker, Tracker)


@pytest.mark.parametrize("mode, best_epoch", [("min", 4), ("max", 2)])
def test_promote_picks_the_true_best_with_missing_metrics(server, tracker, mode, best_epoch):
    paths = log_run(server, "r1", [0.5, 0.9, None, 0.1, None], mode=mode)
    result = tracked_ckpt.promote_best("tiny-clf", tracker=tracker, run_id="r1")
    assert result.promoted, result.reason
    assert result.checkpoint.record.epoch == best_epoch
    assert result.checkpoint.id == paths[best_epoch - 1] == f"team/proj/tiny-r1:v{best_epoch - 1}"
    assert result.checkpoint.run_id == "r1" and result.checkpoint.record.name == f"tiny-e{best_epoch:04d}"
    assert result.version == "v0"
    # The Registry link points back at that version and carries its metadata.
    (link,) = registry_versions(server, "tiny-clf")
    assert champion_source(server, "tiny-clf") == result.checkpoint.id
    assert link.metadata["epoch"] == best_epoch
    assert link.collection.project == REGISTRY and sorted(link.aliases) == ["champion", "latest"]
    # The run's own collection keeps its aliases.
    assert "best" in server.api().artifact(paths[3 if mode == "min" else 1]).aliases


def test_list_checkpoints_filters_oldest_first(server, tracker):
    log_run(server, "r1", [0.5, 0.9, None, 0.1])
    listed = tracked_ckpt.list_checkpoints(tracker=tracker, run_id="r1")
    assert [c.record.epoch for c in listed] == [1, 2, 3, 4]
    assert [c.record.value for c in listed] == [0.5, 0.9, None, 0.1]
    assert listed[3].aliases == ("best", "epoch-4", "latest")
    best = tracked_ckpt.list_checkpoints(tracker=tracker, run_id="proj/r1", where={"is_best": True})
    assert [c.record.epoch for c in best] == [1, 4]
    third = tracked_ckpt.list_checkpoints(tracker=tracker, run_id="r1", where={"epoch": 3})
    assert [c.record.epoch for c in third] == [3]
    assert tracked_ckpt.list_checkpoints(tracker=tracker, run_id="r1", where={"name": "other"}) == []
    assert tracked_ckpt.best_checkpoint(tracker=tracker, run_id="r1").record.epoch == 4
    assert tracked_ckpt.best_checkpoint(tracker=tracker, run_id="r1", mode="max").record.epoch == 2


def test_only_if_better_keeps_a_better_champion(server, tracker):
    log_run(server, "good", [0.3, 0.2])
    log_run(server, "worse", [0.5, 0.4])
    assert tracked_ckpt.promote_best("clf", tracker=tracker, run_id="good").promoted
    kept = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="worse")
    assert not kept.promoted and "not better" in kept.reason
    assert kept.previous.run_id == "good" and kept.version == "v0"
    assert champion_source(server, "clf") == "team/proj/tiny-good:v1"
    forced = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="worse", only_if_better=False)
    assert forced.promoted and forced.version == "v1"
    assert champion_source(server, "clf") == "team/proj/tiny-worse:v1"
    log_run(server, "better", [0.1])
    assert tracked_ckpt.promote_best("clf", tracker=tracker, run_id="better").promoted
    assert champion_source(server, "clf") == "team/proj/tiny-better:v0"


def test_promoting_twice_links_once(server, tracker, monkeypatch):
    log_run(server, "r1", [0.3, 0.2])
    log_run(server, "r2", [0.9])
    links = []
    real_link = FakeArtifact.link

    def counting_link(self, target_path, aliases=None):
        links.append((self.source_qualified_name, target_path, list(aliases or ())))
        return real_link(self, target_path, aliases)

    monkeypatch.setattr(FakeArtifact, "link", counting_link)

    first = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1")
    second = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1")
    assert first.promoted and not second.promoted and "already points" in second.reason
    assert second.version == first.version == "v0"
    # Another alias for the same checkpoint: the existing link gets it, nothing is linked again.
    staging = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1", alias="staging")
    assert staging.promoted and staging.version == "v0"
    assert len(links) == 1 and len(registry_versions(server, "clf")) == 1
    # The alias moved away and back: still the one link.
    tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r2", only_if_better=False)
    back = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1")
    assert back.promoted and back.version == "v0"
    assert [len(links), len(registry_versions(server, "clf"))] == [2, 2]
    assert sorted(server.api().artifact(f"{REGISTRY}/clf:v0").aliases) == ["champion", "staging"]


@pytest.mark.parametrize("alias", ["latest", "v3", "a/b", "x:y"])
def test_reserved_or_invalid_alias_is_refused(server, tracker, alias):
    log_run(server, "r1", [0.3])
    with pytest.raises(ValueError, match="(reserved|Invalid alias)"):
        tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1", alias=alias)
    assert registry_versions(server, "clf") == []


def test_experiment_scope_spans_the_projects_runs(server, tracker):
    log_run(server, "a1", [0.5, 0.4])
    log_run(server, "a2", [0.6, 0.2, 0.3])
    log_run(server, "w1", [0.01], name="wide")  # another model in the same project
    log_run(server, "o1", [0.001], project="other")
    server.log("dataset", {"d.csv": b"x"}, {"rows": 3}, type="dataset", run_id="a1")  # not a checkpoint
    server.log("foreign-model", {"m.pt": b"y"}, {"note": "not ours"}, run_id="a1")

    everything = tracked_ckpt.list_checkpoints(tracker=tracker, experiment="proj")
    assert sorted({c.run_id for c in everything}) == ["a1", "a2", "w1"]
    result = tracked_ckpt.promote_best("clf", tracker=tracker, experiment="proj", name="tiny")
    assert (result.checkpoint.run_id, result.checkpoint.record.value) == ("a2", 0.2)
    assert tracked_ckpt.best_checkpoint(tracker=tracker, experiment="team/proj").run_id == "w1"
    with pytest.raises(LookupError, match="no 'model' artifacts"):
        tracked_ckpt.list_checkpoints(tracker=tracker, experiment="nothing-here")
    server.unreachable = True  # a server that is down is not a project without checkpoints
    with pytest.raises(TrackerError, match=r"^Cannot read W&B project team/proj: .*503.*Try again once W&B answers"):
        tracked_ckpt.list_checkpoints(tracker=tracker, experiment="team/proj")
    server.unreachable = False


def test_listings_promotions_and_show_name_the_w_and_b_run(server, tracker, monkeypatch, capsys):
    """Item 2 on W&B: the run's display name and id in `ls`, the promotion's run and trial, `show`'s W&B link."""
    from tracked_ckpt import cli

    log_run(server, "r1", [0.5, 0.4], run_name="tune-trial-01")
    log_run(server, "r2", [0.3, 0.2], run_name="tune-trial-02")
    log_run(server, "r3", [0.9])  # a run without a display name
    listed = tracked_ckpt.list_checkpoints(tracker=tracker, experiment="team/proj")
    assert sorted({(c.run_id, c.extra["run_name"]) for c in listed}) == [
        ("r1", "tune-trial-01"),
        ("r2", "tune-trial-02"),
        ("r3", ""),
    ]
    assert listed[0].id == "team/proj/tiny-r1:v0"
    assert listed[0].extra["url"] == "https://wandb.ai/team/proj/artifacts/model/tiny-r1/v0"
    (one,) = tracked_ckpt.list_checkpoints(tracker=tracker, run_id="team/proj/r2", where={"epoch": 2})
    assert one.extra["run_name"] == "tune-trial-02"

    result = tracked_ckpt.promote_best("clf", tracker=tracker, experiment="team/proj")
    assert result.promoted and (result.run_name, result.trial) == ("tune-trial-02", "02")
    assert result.reason == "'champion' now points at tiny-e0002 of run 'tune-trial-02' (r2, trial 02) (val_loss=0.2)."
    log_run(server, "r4", [0.7], run_name="tune-trial-04")
    kept = tracked_ckpt.promote_best("clf", tracker=tracker, run_id="team/proj/r4")
    assert not kept.promoted and kept.reason.startswith("Kept tiny-e0002 of run 'tune-trial-02' (r2, trial 02)")
    assert "of run 'tune-trial-04' (r4, trial 04)" in kept.reason and kept.run_name == "tune-trial-04"
    shown = tracked_ckpt.registered_checkpoint("clf", tracker=tracker)
    assert shown.extra["run_name"] == "tune-trial-02"
    registry_page = "https://wandb.ai/orgs/org/registry/model?selectionPath=org%2Fwandb-registry-model%2Fclf"
    assert shown.extra["url"] == registry_page + "&view=membership&version=v0"

    # The CLI's W&B tracker builds `wandb.Api()`: here a client on the fake.
    monkeypatch.setattr(wandb, "Api", lambda overrides=None: server.api())
    assert cli.main(["ls", "--tracker", "wandb", "--experiment", "team/proj"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["name", "run", "run_id"]
    assert [row.split()[:3] for row in rows] == [
        ["tiny-e0001", "tune-trial-01", "r1"],
        ["tiny-e0002", "tune-trial-01", "r1"],
        ["tiny-e0001", "tune-trial-02", "r2"],
        ["tiny-e0002", "tune-trial-02", "r2"],
        ["tiny-e0001", "-", "r3"],
        ["tiny-e0001", "tune-trial-04", "r4"],
    ]
    assert cli.main(["show", "clf", "--tracker", "wandb"]) == 0
    out = capsys.readouterr().out
    assert "  run: tune-trial-02 (r2)\n" in out and f"  ui: {registry_page}&view=membership&version=v0\n" in out


def test_a_run_costs_the_same_number_of_calls_whatever_its_length(server, tracker, monkeypatch):
    calls = []
    for name in ("artifact", "artifact_exists", "artifacts", "artifact_collections", "run"):
        original = getattr(FakeApi, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(FakeApi, name, counting)
    log_run(server, "short", [0.3, 0.2])
    log_run(server, "long", [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.35, 0.33, 0.31])
    counts = []
    for run_id in ("short", "long"):
        calls.clear()
        assert tracked_ckpt.promote_best(f"clf-{run_id}", tracker=tracker, run_id=run_id).promoted
        counts.append(list(calls))
    assert counts[0] == counts[1]
    assert counts[0].count("run") == 2  # one listing for the sample, one for the ranking


def test_default_scope_is_the_last_fit_and_offline_runs_are_refused(server, tracker, monkeypatch):
    log_run(server, "r1", [0.3, 0.2])
    destinations = fits_module._LAST_DESTINATIONS
    monkeypatch.setitem(destinations, "wandb", {"run_id": "r1", "project": "proj", "entity": "team", "mode": "online"})
    assert tracked_ckpt.promote_best("clf", tracker=WandbTracker(api=server.api())).checkpoint.record.epoch == 2

    monkeypatch.setitem(destinations, "wandb", {"run_id": "r1", "project": "proj", "entity": "", "mode": "offline"})
    with pytest.raises(TrackerError, match=r"wandb sync .*offline-run-\*-r1.*online mode"):
        tracked_ckpt.promote_best("clf", tracker=WandbTracker(api=server.api()))
    monkeypatch.setitem(destinations, "wandb", {"run_id": "r1", "project": "proj", "entity": "", "mode": "disabled"})
    with pytest.raises(TrackerError, match="disabled"):
        tracked_ckpt.list_checkpoints(tracker=WandbTracker(api=server.api()))
    monkeypatch.delitem(destinations, "wandb")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    with pytest.raises(LookupError, match="run_id=.*WANDB_PROJECT"):
        tracked_ckpt.list_checkpoints(tracker=WandbTracker(api=server.api()))
    # A new process (`tracked-ckpt ls --tracker wandb`) with WANDB_PROJECT set: the project's checkpoints.
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    listed = tracked_ckpt.list_checkpoints(tracker=WandbTracker(api=server.api()))
    assert [(c.run_id, c.record.epoch) for c in listed] == [("r1", 1), ("r1", 2)]
    with pytest.raises(LookupError, match="W&B run team/proj/nope not found"):
        tracked_ckpt.list_checkpoints(tracker=tracker, run_id="team/proj/nope")
    server.unreachable = True  # a server that is down is not a missing run
    with pytest.raises(TrackerError, match=r"^Cannot read W&B run team/proj/r1: .*503.*Try again once W&B answers"):
        tracked_ckpt.list_checkpoints(tracker=tracker, run_id="team/proj/r1")
    server.unreachable = False


def test_the_default_api_needs_online_mode(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(TrackerError, match="wandb sync"):
        WandbTracker().api
    with pytest.raises(TrackerError, match="disabled mode"):
        WandbTracker(mode="disabled").api


def test_missing_registered_model_alias_or_version(server, tracker, tmp_path):
    with pytest.raises(
        LookupError, match=r"'nope' has no alias 'champion'.*\(promote_best\('nope', tracker='wandb'\)\)"
    ):
        tracked_ckpt.load_model("nope", tracker=tracker)
    log_run(server, "r1", [0.3, 0.2])
    tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1")
    with pytest.raises(LookupError, match="has no version 7"):
        tracked_ckpt.download_checkpoint("clf", version="7", tracker=tracker)
    assert tracker.alias_holder("clf", "production") is None
    # By version, in W&B's or MLflow's spelling.
    for version in ("v0", "0", 0):
        found = tracker.resolve("clf", alias=None, version=version)
        assert found.id == "team/proj/tiny-r1:v1" and found.extra["version"] == "v0"
    path = tracked_ckpt.download_checkpoint("clf", alias="champion", tracker=tracker, cache_dir=tmp_path)
    with open(path, "rb") as f:
        assert f.read() == b"r1 epoch 2"
    # A Registry entry that tracked-ckpt did not log.
    server.log("foreign", {"m.pt": b"z"}, {"note": "not ours"}).link(f"{REGISTRY}/clf", aliases=["other"])
    with pytest.raises(LookupError, match="not logged by tracked-ckpt"):
        tracked_ckpt.load_model("clf", alias="other", tracker=tracker)
    with pytest.raises(ValueError, match="registered model name"):
        tracker.alias_holder("a/b", "champion")


def test_delete_checkpoint_spares_protected_versions(server, tracker, caplog):
    paths = log_run(server, "r1", [0.5, 0.4, 0.6, 0.3])
    online = {"run_id": "r1", "project": "proj", "entity": "team", "mode": "online"}
    api = server.api()

    # v0 holds only epoch-1: deleted, and deleting it again is a no-op.
    assert tracker.delete_checkpoint(paths[0], online) is True
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [1, 2, 3]
    assert tracker.delete_checkpoint(paths[0], online) is True
    # An alias a person gave it protects a version; so does a Registry link.
    person = api.artifact(paths[1])
    person.aliases = [*person.aliases, "production"]
    person.save()
    assert tracker.delete_checkpoint(paths[1], online) is False
    api.artifact(paths[2]).link(f"{REGISTRY}/clf", aliases=["staging"])
    assert tracker.delete_checkpoint(paths[2], online) is False
    assert tracker.delete_checkpoint(f"{REGISTRY}/clf:staging", online) is False
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [1, 2, 3]
    assert len(registry_versions(server, "clf")) == 1
    # Routine aliases (best, latest, epoch-N) do not protect it.
    assert sorted(api.artifact(paths[3]).aliases) == ["best", "epoch-4", "latest"]
    assert tracker.delete_checkpoint(paths[3], online) is True
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [1, 2]

    # Offline or disabled: nothing to delete on a server.
    with caplog.at_level(logging.DEBUG, logger="tracked_ckpt"):
        offline = {**online, "mode": "offline"}
        assert tracker.delete_checkpoint("proj/tiny-r1:epoch-2", offline) is False
        assert tracker.delete_checkpoint("disabled", {**online, "mode": "disabled"}) is False
    assert "its run is offline" in caplog.text
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [1, 2]


def test_offline_training_synced_promoted_and_loaded_back(wandb_env):
    """A real offline fit, uploaded into the fake as `wandb sync` would, then promoted and loaded."""
    checkpoint = train(str(wandb_env / "ckpt" / "m-{epoch:02d}.keras"))  # val_loss 0.5, 0.7, 0.4
    run_id = checkpoint.session.destinations["wandb"]["run_id"]
    server = FakeServer(entity="team", project="tracked-ckpt-test")
    server.sync(the_run_dir(wandb_env))
    tracker = WandbTracker(api=server.api(), mode="online")  # reads the server, not the offline folder

    # Without run_id the default is the last fit, which W&B does not have until synced.
    with pytest.raises(TrackerError, match="wandb sync"):
        tracked_ckpt.promote_best("tiny-clf", tracker=tracker)

    listed = tracked_ckpt.list_checkpoints(tracker=tracker, run_id=run_id)
    assert [c.record.epoch for c in listed] == [1, 2, 3]
    assert [c.id for c in listed] == [f"team/tracked-ckpt-test/tiny-{run_id}:v{n}" for n in range(3)]
    result = tracked_ckpt.promote_best("tiny-clf", tracker=tracker, run_id=run_id)
    assert result.promoted and result.checkpoint.record.epoch == 3 and result.version == "v0"
    assert result.checkpoint.record.value == pytest.approx(0.4)

    restored = tracked_ckpt.load_model("tiny-clf", alias="champion", tracker=tracker)
    local = keras.saving.load_model(str(wandb_env / "ckpt" / "m-03.keras"))
    x = np.random.default_rng(1).random((8, 4)).astype("float32")
    np.testing.assert_allclose(restored.predict(x, verbose=0), local.predict(x, verbose=0), rtol=1e-6)
    # A listed checkpoint loads too, and damaged stored bytes are caught.
    first = tracked_ckpt.load_model(checkpoint=listed[0], tracker=tracker)
    assert first.name == "tiny"
    server.corrupt(listed[1].id)
    with pytest.raises(ChecksumError):
        tracked_ckpt.load_model(checkpoint=listed[1], tracker=tracker, cache_dir=wandb_env / "fresh")


# -- the fake's additions follow W&B ---------------------------------------------------------


def test_fake_names_versions_as_fetched_and_links_by_their_source(server):
    paths = log_run(server, "r1", [0.5, 0.4])
    api = server.api()
    by_alias = api.artifact("team/proj/tiny-r1:best")
    assert (by_alias.name, by_alias.version) == ("tiny-r1:best", "v1")
    assert by_alias.qualified_name == "team/proj/tiny-r1:best"
    assert by_alias.source_qualified_name == paths[1] == "team/proj/tiny-r1:v1"
    assert not by_alias.is_link and by_alias.linked_artifacts == []
    link = by_alias.link(f"{REGISTRY}/clf", aliases=["champion"])
    fetched = api.artifact(f"{REGISTRY}/clf:champion")
    assert fetched.is_link and fetched.name == "clf:champion" and fetched.version == "v0"
    assert (fetched.source_entity, fetched.source_project, fetched.source_name) == ("team", "proj", "tiny-r1:v1")
    assert fetched.source_version == "v1" and fetched.linked_artifacts == []
    (listed,) = api.artifact(paths[1]).linked_artifacts
    assert listed.qualified_name == link.qualified_name == "org/wandb-registry-model/clf:v0"
    assert sorted(listed.aliases) == ["champion", "latest", "v0"]  # W&B lists the version index too
    assert api.run("proj/r1").id == "r1"
    assert [a.version for a in api.run("team/proj/r1").logged_artifacts()] == ["v0", "v1"]
    with pytest.raises(wandb.errors.CommError):
        api.run("team/proj/nope")
    with pytest.raises(wandb.errors.CommError):
        api.artifact(paths[0], type="dataset")
    assert [c.name for c in api.artifact_collections("team/proj", "model")] == ["tiny-r1"]
    listing = api.artifact_collections("team/empty", "model")  # W&B asks while it is iterated
    with pytest.raises(ValueError):
        list(listing)


def test_a_version_still_uploading_is_never_listed_or_promoted(server, tracker):
    paths = log_run(server, "r1", [0.5, 0.4, 0.1])
    uploading = server.api().artifact(paths[2])._version
    uploading.state = "PENDING"  # W&B's state until the version's files are committed
    assert [c.record.epoch for c in tracked_ckpt.list_checkpoints(tracker=tracker, run_id="r1")] == [1, 2]
    result = tracked_ckpt.promote_best("pending-model", tracker=tracker, run_id="r1")
    assert result.checkpoint.record.epoch == 2
    uploading.state = "COMMITTED"
    result = tracked_ckpt.promote_best("pending-model", tracker=tracker, run_id="r1")
    assert result.promoted and result.checkpoint.record.epoch == 3


def test_requirements_ride_in_the_version_metadata_and_load_checks_them(wandb_env, monkeypatch):
    """A model using an installed package: the W&B version records the same requirements as MLflow,
    loads back with custom objects, and refuses in one line where the package is missing."""
    import importlib
    import sys

    from support.helpers import install_layer_package
    from support.wandb_records import logged_artifacts

    site = install_layer_package(wandb_env / "pkg", name="wbtinylayers", version="0.2.0", cls="WbTriple")
    monkeypatch.syspath_prepend(site)
    import wbtinylayers

    class Negate(keras.layers.Layer):  # unregistered: loads only with custom_objects
        def call(self, x):
            return -x

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), wbtinylayers.WbTriple(), Negate()], name="pkg")
    model.compile(optimizer="adam", loss="mse")
    x, y = np.random.rand(16, 4), np.random.rand(16, 2)
    checkpoint = tracked_ckpt.TrackedModelCheckpoint(
        str(wandb_env / "ckpt" / "p-{epoch}.keras"), monitor="loss", tracker="wandb", log_git=False
    )
    model.fit(x, y, epochs=1, batch_size=8, verbose=0, callbacks=[checkpoint])
    (artifact,) = logged_artifacts(the_run_dir(wandb_env))
    assert artifact.metadata["requirements"] == ["wbtinylayers==0.2.0"]

    server = FakeServer(entity="team", project="tracked-ckpt-test")
    server.sync(the_run_dir(wandb_env))
    tracker = WandbTracker(api=server.api(), mode="online")
    (listed,) = tracked_ckpt.list_checkpoints(tracker=tracker, run_id=artifact.run_id)
    assert listed.record.requirements == ("wbtinylayers==0.2.0",)
    restored = tracked_ckpt.load_model(checkpoint=listed, tracker=tracker, custom_objects={"Negate": Negate})
    probe = np.random.default_rng(1).random((3, 4)).astype("float32")
    np.testing.assert_allclose(restored.predict(probe, verbose=0), model.predict(probe, verbose=0), rtol=1e-6)

    sys.path.remove(site)
    importlib.invalidate_caches()
    with pytest.raises(
        tracked_ckpt.MissingRequirementError,
        match=r"^pkg-e0001 needs the package 'wbtinylayers', "
        r"which is not installed: pip install 'wbtinylayers==0.2.0'$",
    ):
        tracked_ckpt.load_model(checkpoint=listed, tracker=tracker, custom_objects={"Negate": Negate})


# -- a W&B server that fails is never "not found" and never a raw wandb error ---------------


def _public_reads(tracker: WandbTracker, registered_name: str, logged: str):
    """Every public read on W&B, each a call that asks the server (a lazy listing iterated included)."""
    return {
        "list_checkpoints(experiment=)": lambda: tracked_ckpt.list_checkpoints(tracker=tracker, experiment="team/proj"),
        "list_checkpoints(run_id=)": lambda: tracked_ckpt.list_checkpoints(tracker=tracker, run_id="team/proj/r1"),
        "promote_best": lambda: tracked_ckpt.promote_best(registered_name, tracker=tracker, experiment="team/proj"),
        "load_model(alias=)": lambda: tracked_ckpt.load_model(registered_name, alias="champion", tracker=tracker),
        "alias_holder": lambda: tracker.alias_holder(registered_name, "champion"),
        "resolve": lambda: tracker.resolve(registered_name, alias="champion", version=None),
        "delete_checkpoint": lambda: tracker.delete_checkpoint(logged, {"mode": "online", "run_id": "r1"}),
    }


READS = list(_public_reads(None, "", ""))  # type: ignore[arg-type]


@pytest.mark.parametrize("failure", ["http", "timeout"])
@pytest.mark.parametrize("registered_name", ["clf", "never-promoted"])
@pytest.mark.parametrize("read", READS)
def test_a_failing_server_is_one_line_naming_what_could_not_be_read(server, tracker, read, registered_name, failure):
    """wandb 0.31 fails late (listings while iterated) and `artifact_exists` says False on errors: neither leaks."""
    paths = log_run(server, "r1", [0.5, 0.4])
    assert tracked_ckpt.promote_best("clf", tracker=tracker, run_id="r1").promoted
    call = _public_reads(tracker, registered_name, paths[0])[read]
    server.failure = failure
    with pytest.raises(TrackerError) as raised:
        call()
    message = str(raised.value)
    assert type(raised.value) is TrackerError and "\n" not in message
    assert re.match(r"^Cannot read W&B (project team/proj|run team/proj/r1|artifact \S+): ", message), message
    assert message.endswith("Try again once W&B answers."), message
    assert "not found" not in message and "promote a checkpoint first" not in message
    server.failure = None
    assert [v.index for v in server.live_versions("team/proj/tiny-r1")] == [0, 1]  # nothing deleted on an error
    if read in ("alias_holder", "resolve") and registered_name == "clf":
        assert call().record.epoch == 2  # once W&B answers, the answer
    if read == "alias_holder" and registered_name == "never-promoted":
        assert call() is None


def test_the_fake_fails_where_and_how_wandb_0_31_fails(server):
    """Eager calls raise CommError; listings raise WandbApiFailedError only while iterated; exists says False."""
    from wandb.sdk.lib.service.service_connection import WandbApiFailedError

    paths = log_run(server, "r1", [0.5])
    api = server.api()
    run = api.run("team/proj/r1")
    server.failure = "http"
    listings = [api.artifact_collections("team/proj", "model"), api.artifacts("model", "team/proj/tiny-r1")]
    listings.append(run.logged_artifacts())  # none of them has asked the server yet
    for listing in listings:
        with pytest.raises(WandbApiFailedError, match="HTTP 503"):
            list(listing)
    with pytest.raises(wandb.errors.CommError, match="HTTP 503"):
        api.artifact(paths[0])
    assert api.artifact_exists(paths[0]) is False  # wandb 0.31: an HTTP error reads as "does not exist"
    server.failure = "timeout"
    with pytest.raises(wandb.errors.CommError, match="did not respond in time"):
        api.artifact_exists(paths[0])  # a transport failure is raised
    server.failure = None
    assert api.artifact_exists(paths[0]) and [a.version for a in run.logged_artifacts()] == ["v0"]


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--tracker", "wandb", "--experiment", "team/proj"],
        ["ls", "--tracker", "wandb", "--run-id", "team/proj/r1"],
        ["promote", "clf", "--tracker", "wandb", "--experiment", "team/proj"],
        ["show", "clf", "--tracker", "wandb"],
        ["pull", "clf", "--tracker", "wandb"],
    ],
    ids=lambda argv: argv[0] + " " + argv[3],
)
def test_the_cli_says_a_failing_w_and_b_server_in_one_line(server, monkeypatch, capsys, argv):
    """The CLI's W&B tracker builds `wandb.Api()`: here it gets a client on the failing fake."""
    from tracked_ckpt import cli

    log_run(server, "r1", [0.5, 0.4])
    monkeypatch.delitem(fits_module._LAST_DESTINATIONS, "wandb", raising=False)
    monkeypatch.setenv("WANDB_PROJECT", "proj")
    monkeypatch.setattr(wandb, "Api", lambda overrides=None: server.api())
    server.failure = "http"
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err
    assert re.match(r"^tracked-ckpt: error: Cannot read W&B \S+ \S+: HTTP 503.*Try again once W&B answers\.$", err)


def test_a_run_s_listing_that_fails_while_iterated_is_no_answer(server, tracker, monkeypatch):
    """The run answered, then its lazy `logged_artifacts` failed: not an empty run, not a raw error."""
    log_run(server, "r1", [0.5])
    run = server.api().run("team/proj/r1")
    monkeypatch.setattr(FakeApi, "run", lambda self, path="": run)  # the server fails only after the run
    server.failure = "http"
    with pytest.raises(TrackerError, match=r"^Cannot read W&B run team/proj/r1: HTTP 503.*Try again once W&B answers"):
        tracked_ckpt.list_checkpoints(tracker=tracker, run_id="team/proj/r1")
